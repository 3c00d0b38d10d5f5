# Copyright (c) mmrefseg contributors. All rights reserved.
"""Crash-safe (write-then-rename) local writes, and the ``'atomic_local'`` file backend.

mmengine 0.10.7 writes checkpoints in place: ``save_checkpoint`` ends in
``LocalBackend.put(bytes, path)`` = ``open(path, 'wb').write(...)``. A process killed (OOM
killer, ``kill -9``, pre-emption, full disk) during the write leaves a truncated file under
the real name, and ``--resume`` then dies on it.

:func:`atomic_write_bytes` writes to a temporary file in the same directory, ``fsync`` s
it, then ``os.replace`` s it onto the target (atomic on POSIX and Windows when both names
are on one file system) and ``fsync`` s the directory. Readers see either the previous
complete file or the new complete file, never a partial one. The result keeps the mode of
the file it replaces; a new file gets ``0o666`` minus the umask, as ``open()`` gives it. A
symlink is kept: its target is replaced.

:class:`AtomicLocalBackend` is mmengine's ``LocalBackend`` with ``put`` / ``put_text``
done that way. Importing this module registers it under the name ``'atomic_local'`` and
changes nothing else: mmengine picks it only where ``backend_args=dict(backend=
'atomic_local')`` asks for it, as :class:`~mmrefseg.engine.hooks.AtomicCheckpointHook`
does by default.

A ``kill -9`` during a write leaves a stray ``.<name>.tmp-<pid>-<random>`` file beside the
target; nothing reads it and the next write does not collide with it.
"""
import os
import os.path as osp
import stat
from typing import Union

from mmengine.fileio import LocalBackend, register_backend

__all__ = ['AtomicLocalBackend', 'atomic_write_bytes', 'atomic_write_text']


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


def _create_temp(dirname: str, basename: str):
    """``(fd, path)`` of a new file beside the target, mode ``0o666`` minus the umask.

    ``tempfile.mkstemp`` would create it ``0o600``; fixing that afterwards needs the umask,
    and reading the umask means setting it (a race with every other thread).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0)
    for _ in range(100):
        tmp = osp.join(dirname, f'.{basename}.tmp-{os.getpid()}-{os.urandom(4).hex()}')
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f'no free temporary file name beside {osp.join(dirname, basename)}')


def atomic_write_bytes(data: Union[bytes, bytearray, memoryview], filepath) -> None:
    """Write ``data`` to ``filepath`` so that a crash leaves the old file or the new one.

    The temporary file lives in the target's directory (``os.replace`` is only atomic within
    one file system) and is removed if the write raises.
    """
    filepath = os.fspath(filepath)
    if osp.islink(filepath):
        filepath = osp.realpath(filepath)  # replace the target, keep the link
    dirname = osp.dirname(osp.abspath(filepath))
    os.makedirs(dirname, exist_ok=True)
    try:
        old_mode = stat.S_IMODE(os.stat(filepath).st_mode)
    except FileNotFoundError:
        old_mode = None
    fd, tmp = _create_temp(dirname, osp.basename(filepath))
    try:
        with os.fdopen(fd, 'wb') as f:
            if old_mode is not None:  # chmod is not subject to the umask
                if hasattr(os, 'fchmod'):
                    os.fchmod(f.fileno(), old_mode)
                else:  # Windows
                    os.chmod(tmp, old_mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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


@register_backend('atomic_local')
class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put`` / ``put_text`` write-then-rename.

    Chosen with ``backend_args=dict(backend='atomic_local')`` (e.g. in a
    ``CheckpointHook``); reading, listing and removing are ``LocalBackend``'s.
    """

    def put(self, obj: bytes, filepath) -> None:
        """Write bytes to ``filepath`` atomically."""
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        """Write text to ``filepath`` atomically."""
        atomic_write_text(obj, filepath, encoding)
