# Copyright (c) mmrefseg contributors. All rights reserved.
"""tools/webui.py without a browser (and without Gradio): what the page does with a request.

The mask PNG of a run equals ``inference_model`` on the same image and sentences pixel for
pixel; every kind of bad input gets its message (BadInput) instead of an exception from
deep inside; the example sources; and the switch that keeps the browser tests
(test_webui_browser.py, marker ``browser``) out of the default run and in CI's.
"""
import importlib.util
import os
import os.path as osp
import re
import struct
import subprocess
import sys
import zlib

import cv2
import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmrefseg  # noqa: F401
from mmrefseg.apis import inference_model, init_model

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs/mpg_lqgnet_tiny_refer.py')
IMAGE = osp.join(REPO, 'tests/data/tiny_refer/images/mscoco/images/train2014/'
                 '000000039769.jpg')


def load_webui():
    spec = importlib.util.spec_from_file_location('mmrefseg_webui_tool',
                                                  osp.join(REPO, 'tools', 'webui.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


webui = load_webui()


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return init_model(CONFIG, device='cpu')


@pytest.fixture
def demo(model, tmp_path):
    return webui.RefSegDemo(model, max_pixels=640 * 480, max_sentences=3,
                            out_dir=str(tmp_path / 'out'))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))


def png_header_only(path, width, height):
    """A PNG whose header says width×height (no pixel data: nothing to decode)."""
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + png_chunk(b'IHDR', ihdr) + png_chunk(b'IEND', b''))
    return str(path)


def test_mask_png_equals_inference_model(demo, model):
    res = demo.run(IMAGE, '  the cat on the left \n\n the remote\n')
    sentences = ['the cat on the left', 'the remote']
    assert res['sentences'] == sentences  # blank lines dropped, spaces stripped
    reference = inference_model(model, IMAGE, sentences)
    h, w = mmcv.imread(IMAGE).shape[:2]
    assert res['shape'] == (h, w)
    n_layers = model.cfg.model.decode_head.num_layers
    for i, ref in enumerate(reference):
        png = cv2.imread(res['mask_files'][i], cv2.IMREAD_UNCHANGED)
        want = ref.pred_sem_seg.data[0].numpy().astype(np.uint8) * 255
        assert png.dtype == np.uint8 and png.shape == (h, w)
        assert np.array_equal(png, want)
        assert osp.basename(res['mask_files'][i]).startswith(f'mask_{i + 1}_')
        assert res['overlays'][i].shape == (h, w, 3)
        assert len(res['priors'][i]) == n_layers
        assert all(p.shape == (h, w, 3) for p in res['priors'][i])
    # the random-weight masks differ between the sentences: equality above is not trivial
    assert not np.array_equal(cv2.imread(res['mask_files'][0], cv2.IMREAD_UNCHANGED),
                              cv2.imread(res['mask_files'][1], cv2.IMREAD_UNCHANGED))
    assert res['model_seconds'] > 0 and res['truncated'] == [False, False]


def test_result_files_are_kept_for_an_hour(demo):
    first = demo.run(IMAGE, 'a cat')['mask_files'][0]
    second = demo.run(IMAGE, 'a cat')['mask_files'][0]
    assert osp.isfile(first) and osp.isfile(second)  # a browser may fetch them later
    old = osp.dirname(first)
    os.utime(old, (os.path.getatime(old), os.path.getmtime(old) - webui.KEEP_SECONDS - 1))
    third = demo.run(IMAGE, 'a cat')['mask_files'][0]
    assert not osp.exists(first) and osp.isfile(second) and osp.isfile(third)


def test_large_images_are_drawn_small_but_masks_keep_full_size(model, tmp_path):
    big = cv2.resize(mmcv.imread(IMAGE), (1600, 1200))
    path = str(tmp_path / 'big.png')
    cv2.imwrite(path, big)
    res = webui.RefSegDemo(model, out_dir=str(tmp_path / 'out')).run(path, 'a cat')
    assert cv2.imread(res['mask_files'][0], cv2.IMREAD_UNCHANGED).shape == (1200, 1600)
    assert res['overlays'][0].shape == (768, 1024, 3)  # DISPLAY_SIDE


def test_long_sentence_is_flagged(demo):
    res = demo.run(IMAGE, ' '.join(['cat'] * 40))  # the tiny config reads 30 tokens
    assert res['truncated'] == [True]


@pytest.mark.parametrize('text, message', [
    ('', 'Type at least one sentence'),
    (' \n  \n', 'Type at least one sentence'),
    (None, 'Type at least one sentence'),
    ('a\nb\nc\nd', '4 sentences: at most 3 per run (--max-sentences)'),
])
def test_bad_sentences_get_a_message(demo, text, message):
    with pytest.raises(webui.BadInput, match=message.replace('(', r'\(').replace(')', r'\)')):
        demo.run(IMAGE, text)


