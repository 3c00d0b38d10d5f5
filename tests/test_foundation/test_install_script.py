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
