# Copyright (c) mmrefseg contributors. All rights reserved.
"""The fusion gates compared in Table 4, selected by name (X = F_i + V_i).

- ``'cafg'`` (Ours): F ⊙ σ(CA_1(X)) + CA_2(X), both paths after GAP (Eq 10-11).
- ``'single'`` (single-path CAFG): F ⊙ σ(CA_1(X)), the GAP path only.
- ``'spatial_channel'`` (spatial-channel AFG): path 1 without GAP (per-pixel weights),
  path 2 as CAFG.
- ``'spatial_spatial'`` (spatial-spatial AFG): both paths without GAP.
- ``'language_gate'`` (LAVT's Language Gate): F ⊙ tanh(Linear(ReLU(Linear(F)))),
  element-wise.
- ``'none'`` (Table 2 rows 1, 3, 5): F_Gi = F_i, no module is built.

In every case the backbone then feeds ``V'_i = F_Gi + V_i`` on.
"""
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.model.weight_init import xavier_init

from mmseg.registry import MODELS
from .cafg import CAFG

__all__ = ['LanguageGate', 'GATE_TYPES', 'build_gate', 'apply_gate']


@MODELS.register_module()
class LanguageGate(BaseModule):
    """LAVT's Language Gate (Yang et al. 2022): ``F ⊙ tanh(W_2 ReLU(W_1 F))``.

    As in LAVT: two bias-free linear layers of width C_i, element-wise (per pixel and
    channel) weights. Init: xavier-uniform.

    Shapes: forward(fused B×HW×C, vis B×HW×C, hw_shape) → gated B×HW×C (``vis`` unused).
    """

    def __init__(self, channels, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.gate = nn.Sequential(
            nn.Linear(channels, channels, bias=False), nn.ReLU(inplace=True),
            nn.Linear(channels, channels, bias=False), nn.Tanh())

    def init_weights(self):
        if self.init_cfg:
            return super().init_weights()
        for m in self.gate:
            if isinstance(m, nn.Linear):
                xavier_init(m, distribution='uniform')

    def forward(self, fused, vis, hw_shape):
        return fused * self.gate(fused)


# name → CAFG ``paths`` (None: not a CAFG variant)
GATE_TYPES = {
    'cafg': ('channel', 'channel'),
    'single': ('channel', ),
    'spatial_channel': ('spatial', 'channel'),
    'spatial_spatial': ('spatial', 'spatial'),
    'language_gate': None,
    'none': None,
}


def build_gate(gate, channels, norm_cfg=dict(type='BN'), reduction=4):
    """Build the Table-4 gate named ``gate`` for C_i = ``channels``; ``None`` for 'none'.

    ``gate`` may also be a config dict of a registered gate (``channels`` is filled in).
    """
    if isinstance(gate, dict):
        cfg = dict(gate)
        cfg.setdefault('channels', channels)
        return MODELS.build(cfg)
    if gate not in GATE_TYPES:
        raise ValueError(f'gate={gate!r} is not one of {sorted(GATE_TYPES)} (Table 4) '
                         f'nor a config dict of a registered gate.')
    if gate == 'none':
        return None
    if gate == 'language_gate':
        return LanguageGate(channels)
    return CAFG(channels, reduction=reduction, norm_cfg=norm_cfg, paths=GATE_TYPES[gate])


def apply_gate(gate_module, fused, vis, hw_shape):
    """F_Gi for an optional gate module (``None`` = identity)."""
    if gate_module is None:
        return fused
    return gate_module(fused, vis, hw_shape)

