# Copyright (c) mmrefseg contributors. All rights reserved.
"""``FusedAdamW``: torch's AdamW with its fused kernel wherever torch has one.

torch's ``AdamW`` runs one loop over the parameters with ~10 element-wise passes each on a
CPU (``foreach`` is CUDA-only, ``fused`` is off by default). For the 234 M parameters of
MPG-LQGNet that is a large share of a CPU training step (docs/benchmark.md). ``fused=True``
does the whole update in one pass per tensor; torch has that kernel on CUDA (torch >= 2.0)
and on CPU (torch >= 2.4). This class turns it on where it exists and otherwise keeps
torch's default, so the same config runs on torch 2.1.

It is the same optimizer: the same update rule (AdamW, decoupled weight decay), the same
arguments and the same state (``step``, ``exp_avg``, ``exp_avg_sq``); checkpoints of
``AdamW`` resume into it and back. Config::

    optimizer = dict(type='FusedAdamW', lr=1.5e-5, betas=(0.9, 0.999), weight_decay=0.01)
"""
from typing import Iterable

import torch
from mmseg.registry import OPTIMIZERS

from ...utils.compat import torch_version

__all__ = ['FusedAdamW', 'fused_adamw_supported']


def _tensors(params) -> list:
    out = []
    for p in params:
        if isinstance(p, dict):
            out.extend(p['params'] if not isinstance(p['params'], torch.Tensor) else
                       [p['params']])
        else:
            out.append(p)
    return out


def fused_adamw_supported(params: Iterable[torch.Tensor]) -> bool:
    """True when torch has a fused AdamW kernel for every tensor (all floating point, all
    on CUDA, or all on the CPU with torch >= 2.4)."""
    params = list(params)
    if not params or not all(torch.is_floating_point(p) for p in params):
        return False
    devices = {p.device.type for p in params}
    if devices == {'cuda'}:
        return True
    if devices == {'cpu'}:
        return torch_version() >= (2, 4)
    return False


@OPTIMIZERS.register_module()
class FusedAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` with ``fused=True`` where torch supports it.

    Args:
        params: parameters or parameter groups (as ``torch.optim.AdamW``).
        fused (bool | None): None (default) = fused when :func:`fused_adamw_supported`,
            else torch's default; True / False force it. Every other argument as
            ``torch.optim.AdamW``.

    Note:
        Parameters moved to another device after the optimizer is built (mmengine builds
        it after the model is on its device) keep the choice made at build time.
    """

    def __init__(self, params, *args, fused=None, **kwargs):
        # mmengine's optimizer constructor hands its parameter groups over as ConfigDicts,
        # which torch.compile (mmengine's ``compile`` config) cannot trace: plain dicts
        params = [dict(p) if isinstance(p, dict) else p for p in params]
        if fused is None:
            fused = fused_adamw_supported(_tensors(params))
        if fused:
            kwargs['foreach'] = False
        super().__init__(params, *args, fused=bool(fused) or None, **kwargs)
        self._fused_choice = bool(fused)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load an ``AdamW`` / ``FusedAdamW`` state; keep this optimizer's kernel choice
        (the saved groups carry the ``fused`` flag of the run that wrote them)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group['fused'] = self._fused_choice or None
            if self._fused_choice:
                group['foreach'] = False
