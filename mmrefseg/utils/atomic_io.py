# Copyright (c) mmrefseg contributors. All rights reserved.
"""Crash-safe (write-then-rename) local writes for checkpoints and ``last_checkpoint``.

mmengine 0.10.7 writes checkpoints in place: ``save_checkpoint`` ends in
``LocalBackend.put(bytes, path)`` = ``open(path, 'wb').write(...)``, and ``CheckpointHook``
writes ``work_dir/last_checkpoint`` with a plain ``open(path, 'w')``. A process killed (OOM
killer, ``kill -9``, pre-emption, full disk) during either write leaves a truncated file
under the real name, and ``--resume`` then dies on it (or, for an empty ``last_checkpoint``,
silently starts from scratch).

:func:`apply` (run on ``import mmrefseg``, from :mod:`mmrefseg.engine`) makes those writes
atomic:

1. ``LocalBackend.put`` / ``put_text`` write to a temporary file in the same directory,
   ``fsync`` it, then ``os.replace`` it onto the target (atomic on POSIX and Windows when
   both names are on the same file system) and ``fsync`` the directory. Readers see either
   the previous complete file or the new complete file, never a partial one.
2. ``CheckpointHook._save_checkpoint_with_step`` is replaced by a copy that (a) writes
   ``last_checkpoint`` atomically and (b) deletes the checkpoint that falls out of
   ``max_keep_ckpts`` only *after* the new one and ``last_checkpoint`` are on disk (mmengine
   deletes it first, so a crash while saving left ``last_checkpoint`` naming a deleted file).
   Cost: room for ``max_keep_ckpts + 1`` checkpoints while one is being written.

A ``kill -9`` during a write leaves a stray ``.<name>.tmp-<pid>-<random>`` file beside the
target; nothing reads it and the next write of another process does not collide with it.
"""
import os
import os.path as osp
import tempfile
import warnings
from typing import Union

__all__ = ['atomic_write_bytes', 'atomic_write_text', 'apply']


def _fsync_dir(dirname: str) -> None:
    """Persist a rename (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: Union[bytes, bytearray, memoryview], filepath) -> None:
    """Write ``data`` to ``filepath`` so that a crash leaves the old file or the new one.

    The temporary file lives in the target's directory (``os.replace`` is only atomic within
    one file system) and is removed if the write raises.
    """
    filepath = os.fspath(filepath)
    dirname = osp.dirname(osp.abspath(filepath))
    os.makedirs(dirname, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=dirname, prefix=f'.{osp.basename(filepath)}.tmp-{os.getpid()}-')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, filepath)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(dirname)


def atomic_write_text(text: str, filepath, encoding: str = 'utf-8') -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(text.encode(encoding), filepath)


def _patch_local_backend() -> None:
    from mmengine.fileio.backends.local_backend import LocalBackend

    if getattr(LocalBackend.put, '_mmrefseg_atomic', False):
        return

    def put(self, obj: bytes, filepath) -> None:
        """Write bytes to ``filepath`` atomically (mmrefseg: write-then-rename)."""
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        """Write text to ``filepath`` atomically (mmrefseg: write-then-rename)."""
        atomic_write_text(obj, filepath, encoding)

    put._mmrefseg_atomic = True
    put_text._mmrefseg_atomic = True
    LocalBackend.put = put
    LocalBackend.put_text = put_text


def _save_checkpoint_with_step(self, runner, step, meta):
    """mmengine 0.10.7 ``CheckpointHook._save_checkpoint_with_step``, reordered:
    save → write ``last_checkpoint`` (atomic) → delete the checkpoint beyond
    ``max_keep_ckpts``. mmengine deletes first and writes ``last_checkpoint`` in place."""
    from mmengine.dist import is_main_process

    outdated = None
    if self.max_keep_ckpts > 0:
        # _save_checkpoint and _save_best_checkpoint may both call this in one epoch
        if not (len(self.keep_ckpt_ids) > 0 and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

    ckpt_filename = self.filename_tmpl.format(step)
    self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
    runner.message_hub.update_info('last_ckpt', self.last_ckpt)

    runner.save_checkpoint(
        self.out_dir,
        ckpt_filename,
        self.file_client_args,
        save_optimizer=self.save_optimizer,
        save_param_scheduler=self.save_param_scheduler,
        meta=meta,
        by_epoch=self.by_epoch,
        backend_args=self.backend_args,
        **self.args)

    if not is_main_process():
        return
    atomic_write_text(self.last_ckpt, osp.join(runner.work_dir, 'last_checkpoint'))

    if outdated is not None:
        ckpt_path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
        if self.file_backend.isfile(ckpt_path):
            self.file_backend.remove(ckpt_path)
        elif self.file_backend.isdir(ckpt_path):  # deepspeed checkpoints are directories
            self.file_backend.rmtree(ckpt_path)


def _patch_checkpoint_hook() -> None:
    import mmengine
    from mmengine.hooks import CheckpointHook

    if getattr(CheckpointHook._save_checkpoint_with_step, '_mmrefseg_atomic', False):
        return
    if not mmengine.__version__.startswith('0.10.'):
        warnings.warn(
            f'mmrefseg: CheckpointHook of mmengine {mmengine.__version__} is not patched '
            '(the crash-safe `last_checkpoint` write is written against mmengine 0.10.x); '
            'checkpoint files are still written atomically.')
        return
    _save_checkpoint_with_step._mmrefseg_atomic = True
    CheckpointHook._save_checkpoint_with_step = _save_checkpoint_with_step


_APPLIED = False


def apply() -> None:
    """Make mmengine's local checkpoint writes crash-safe (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _patch_local_backend()
    _patch_checkpoint_hook()
    _APPLIED = True
