"""Crash-safe checkpoint writes: the 'atomic_local' file backend (mmrefseg.utils.atomic_io)
and AtomicCheckpointHook, which our configs choose instead of mmengine's CheckpointHook."""
import os
import os.path as osp
import signal
import stat
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from mmengine.fileio import get_file_backend
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.runner import find_latest_checkpoint, save_checkpoint

from mmrefseg.engine.hooks import AtomicCheckpointHook
from mmrefseg.utils import atomic_io
from mmrefseg.utils.atomic_io import AtomicLocalBackend, atomic_write_bytes
from mmrefseg.utils.compat import allow_runner_checkpoints

from .toy import make_runner

ATOMIC = dict(backend='atomic_local')


def _ckpt(value):
    return dict(state_dict=dict(w=torch.full((256, 256), float(value))), meta=dict(v=value))


def _load(path):
    with allow_runner_checkpoints():
        return torch.load(path, map_location='cpu')


def _umask():
    """The process umask, read where no other thread writes files (a test, not the code)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_backend_is_opt_in():
    """The hook picks the backend; mmengine's LocalBackend is left as it is."""
    assert 'mmrefseg' not in (LocalBackend.put.__module__ or '')
    assert isinstance(get_file_backend('/tmp/x', backend_args=ATOMIC), AtomicLocalBackend)
    assert type(get_file_backend('/tmp/x')) is LocalBackend
    assert AtomicCheckpointHook(interval=1).backend_args == ATOMIC
    # a remote out_dir or the user's own backend_args are kept
    assert AtomicCheckpointHook(interval=1, out_dir='s3://bucket/run').backend_args is None
    own = dict(backend='local')
    assert AtomicCheckpointHook(interval=1, backend_args=own).backend_args == own


def test_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / 'sub' / 'a.pth'  # the directory is created, as mmengine's put does
    save_checkpoint(_ckpt(1), str(target), backend_args=ATOMIC)
    save_checkpoint(_ckpt(2), str(target), backend_args=ATOMIC)
    assert _load(target)['meta']['v'] == 2
    assert os.listdir(target.parent) == ['a.pth']
    assert (os.stat(target).st_mode & 0o777) == (0o666 & ~_umask())


def test_replacing_keeps_the_previous_files_mode(tmp_path):
    target = tmp_path / 'last_checkpoint'
    target.write_text('old')
    os.chmod(target, 0o640)
    atomic_write_bytes(b'new', target)
    assert target.read_bytes() == b'new'
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


def test_new_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(b'x', tmp_path / 'new.pth')
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / 'new.pth').st_mode) == 0o640


def test_write_does_not_touch_the_process_umask(tmp_path, monkeypatch):
    """os.umask(0) would be a race: a file another thread creates meanwhile gets mode 0o666."""

    def no_umask(mask):
        raise AssertionError(f'os.umask({mask:#o}) called by a write')

    monkeypatch.setattr(atomic_io.os, 'umask', no_umask)
    errors = []

    def writer(i):
        try:
            for j in range(20):
                atomic_write_bytes(b'%d' % j, tmp_path / f'f{i}')
        except BaseException as e:  # noqa: B902  (collected, then asserted)
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i, )) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(os.listdir(tmp_path)) == ['f0', 'f1', 'f2', 'f3']


