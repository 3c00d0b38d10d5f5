# Copyright (c) mmrefseg contributors. All rights reserved.
"""Loading mmengine Runner checkpoints on torch >= 2.6, load errors that tell the truth, and
one opt-in global patch (``pkg_resources`` on setuptools >= 82).

Nothing here runs on import: every function acts when it is called, and only then.

1. **Runner checkpoints on torch >= 2.6.** mmengine 0.10.7 calls ``torch.load(path)``
   without ``weights_only``; since torch 2.6 that defaults to ``weights_only=True`` and
   refuses mmengine's own checkpoints (they pickle ``HistoryBuffer`` objects and numpy
   arrays in ``message_hub``). :func:`allow_runner_checkpoints` keeps torch's safe loader
   and *allow-lists* exactly the classes mmengine writes (:func:`runner_checkpoint_globals`)
   for the duration of a ``with`` block (``torch.serialization.safe_globals``), instead of
   switching the safety off. On torch < 2.6 (``weights_only`` is not the default, and
   ``safe_globals`` needs torch 2.5) it does nothing. Who uses it:
   :class:`~mmrefseg.engine.hooks.SafeCheckpointLoadHook` (a Runner's ``load_from``,
   ``resume``, mmseg's ``tools/test.py CHECKPOINT``) and :func:`mmrefseg.apis.init_model`.
2. **Errors.** :func:`checkpoint_load_errors` turns a failed load into
   :class:`CorruptCheckpointError` ("truncated or damaged ... use an earlier checkpoint")
   only when a check of the file itself finds it incomplete (no zip end record, a damaged
   zip directory, a CRC mismatch, an empty file, or ``EOFError``). Every other error (a
   CUDA out-of-memory error during ``resume``, a bad ``map_location``, a state-dict
   mismatch, ...) passes through unchanged. An ``UnpicklingError`` from a sound file while
   torch loads weights-only gets the file name and the opt-out added.
3. **pkg_resources** (:func:`apply_pkg_resources_fallback`, opt-in, global). setuptools >= 82
   removed ``pkg_resources``, which mmengine 0.10.x uses to resolve ``mmseg::`` config
   bases. ``requirements.txt`` pins ``setuptools<82``; where it is missing anyway, our tools
   call this function, which replaces mmengine's three package helpers by
   ``importlib.metadata`` equivalents: once, only when ``import pkg_resources`` fails, and
   only on mmengine 0.10.x.
"""
import importlib
import importlib.metadata as importlib_metadata
import importlib.util
import os
import os.path as osp
import pickle
import warnings
import zipfile
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch

__all__ = [
    'CorruptCheckpointError', 'allow_runner_checkpoints', 'apply_pkg_resources_fallback',
    'checkpoint_file_problem', 'checkpoint_load_errors', 'runner_checkpoint_globals',
    'runner_checkpoint_loading', 'restricted_getattr', 'torch_version', 'weights_only_default',
    'MMENGINE_SERIES'
]


#: the mmengine series whose private code the opt-in patches were written against (the
#: pkg_resources fallback here, AtomicCheckpointHook's step save); elsewhere they stand down
MMENGINE_SERIES = '0.10.'


def torch_version() -> tuple:
    """``(major, minor)`` of the running torch (``'2.1.2+cu121'`` -> ``(2, 1)``)."""
    return tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2])


def weights_only_default() -> bool:
    """Whether a plain ``torch.load(f)`` (as mmengine calls it) loads weights-only here."""
    true_values = ('1', 'y', 'yes', 'true')
    if os.getenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '0').lower() in true_values:
        return True
    if os.getenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '0').lower() in true_values:
        return False
    return torch_version() >= (2, 6)


# ---------------------------------------------------------------------------- allow-list
def _numpy_globals():
    """numpy objects that pickled arrays / scalars / dtypes refer to."""
    out = [np.ndarray, np.dtype]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    out += [_reconstruct, scalar]
    # dtype classes (``numpy.dtypes.Float64DType`` ...) appear in numpy >= 1.25 pickles.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return out


