"""Crash-safe checkpoint writes (mmrefseg.utils.atomic_io, applied on ``import mmrefseg``)."""
import os
import os.path as osp
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import mmrefseg  # noqa: F401  (applies the patches)
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.runner import find_latest_checkpoint, save_checkpoint

from mmrefseg.utils import atomic_io

from .toy import make_runner


def _ckpt(value):
    return dict(state_dict=dict(w=torch.full((256, 256), float(value))), meta=dict(v=value))


def _load(path):
    return torch.load(path, map_location='cpu')


def test_patches_are_applied():
    assert getattr(LocalBackend.put, '_mmrefseg_atomic', False)
    assert getattr(LocalBackend.put_text, '_mmrefseg_atomic', False)
    from mmengine.hooks import CheckpointHook
    assert getattr(CheckpointHook._save_checkpoint_with_step, '_mmrefseg_atomic', False)


def test_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / 'sub' / 'a.pth'  # the directory is created, as mmengine's put does
    save_checkpoint(_ckpt(1), str(target))
    save_checkpoint(_ckpt(2), str(target))
    assert _load(target)['meta']['v'] == 2
    assert os.listdir(target.parent) == ['a.pth']
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(target).st_mode & 0o777) == (0o666 & ~umask)


class _HalfWriteThenFail:
    """A file object whose write() stores half the bytes and then raises (disk full)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(bytes(data[:len(data) // 2]))
        raise OSError(28, 'No space left on device')

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_exception_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    target = str(tmp_path / 'iter_2.pth')
    save_checkpoint(_ckpt(1), target)
    LocalBackend().put_text(target, str(tmp_path / 'last_checkpoint'))
    real_fdopen = os.fdopen
    monkeypatch.setattr(atomic_io.os, 'fdopen',
                        lambda fd, mode: _HalfWriteThenFail(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match='No space left'):
        save_checkpoint(_ckpt(2), target)
    with pytest.raises(OSError, match='No space left'):
        LocalBackend().put_text('garbage', str(tmp_path / 'last_checkpoint'))
    monkeypatch.undo()
    assert _load(target)['meta']['v'] == 1  # previous checkpoint intact and loadable
    assert find_latest_checkpoint(str(tmp_path)) == target
    assert sorted(os.listdir(tmp_path)) == ['iter_2.pth', 'last_checkpoint']  # no temp left


def test_kill_9_mid_write_keeps_previous_checkpoint(tmp_path):
    """A process SIGKILLed while writing (after the data, before the rename) changes nothing."""
    target = str(tmp_path / 'iter_2.pth')
    last = str(tmp_path / 'last_checkpoint')
    script = textwrap.dedent(f'''
        import os, signal, torch
        import mmrefseg
        from mmengine.fileio.backends.local_backend import LocalBackend
        from mmengine.runner import save_checkpoint
        ck = lambda v: dict(state_dict=dict(w=torch.full((256, 256), float(v))), meta=dict(v=v))
        save_checkpoint(ck(1), {target!r})
        LocalBackend().put_text({target!r}, {last!r})
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)   # die mid-write
        save_checkpoint(ck(2), {target!r})
        print('not reached')
    ''')
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert 'not reached' not in proc.stdout
    assert _load(target)['meta']['v'] == 1
    assert find_latest_checkpoint(str(tmp_path)) == target
    # the killed write left only its own temp file, which nothing reads
    stray = [n for n in os.listdir(tmp_path) if n not in ('iter_2.pth', 'last_checkpoint')]
    assert len(stray) == 1 and stray[0].startswith('.iter_2.pth.tmp-'), stray


def test_crash_while_saving_keeps_last_checkpoint_loadable(tmp_path, monkeypatch):
    """max_keep_ckpts=1: mmengine deletes the old checkpoint before writing the new one; a
    crash in between left `last_checkpoint` naming a deleted file. Now the old one stays."""
    runner = make_runner(tmp_path, 'ckpt_a', max_iters=2, max_keep_ckpts=1)
    runner.train()
    first = osp.join(str(tmp_path), 'iter_2.pth')
    assert find_latest_checkpoint(str(tmp_path)) == first

    real_put = LocalBackend.put

    def failing_put(self, obj, filepath):
        if str(filepath).endswith('iter_4.pth'):
            raise OSError(28, 'No space left on device')
        return real_put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', failing_put)
    runner = make_runner(tmp_path, 'ckpt_b', max_iters=4, max_keep_ckpts=1, resume=True)
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    monkeypatch.undo()
    assert find_latest_checkpoint(str(tmp_path)) == first
    assert _load(first)['meta']['iter'] == 2
    assert not osp.exists(osp.join(str(tmp_path), 'iter_4.pth'))

    # and the run resumes from it and finishes; the outdated checkpoint is then removed
    runner = make_runner(tmp_path, 'ckpt_c', max_iters=4, max_keep_ckpts=1, resume=True)
    runner.train()
    assert find_latest_checkpoint(str(tmp_path)) == osp.join(str(tmp_path), 'iter_4.pth')
    assert not osp.exists(first)
    assert _load(osp.join(str(tmp_path), 'iter_4.pth'))['meta']['iter'] == 4
