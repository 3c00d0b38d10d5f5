# Copyright (c) mmrefseg contributors. All rights reserved.
"""Suite-wide pytest options (the opt-in markers ``cuda`` and ``browser``) and fixtures
shared by every test folder (a reserved TCP port, mmengine's log records, a synthetic refer
data root).

Tests marked ``@pytest.mark.cuda`` need an NVIDIA GPU; tests marked
``@pytest.mark.browser`` drive ``tools/webui.py`` in headless Chromium (Debian's
``chromium`` + ``chromium-driver``, the ``[demo]`` extra and Selenium). The default run
(``pytest tests``) *deselects* both: they are not collected into the run, are not
reported as skipped, and every other test runs as before (a device-parametrised test
keeps its ``cpu`` case). The summary says how many were left out.

``pytest --cuda`` keeps the CUDA tests, and fails at once when
``torch.cuda.is_available()`` is False: asking for the GPU tests on a machine without a
GPU is an error, not a skip. ``tools/gpu_check.sh`` runs ``pytest --cuda -m cuda tests``.

``pytest --browser`` keeps the browser tests; without Chromium, Gradio or Selenium they
fail (each says what to install), they are never skipped. ``.ci/run`` installs all three
and runs ``pytest --browser -m browser tests``.
"""
import logging
import socket

import pytest

#: opt-in marker -> (command-line option, what it needs, how to run its tests)
OPT_IN = {
    'cuda': ('--cuda', 'they need a GPU',
             '`pytest --cuda -m cuda tests` or tools/gpu_check.sh on a machine with a GPU'),
    'browser': ('--browser', 'they need Chromium, the [demo] extra and Selenium',
                '`pytest --browser -m browser tests`, as .ci/run does'),
}
_DESELECTED = pytest.StashKey[dict]()


def pytest_addoption(parser):
    parser.addoption('--cuda', action='store_true', default=False,
                     help='run the tests marked cuda too (needs a GPU; tools/gpu_check.sh)')
    parser.addoption('--browser', action='store_true', default=False,
                     help='run the tests marked browser too (headless Chromium, the [demo] '
                     'extra and Selenium; .ci/run)')


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'cuda: needs an NVIDIA GPU; deselected unless --cuda (tools/gpu_check.sh)')
    config.addinivalue_line(
        'markers', 'browser: drives tools/webui.py in headless Chromium; deselected unless '
        '--browser (.ci/run)')
    if config.getoption('--cuda'):
        import torch
        if not torch.cuda.is_available():
            raise pytest.UsageError(
                '--cuda: torch.cuda.is_available() is False (torch '
                f'{torch.__version__}, built for CUDA {torch.version.cuda}); the CUDA tests '
                'need a GPU. Run the suite without --cuda on this machine.')


def pytest_collection_modifyitems(config, items):
    deselected = {}
    for marker, (option, _, _) in OPT_IN.items():
        if config.getoption(option):
            continue
        left_out = [item for item in items if item.get_closest_marker(marker) is not None]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = [item for item in items if item.get_closest_marker(marker) is None]
        deselected[marker] = len(left_out)
    config.stash[_DESELECTED] = deselected


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for marker, n in config.stash.get(_DESELECTED, {}).items():
        if n:
            _, needs, how = OPT_IN[marker]
            terminalreporter.write_line(
                f'{n} {"CUDA" if marker == "cuda" else marker} test(s) deselected '
                f'({needs}): run them with {how}.')


@pytest.fixture
def free_port():
    """A TCP port on 127.0.0.1 for a distributed test's rendezvous, reserved for the test.

    Why it is not racy (the four copies it replaces bound port 0, closed the socket and
    returned the number, which any other process could take before the test's process
    group bound it): the OS chooses the port at bind time (port 0) and this socket STAYS
    bound until the test ends, with ``SO_REUSEADDR`` and without listening. Linux never
    hands a port that a socket is bound to to another port-0 (ephemeral) bind, while a
    socket that also sets ``SO_REUSEADDR`` may bind it and listen as long as no socket on it
    listens. torch's TCPStore server (the process group's rendezvous, torchrun's agent)
    sets ``SO_REUSEADDR``, so it binds the reserved port; nobody else gets it.
    Checked by ``tests/test_port_fixture.py``.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(('127.0.0.1', 0))
        yield s.getsockname()[1]


@pytest.fixture
def mm_log():
    """Messages logged through mmengine's current logger (``print_log(logger='current')``)
    during the test; independent of which stream the logger's handlers hold."""
    from mmengine.logging import MMLogger

    records = []

    class _Collect(logging.Handler):

        def emit(self, record):
            records.append(record.getMessage())

    logger = MMLogger.get_current_instance()
    handler = _Collect(level=logging.DEBUG)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def write_refer_root(root, n_refs=12, n_sents=5, image=None, orientation=None,
                     box=(8, 4, 40, 20)):
    """A synthetic refer-API data root under ``root``: one image, ``n_refs`` train refs of
    ``n_sents`` sentences each, every ref on the same box annotation ``(x0, y0, x1, y1)``.

    ``image`` (H×W×3 uint8 RGB, optional) is saved as a JPEG whose EXIF orientation tag is
    ``orientation`` (None: no tag); without it the image is 48×64 and not written (for
    tests with an empty pipeline). Returns ``root`` (str).
    """
    import json
    import os
    import os.path as osp
    import pickle

    h, w = (48, 64) if image is None else image.shape[:2]
    img_dir = osp.join(root, 'images', 'mscoco', 'images', 'train2014')
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(osp.join(root, 'refcoco'), exist_ok=True)
    x0, y0, x1, y1 = box
    anns = [dict(id=100 + i, image_id=1, category_id=1, iscrowd=0, area=(x1 - x0) * (y1 - y0),
                 bbox=[x0, y0, x1 - x0, y1 - y0],
                 segmentation=[[x0, y0, x1, y0, x1, y1, x0, y1]]) for i in range(n_refs)]
    with open(osp.join(root, 'refcoco', 'instances.json'), 'w') as f:
        json.dump(dict(images=[dict(id=1, file_name='img.jpg', height=h, width=w)],
                       annotations=anns, categories=[dict(id=1, name='thing')]), f)
    refs = []
    for i in range(n_refs):
        sents = [dict(raw=f'thing {i} sentence {j}', sent=f'thing {i} sentence {j}',
                      tokens=['thing', str(i), 'sentence', str(j)], sent_id=i * 100 + j)
                 for j in range(n_sents)]
        refs.append(dict(ref_id=i, ann_id=100 + i, image_id=1, category_id=1, split='train',
                         file_name=f'img_{i}.jpg', sent_ids=[s['sent_id'] for s in sents],
                         sentences=sents))
    with open(osp.join(root, 'refcoco', 'refs(unc).p'), 'wb') as f:
        pickle.dump(refs, f, protocol=2)
    if image is not None:
        from PIL import Image
        exif = Image.Exif()
        if orientation is not None:
            exif[0x0112] = orientation
        Image.fromarray(image).save(osp.join(img_dir, 'img.jpg'), quality=95, exif=exif)
    return str(root)


@pytest.fixture
def refer_root(tmp_path):
    """``write_refer_root`` into a fresh folder of ``tmp_path`` (call with its kwargs)."""
    count = [0]

    def make(**kwargs):
        count[0] += 1
        return write_refer_root(tmp_path / f'refer{count[0]}', **kwargs)

    return make
