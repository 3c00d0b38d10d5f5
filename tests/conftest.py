"""Suite-wide pytest options: the ``cuda`` marker.

Tests marked ``@pytest.mark.cuda`` need an NVIDIA GPU. The default run (``pytest tests``)
*deselects* them: they are not collected into the run, are not reported as skipped, and
every CPU test runs as before (a device-parametrised test keeps its ``cpu`` case). The
summary says how many were left out. ``pytest --cuda`` keeps them, and fails at once when
``torch.cuda.is_available()`` is False: asking for the GPU tests on a machine without a
GPU is an error, not a skip. ``tools/gpu_check.sh`` runs ``pytest --cuda -m cuda tests``.
"""
import pytest

_DESELECTED = pytest.StashKey[int]()


def pytest_addoption(parser):
    parser.addoption('--cuda', action='store_true', default=False,
                     help='run the tests marked cuda too (needs a GPU; tools/gpu_check.sh)')


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'cuda: needs an NVIDIA GPU; deselected unless --cuda (tools/gpu_check.sh)')
    if config.getoption('--cuda'):
        import torch
        if not torch.cuda.is_available():
            raise pytest.UsageError(
                '--cuda: torch.cuda.is_available() is False (torch '
                f'{torch.__version__}, built for CUDA {torch.version.cuda}); the CUDA tests '
                'need a GPU. Run the suite without --cuda on this machine.')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--cuda'):
        return
    gpu = [item for item in items if item.get_closest_marker('cuda') is not None]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if item.get_closest_marker('cuda') is None]
    config.stash[_DESELECTED] = len(gpu)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = config.stash.get(_DESELECTED, 0)
    if n:
        terminalreporter.write_line(
            f'{n} CUDA test(s) deselected (they need a GPU): run them with '
            '`pytest --cuda -m cuda tests` or tools/gpu_check.sh on a machine with a GPU.')
