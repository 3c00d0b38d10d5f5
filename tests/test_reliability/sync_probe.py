"""Record the host–device synchronisation points of a piece of code, on any device.

On a GPU a sync is any operation after which the host must wait for the device: reading a
value (``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``, ``t.tolist()``, ``t.cpu()``), and
the operators whose output *size* depends on the data (``nonzero``, ``masked_select``,
boolean-mask indexing ``x[mask]``, ``unique``, ``repeat_interleave`` without
``output_size``, ``equal``), a tensor made from Python data inside the step
(``torch.tensor([...])``, indexing with a list: a blocking host-to-device copy), plus a
``torch.distributed.all_reduce`` per step. On a CPU none
of these stalls anything, so a CPU test cannot time them; it can *see* them. ``SyncProbe``
records them in two layers while active:

* the Python entry points (``Tensor.item / tolist / cpu / __bool__ / __int__ / __float__ /
  __index__`` and ``torch.distributed.all_reduce / all_gather / broadcast``), patched for
  the duration of the ``with`` block only;
* a ``TorchDispatchMode`` that sees every aten operator, including those called from C++
  (``_local_scalar_dense`` behind ``.item()``, ``nonzero`` behind ``x[mask]``, ...).

``ignore`` names tensors whose reads are host reads by design (e.g. the optimizer's
``step`` counters, which torch keeps on the CPU for non-capturable optimizers precisely so
that reading them never syncs): an iterable of tensors, or a predicate ``f(t) -> bool``.
``numpy()`` is not recorded: it refuses device tensors, so a ``.numpy()`` read is a host
read by construction.

The CUDA counterpart is ``torch.cuda.set_sync_debug_mode('error')`` (tests/test_reliability
/test_cuda.py).
"""
import traceback
from contextlib import ExitStack
from unittest import mock

import torch
import torch.distributed as torch_dist
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
#: operators whose CUDA implementation waits for the device (value read or data-dependent
#: output size)
_SYNC_OPS = {
    _aten._local_scalar_dense.default, _aten.is_nonzero.default, _aten.equal.default,
    _aten.nonzero.default, _aten.masked_select.default, _aten._unique2.default,
    _aten.unique_dim.default, _aten.unique_consecutive.default,
    _aten.repeat_interleave.Tensor, _aten.bincount.default,
}
#: a tensor made from Python data (``torch.tensor(list)``, ``x[[2, 1, 0]]``): on a GPU it is
#: built on the host and copied with a blocking copy (``memcpy_and_sync``). Only tensors
#: with a dimension count: a 0-dim one comes from ``x[...] = 3`` (on CUDA a fill on the
#: device) or from torch's own host-side counters; set_sync_debug_mode checks the rest
_FROM_HOST = {_aten.lift_fresh.default}
_INDEX_OPS = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default}
_TENSOR_METHODS = ('item', 'tolist', 'cpu', '__bool__', '__int__', '__float__', '__index__')
_DIST_FUNCS = ('all_reduce', 'all_gather', 'broadcast', 'reduce', 'barrier')


def _where():
    """The innermost frame outside torch and this file: who asked for the sync."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        f = frame.filename.replace('\\', '/')
        if '/torch/' in f or f.endswith('sync_probe.py') or '/unittest/mock' in f:
            continue
        return f'{f}:{frame.lineno} ({frame.name})'
    return '?'


class _Mode(TorchDispatchMode):

    def __init__(self, probe):
        super().__init__()
        self.probe = probe

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.probe._depth:  # inside a patched Tensor method: already recorded
            pass
        elif func in _SYNC_OPS:
            if not (func is _aten._local_scalar_dense.default and self.probe._ignored(args[0])):
                self.probe._record(f'aten.{func.__name__}')
        elif func in _FROM_HOST:
            out = func(*args, **kwargs)
            if out.dim() > 0:  # 0-dim: `x[...] = 3` (a device fill on CUDA), host counters
                self.probe._record('tensor from Python data (a blocking host-to-device copy)')
            return out
        elif func in _INDEX_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get('indices', ())
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self.probe._record(f'aten.{func.__name__} with a boolean mask')
        return func(*args, **kwargs)


class SyncProbe:
    """``with SyncProbe() as p: ...`` then ``p.calls``: ``[(what, where), ...]``.

    Args:
        ignore (Iterable[torch.Tensor] | callable): tensors whose value reads are host
            reads by design (not recorded), or a predicate on the tensor. Default: none.
    """

    def __init__(self, ignore=()):
        self.calls = []
        if callable(ignore):
            self._ignored = ignore
        else:
            ids = {id(t) for t in ignore}
            self._ignored = lambda t: id(t) in ids
        self._depth = 0
        self._stack = None

    def _record(self, what):
        self.calls.append((what, _where()))

    def _wrap_method(self, name, orig):
        probe = self

        def method(t, *args, **kwargs):
            if probe._depth == 0 and not probe._ignored(t):
                probe._record(f'Tensor.{name}')
            probe._depth += 1  # the aten op behind it is the same sync: recorded once
            try:
                return orig(t, *args, **kwargs)
            finally:
                probe._depth -= 1

        return method

    def _wrap_func(self, name, orig):
        probe = self

        def func(*args, **kwargs):
            probe._record(f'torch.distributed.{name}')
            return orig(*args, **kwargs)

        return func

    def __enter__(self):
        self._stack = ExitStack()
        for name in _TENSOR_METHODS:
            orig = getattr(torch.Tensor, name)
            self._stack.enter_context(
                mock.patch.object(torch.Tensor, name, self._wrap_method(name, orig)))
        for name in _DIST_FUNCS:
            if hasattr(torch_dist, name):
                self._stack.enter_context(mock.patch.object(
                    torch_dist, name, self._wrap_func(name, getattr(torch_dist, name))))
        self._stack.enter_context(_Mode(self))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False

    def report(self):
        return '\n'.join(f'  {what} at {where}' for what, where in self.calls)