def test_symlink_is_kept_and_its_target_replaced(tmp_path):
    real = tmp_path / 'real.pth'
    real.write_bytes(b'old')
    link = tmp_path / 'latest.pth'
    link.symlink_to(real)
    atomic_write_bytes(b'new', link)
    assert link.is_symlink() and real.read_bytes() == b'new'


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
    save_checkpoint(_ckpt(1), target, backend_args=ATOMIC)
    AtomicLocalBackend().put_text(target, str(tmp_path / 'last_checkpoint'))
    real_fdopen = os.fdopen
    monkeypatch.setattr(atomic_io.os, 'fdopen',
                        lambda fd, mode: _HalfWriteThenFail(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match='No space left'):
        save_checkpoint(_ckpt(2), target, backend_args=ATOMIC)
    with pytest.raises(OSError, match='No space left'):
        AtomicLocalBackend().put_text('garbage', str(tmp_path / 'last_checkpoint'))
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
        from mmrefseg.utils.atomic_io import AtomicLocalBackend
        from mmengine.runner import save_checkpoint
        ck = lambda v: dict(state_dict=dict(w=torch.full((256, 256), float(v))), meta=dict(v=v))
        atomic = dict(backend='atomic_local')
        save_checkpoint(ck(1), {target!r}, backend_args=atomic)
        AtomicLocalBackend().put_text({target!r}, {last!r})
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)   # die mid-write
        save_checkpoint(ck(2), {target!r}, backend_args=atomic)
        print('not reached')
    ''')
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert 'not reached' not in proc.stdout
    assert _load(target)['meta']['v'] == 1
    assert find_latest_checkpoint(str(tmp_path)) == target
    # the killed write left only its own temp file, which nothing reads
    stray = [n for n in os.listdir(tmp_path) if n not in ('iter_2.pth', 'last_checkpoint')]
    assert len(stray) == 1 and stray[0].startswith('.iter_2.pth.tmp-'), stray


def _fail_put_for(monkeypatch, name):
    """Make the atomic backend's put raise 'disk full' for files called ``name``."""
    real_put = AtomicLocalBackend.put

    def failing_put(self, obj, filepath):
        if osp.basename(str(filepath)) == name:
            raise OSError(28, 'No space left on device')
        return real_put(self, obj, filepath)

    monkeypatch.setattr(AtomicLocalBackend, 'put', failing_put)


def test_crash_while_saving_keeps_last_checkpoint_loadable(tmp_path, monkeypatch):
    """max_keep_ckpts=1: mmengine deletes the old checkpoint before writing the new one; a
    crash in between left `last_checkpoint` naming a deleted file. Now the old one stays."""
    runner = make_runner(tmp_path, 'ckpt_a', max_iters=2, max_keep_ckpts=1)
    runner.train()
    first = osp.join(str(tmp_path), 'iter_2.pth')
    assert find_latest_checkpoint(str(tmp_path)) == first

    _fail_put_for(monkeypatch, 'iter_4.pth')
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


def _best(tmp_path):
    return sorted(n for n in os.listdir(tmp_path) if n.startswith('best_'))


def test_crash_while_saving_a_new_best_keeps_the_old_best(tmp_path, monkeypatch):
    """mmengine removes best_score_iter_1.pth before it writes best_score_iter_2.pth; a crash
    in between left no best checkpoint at all. Now the new best is written first."""
    make_runner(tmp_path, 'best_a', max_iters=1, ckpt_interval=1, val_interval=1).train()
    assert _best(tmp_path) == ['best_score_iter_1.pth']

    _fail_put_for(monkeypatch, 'best_score_iter_2.pth')
    runner = make_runner(tmp_path, 'best_b', max_iters=2, ckpt_interval=1, val_interval=1,
                         resume=True)
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    monkeypatch.undo()
    assert _best(tmp_path) == ['best_score_iter_1.pth']
    assert _load(tmp_path / 'best_score_iter_1.pth')['meta']['iter'] == 1

    # resumed (from iter_2.pth, saved before the failed validation), the next new best
    # replaces the old one
    make_runner(tmp_path, 'best_c', max_iters=3, ckpt_interval=1, val_interval=1,
                resume=True).train()
    assert _best(tmp_path) == ['best_score_iter_3.pth']


def test_hook_on_another_mmengine_warns_and_stays_crash_safe(tmp_path, monkeypatch):
    """Version guard: the copied ``_save_checkpoint_with_step`` body is mmengine 0.10's; on
    another mmengine the hook says so and uses mmengine's own method, while checkpoint files
    are still written through the atomic backend and removals still come last."""
    import mmengine

    from mmrefseg.engine.hooks import atomic_checkpoint_hook
    monkeypatch.setattr(mmengine, '__version__', '0.11.0')
    with pytest.warns(UserWarning, match='written for mmengine 0.10'):
        hook = AtomicCheckpointHook(interval=1)
    assert hook._own_step_save is False and hook.backend_args == ATOMIC
    called = []
    real = atomic_checkpoint_hook.CheckpointHook._save_checkpoint_with_step

    def mmengines_own(self, *args, **kwargs):
        called.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(atomic_checkpoint_hook.CheckpointHook, '_save_checkpoint_with_step',
                        mmengines_own)
    with pytest.warns(UserWarning, match='written for mmengine 0.10'):
        runner = make_runner(tmp_path, 'other_mmengine', max_iters=4, max_keep_ckpts=1)
    _fail_put_for(monkeypatch, 'iter_4.pth')
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    assert called  # mmengine's method did the save
    first = osp.join(str(tmp_path), 'iter_2.pth')
    assert _load(first)['meta']['iter'] == 2  # the removal of iter_2 waited for iter_4
    assert not osp.exists(osp.join(str(tmp_path), 'iter_4.pth'))