def test_bad_images_get_a_message(demo, tmp_path):
    text_file = tmp_path / 'notes.png'
    text_file.write_text('not an image at all\n')
    truncated = tmp_path / 'cut.png'
    cv2.imwrite(str(tmp_path / 'full.png'), mmcv.imread(IMAGE))
    truncated.write_bytes((tmp_path / 'full.png').read_bytes()[:2000])
    cases = [
        (None, None, 'Pick an image first'),
        (str(tmp_path / 'gone.jpg'), 'photo.jpg', 'The upload of "photo.jpg" did not arrive'),
        (str(text_file), 'notes.png', '"notes.png" is not an image this page can read'),
        (str(truncated), None, '"cut.png" could not be decoded'),
        (png_header_only(tmp_path / 'wide.png', 700, 480), None,
         r'"wide.png" is 700×480 = 0.3 MP; this page takes at most 0.3 MP \(--max-pixels '
         r'307200\)'),
        (png_header_only(tmp_path / 'bomb.png', 30000, 30000), None,
         r'"bomb.png" is over 179.0 MP'),
    ]
    for path, name, message in cases:
        with pytest.raises(webui.BadInput, match=message):
            demo.run(path, 'the cat', name)
    # the demo still serves a good request afterwards
    assert len(demo.run(IMAGE, 'the cat')['mask_files']) == 1


@pytest.mark.parametrize('kind', ['grey', 'exif_rotated'])
def test_image_is_read_like_inference_model(demo, model, tmp_path, kind):
    from PIL import Image
    rgb = mmcv.imread(IMAGE, channel_order='rgb')[:400, :300]  # 300 wide, 400 high
    if kind == 'grey':
        path = str(tmp_path / 'grey.png')
        Image.fromarray(rgb).convert('L').save(path)
    else:  # stored 300×400, EXIF orientation 6: shown (and read) upright as 400×300
        path = str(tmp_path / 'phone.jpg')
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(rgb).save(path, quality=95, exif=exif)
    res = demo.run(path, 'the cat')
    want = inference_model(model, path, ['the cat'])[0].pred_sem_seg.data[0].numpy() * 255
    png = cv2.imread(res['mask_files'][0], cv2.IMREAD_UNCHANGED)
    assert png.shape == ((400, 300) if kind == 'grey' else (300, 400))
    assert np.array_equal(png, want)


def test_examples_fixture_photos_and_refshapes_scenes(tmp_path):
    photos = webui.fixture_examples(4)
    assert len(photos) == 4 and len({p for p, _ in photos}) == 4
    for path, text in photos:
        assert osp.isfile(path) and text.strip()
    cfg = Config.fromfile(osp.join(REPO, 'configs/quickstart/mpg_lqgnet_refshapes.py'))
    cfg.val_dataloader.dataset.data_root = str(tmp_path / 'refshapes')
    scenes = webui.refshapes_examples(cfg, 3)  # the quick-start's own val set
    assert len(scenes) == 3
    for path, text in scenes:
        assert path.startswith(str(tmp_path)) and osp.isfile(path)
        assert 1 <= len(text.splitlines()) <= 2
    # another config: the default val split, into the given cache
    other = webui.refshapes_examples(Config.fromfile(CONFIG), 2,
                                     data_root=str(tmp_path / 'other'))
    assert [osp.basename(p) for p, _ in other] == ['000000.png', '000001.png']
    assert [t for _, t in other] == [t for _, t in scenes[:2]]  # same scenes, same text


def test_browser_tests_are_deselected_by_default_and_selected_by_ci():
    """`python -m pytest tests` leaves the browser tests out (they need Chromium and the
    [demo] extra) and says so; `--browser -m browser`, which .ci/run runs, selects them."""
    target = osp.join('tests', 'test_tools', 'test_webui_browser.py')
    env = dict(os.environ, PYTHONPATH=REPO)

    def collect(*extra):
        proc = subprocess.run([sys.executable, '-m', 'pytest', '--collect-only', '-q',
                               *extra, target], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr

    rc, out = collect()
    assert rc == 5, out  # 5: no test selected
    n = int(re.search(r'(\d+) browser test\(s\) deselected', out).group(1))
    assert n >= 7, out
    for extra in (['--browser'], ['--browser', '-m', 'browser']):
        rc, out = collect(*extra)
        assert rc == 0 and re.search(rf'^{n} tests collected', out, re.M), out
    rc, out = collect('-m', 'browser')  # the marker alone does not opt in
    assert rc == 5, out
    ci = open(osp.join(REPO, '.ci', 'run')).read()
    assert 'python -m pytest -q --browser -m browser tests' in ci
    assert 'apt-get install' in ci and 'chromium-driver' in ci and '.[demo]' in ci
