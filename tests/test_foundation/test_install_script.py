"""tools/install.sh fails fast, with a clear message, where it cannot work."""
import os
import os.path as osp
import subprocess

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPT = osp.join(REPO, 'tools', 'install.sh')


def _run(env_extra):
    env = dict(os.environ, **env_extra)
    return subprocess.run(['bash', SCRIPT], env=env, capture_output=True, text=True,
                          timeout=60)


def test_script_is_valid_bash():
    assert subprocess.run(['bash', '-n', SCRIPT]).returncode == 0


def test_missing_python_fails_fast():
    r = _run({'PYTHON': 'python-that-does-not-exist'})
    assert r.returncode != 0
    assert 'python-that-does-not-exist' in r.stderr and 'PYTHON=' in r.stderr


def test_wrong_python_version_fails_fast(tmp_path):
    fake = tmp_path / 'python'
    fake.write_text('#!/bin/sh\necho 3.7\n')
    fake.chmod(0o755)
    r = _run({'PYTHON': str(fake)})
    assert r.returncode != 0
    assert 'Python 3.7 is not supported' in r.stderr


def _fake_torch(tmp_path, version):
    """A directory that makes importlib.metadata report torch ``version`` (on PYTHONPATH)."""
    site = tmp_path / f'fake-torch-{version}'
    dist = site / f'torch-{version}.dist-info'
    dist.mkdir(parents=True)
    (dist / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: torch\nVersion: {version}\n')
    return str(site)


def test_torch_outside_the_range_stops_and_says_what_to_do(tmp_path):
    """A torch the stack does not support is never replaced without --replace-torch."""
    for version in ('2.0.1', '2.15.0'):
        r = _run({'PYTHONPATH': _fake_torch(tmp_path, version)})
        assert r.returncode != 0, r.stdout
        assert f'torch {version} is installed' in r.stderr
        assert '2.1 - 2.14' in r.stderr and '--replace-torch' in r.stderr
        assert 'Successfully installed' not in r.stdout  # nothing was installed


def test_help_and_unknown_arguments():
    r = subprocess.run(['bash', SCRIPT, '--help'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and '--replace-torch' in r.stdout and 'torch 2.1' in r.stdout
    r = subprocess.run(['bash', SCRIPT, '--replace-torhc'], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "unknown argument '--replace-torhc'" in r.stderr