def restricted_getattr(obj, name):
    """``getattr`` for checkpoint unpickling: only ``HistoryBuffer.<statistics method>``.

    A Runner checkpoint's ``message_hub`` pickles every ``HistoryBuffer`` with its
    ``statistics_methods`` (``{'min': HistoryBuffer.min, ...}``); pickle protocol 2 writes a
    method of a class as ``getattr(HistoryBuffer, 'min')``, so the file needs the global
    ``builtins.getattr``. Allow-listing the real ``getattr`` would open the safe loader to
    arbitrary attribute access (``getattr(type, ...)`` reaches any class), so the global is
    mapped to this function instead.
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_') \
            and callable(getattr(HistoryBuffer, name, None)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); the safe loader only allows the '
        'statistics methods of mmengine HistoryBuffer. If you trust this file, load it with '
        'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1.')


_GLOBALS = []


def runner_checkpoint_globals() -> list:
    """What an mmengine 0.10 Runner checkpoint pickles besides tensors (built once)."""
    if not _GLOBALS:
        from mmengine.config.config import ConfigDict
        from mmengine.logging import HistoryBuffer
        _GLOBALS.extend(_numpy_globals() + [HistoryBuffer, ConfigDict] +
                        [(restricted_getattr, 'builtins.getattr')])
    return list(_GLOBALS)


@contextmanager
def allow_runner_checkpoints():
    """Allow-list :func:`runner_checkpoint_globals` for ``torch.load`` inside the block.

    Uses ``torch.serialization.safe_globals`` (torch >= 2.5) and only where loads are
    weights-only by default (torch >= 2.6, or ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``);
    elsewhere, e.g. on torch 2.1-2.5, the block runs unchanged. Entries the process had
    allow-listed before are left alone, so leaving the block restores torch's list exactly.
    """
    serialization = torch.serialization
    if not weights_only_default() or not hasattr(serialization, 'safe_globals'):
        yield
        return
    have = set(serialization.get_safe_globals()) if hasattr(serialization,
                                                            'get_safe_globals') else set()
    with serialization.safe_globals([g for g in runner_checkpoint_globals() if g not in have]):
        yield


# ---------------------------------------------------------------------------- errors
class CorruptCheckpointError(RuntimeError):
    """The checkpoint file itself is incomplete or damaged (truncated, bad CRC, empty)."""


def _legacy_magic() -> bytes:
    """The first bytes of a checkpoint in torch's pre-1.6 (non-zip) format."""
    return pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


def checkpoint_file_problem(filename: str) -> Optional[str]:
    """Why the local file ``filename`` is not a complete torch checkpoint, or None.

    A torch (>= 1.6) checkpoint is a zip archive: its end-of-central-directory record, its
    directory and every member's CRC-32 are checked (reading the whole file). A file in
    the legacy format cannot be checked from the outside and counts as sound.
    """
    if os.path.getsize(filename) == 0:
        return 'the file is empty'
    with open(filename, 'rb') as f:
        head = f.read(32)
    if zipfile.is_zipfile(filename):
        try:
            with zipfile.ZipFile(filename) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError,
                ValueError) as e:
            return f'its zip archive is damaged ({e})'
        if bad is not None:
            return f'the member {bad} of its zip archive fails its CRC check'
        return None
    if head.startswith(b'PK\x03\x04'):
        return 'its zip archive has no end record: the file ends early'
    if head.startswith(_legacy_magic()):
        return None
    return 'it is neither a zip archive (torch >= 1.6) nor in the legacy torch format'


