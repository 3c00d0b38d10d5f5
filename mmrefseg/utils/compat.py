"""Work-arounds for the OpenMMLab 2.x stack on today's torch / setuptools.

Applied once, on ``import mmrefseg`` (which every config does through ``custom_imports``),
so users never meet these traps:

1. **Checkpoint loading on torch >= 2.6.** mmengine 0.10.7 calls ``torch.load(path)``
   without ``weights_only``; since torch 2.6 that defaults to ``weights_only=True`` and
   refuses mmengine's own checkpoints (they pickle ``HistoryBuffer`` objects and numpy
   arrays in ``message_hub``). We keep torch's safe loader and *allow-list* exactly the
   classes mmengine writes (:data:`SAFE_GLOBALS`), instead of switching the safety off.
   A checkpoint holding anything else fails with an error that names the file, the
   offending class and the explicit opt-out (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, only
   for files you trust).
2. **pkg_resources.** setuptools >= 82 removed ``pkg_resources``, which mmengine 0.10.7 uses
   to resolve ``mmseg::`` config bases. ``requirements.txt`` pins ``setuptools<82``; if it
   is missing anyway, mmengine's three helpers are replaced by ``importlib.metadata``
   equivalents.
"""
import importlib
import importlib.metadata as importlib_metadata
import importlib.util
import os.path as osp
import pickle
import warnings

import numpy as np
import torch

__all__ = ['SAFE_GLOBALS', 'apply_all', 'load_checkpoint_file', 'restricted_getattr']


def _numpy_globals():
    """numpy objects that pickled arrays / scalars / dtypes refer to."""
    out = [np.ndarray, np.dtype]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    out += [_reconstruct, scalar]
    # dtype classes (``numpy.dtypes.Float64DType`` ...) appear in numpy >= 1.25 pickles.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return out


def _mmengine_globals():
    from mmengine.config.config import ConfigDict
    from mmengine.logging import HistoryBuffer
    return [HistoryBuffer, ConfigDict]


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


SAFE_GLOBALS = []


def _patch_torch_load():
    """Allow-list what mmengine checkpoints contain for ``weights_only`` loading."""
    if not hasattr(torch.serialization, 'add_safe_globals'):  # torch < 2.4
        return
    SAFE_GLOBALS[:] = _numpy_globals() + _mmengine_globals() + [
        (restricted_getattr, 'builtins.getattr')]
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
    _wrap_local_loader()


def load_checkpoint_file(filename, map_location=None):
    """``torch.load`` for a local checkpoint with the allow-list and a clear error."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(
            f'checkpoint {filename} not found. Check the path (or pass a URL / '
            f'`open-mmlab://` name that mmengine can download).')
    try:
        return torch.load(filename, map_location=map_location)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if 'weights_only' in msg or 'Unsupported global' in msg:
            raise pickle.UnpicklingError(
                f'{filename}: torch.load(weights_only=True) refused an object in this '
                f'checkpoint that mmrefseg does not allow-list.\n{msg}\n'
                'If you trust this file, load it with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 set in '
                'the environment, or re-save it as a plain state_dict.') from e
        raise pickle.UnpicklingError(
            f'{filename} is not a readable torch checkpoint ({msg}). The file is corrupt '
            'or truncated (an interrupted save?): use an earlier checkpoint.') from e
    except (RuntimeError, EOFError) as e:
        raise RuntimeError(
            f'{filename} is not a readable torch checkpoint ({e}). The file is corrupt or '
            'truncated (an interrupted save?): use an earlier checkpoint.') from e


def _wrap_local_loader():
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_checkpoint_file)


def _patch_pkg_resources():
    try:
        with warnings.catch_warnings():  # setuptools 81 warns that pkg_resources is deprecated
            warnings.simplefilter('ignore')
            import pkg_resources  # noqa: F401
        return
    except ImportError:
        pass

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


_APPLIED = False


def apply_all():
    """Apply every work-around once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _patch_torch_load()
    _patch_pkg_resources()
    _APPLIED = True


apply_all()
