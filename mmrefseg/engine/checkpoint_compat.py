# Copyright (c) mmrefseg contributors. All rights reserved.
"""Let ``weights_only`` loading read the ``HistoryBuffer`` objects of a Runner checkpoint.

A Runner checkpoint's ``message_hub`` pickles every ``HistoryBuffer`` with its
``statistics_methods`` (``{'min': HistoryBuffer.min, ...}``). ``torch.save`` uses pickle
protocol 2, which writes a method of a class as ``getattr(HistoryBuffer, 'min')``, so the
file needs the global ``builtins.getattr``, which :mod:`mmrefseg.utils.compat`'s allow-list
does not have: ``--resume`` and ``load_from`` failed on every checkpoint the Runner wrote.
Allow-listing the real ``getattr`` would open the safe loader to arbitrary attribute access
(``getattr(type, ...)`` reaches any class), so ``builtins.getattr`` is mapped to
:func:`restricted_getattr`, which only returns the statistics methods of ``HistoryBuffer``.

TODO(lead): this belongs in ``mmrefseg/utils/compat.py`` (``_patch_torch_load``); it lives
here only because compat.py is not the reliability helper's file.
"""
import pickle

import torch

__all__ = ['restricted_getattr', 'apply']


def restricted_getattr(obj, name):
    """``getattr`` for checkpoint unpickling: only ``HistoryBuffer.<statistics method>``."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_') \
            and callable(getattr(HistoryBuffer, name, None)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); the safe loader only allows the '
        'statistics methods of mmengine HistoryBuffer. If you trust this file, load it with '
        'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1.')


def apply() -> None:
    if hasattr(torch.serialization, 'add_safe_globals'):
        torch.serialization.add_safe_globals([(restricted_getattr, 'builtins.getattr')])