@contextmanager
def checkpoint_load_errors(filename):
    """Re-raise a failed load of ``filename`` truthfully (see the module docstring, 2.)."""
    try:
        yield
    except Exception as e:
        path = osp.expanduser(os.fspath(filename)) if isinstance(
            filename, (str, os.PathLike)) else None
        if path is None or not osp.isfile(path):
            raise  # a URL, a file object, or a missing file: mmengine's own error
        problem = checkpoint_file_problem(path)
        if problem is None and isinstance(e, EOFError):
            problem = 'its data ends early (EOFError)'
        if problem is not None:
            raise CorruptCheckpointError(
                f'{path} is not a complete torch checkpoint: {problem}. The file is truncated '
                'or damaged (an interrupted save or copy?): use an earlier checkpoint, or copy '
                f'the file again. Loading it raised {type(e).__name__}: {e}') from e
        if isinstance(e, pickle.UnpicklingError) and weights_only_default():
            raise pickle.UnpicklingError(
                f'{path}: torch.load(weights_only=True) refused an object in this checkpoint '
                f'that mmrefseg does not allow-list.\n{e}\nIf you trust this file, load it '
                'with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 set in the environment, or re-save '
                'it as a plain state_dict.') from e
        raise


@contextmanager
def runner_checkpoint_loading(filename):
    """:func:`allow_runner_checkpoints` + :func:`checkpoint_load_errors` for one load."""
    with checkpoint_load_errors(filename), allow_runner_checkpoints():
        yield


# ---------------------------------------------------------------------------- pkg_resources
_PKG_FALLBACK_APPLIED = False


def apply_pkg_resources_fallback() -> bool:
    """Opt-in, global: mmengine's package helpers without ``pkg_resources``.

    Replaces ``package2module`` / ``is_installed`` / ``get_installed_path`` in the mmengine
    modules that imported them, by ``importlib.metadata`` equivalents; only when
    ``import pkg_resources`` fails (setuptools >= 82) and mmengine is 0.10.x, and once.
    ``tools/train.py``, ``tools/test.py``, ``tools/demo.py`` and ``tools/webui.py`` call it
    before reading a config. Returns True
    when the fallback is in place.
    """
    global _PKG_FALLBACK_APPLIED
    if _PKG_FALLBACK_APPLIED:
        return True
    try:
        with warnings.catch_warnings():  # setuptools 81 warns that pkg_resources is deprecated
            warnings.simplefilter('ignore')
            import pkg_resources  # noqa: F401
        return False
    except ImportError:
        pass
    import mmengine
    if not mmengine.__version__.startswith(MMENGINE_SERIES):
        warnings.warn(f'mmrefseg: pkg_resources is missing and mmengine {mmengine.__version__} '
                      f'is not {MMENGINE_SERIES}x, so its package helpers are left as they are; '
                      "install 'setuptools<82' if `mmseg::` config bases fail.")
        return False

    def _dist(package):
        try:
            return importlib_metadata.distribution(package)
        except importlib_metadata.PackageNotFoundError:
            return None

    def package2module(package):
        dist = _dist(package)
        top = dist.read_text('top_level.txt') if dist is not None else None
        if not top:
            raise ValueError(f'can not infer the module name of {package}')
        return top.split('\n')[0]

    def is_installed(package):
        if _dist(package) is not None:
            return True
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None

    def get_installed_path(package):
        dist = _dist(package)
        if dist is None:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None:
                raise importlib_metadata.PackageNotFoundError(package)
            return osp.dirname(spec.origin)
        location = str(dist.locate_file(''))
        possible = osp.join(location, package)
        return possible if osp.exists(possible) else osp.join(location,
                                                              package2module(package))

    for name in ('mmengine.utils.package_utils', 'mmengine.utils', 'mmengine.config.config',
                 'mmengine.hub.hub'):
        mod = importlib.import_module(name)
        for fn in (package2module, is_installed, get_installed_path):
            if hasattr(mod, fn.__name__):
                setattr(mod, fn.__name__, fn)
    _PKG_FALLBACK_APPLIED = True
    return True
