# Copyright (c) mmrefseg contributors. All rights reserved.
"""Pixel decoder of MPG-LQGNet (paper §3.3.1, Eq 12-13).

Eq 12 as printed, ``F'_Di = Up(W_di([F'_D(i+1); F_i]))``, concatenates maps of different
sizes; we implement the reading whose shapes work (DESIGN.md, as LAVT's decoder does)::

    F'_D4 = F_4                                                   (Eq 12, i = 4)
    F'_Di = W_di([Up(F'_D(i+1)) ; F_i]),  i = 3, 2, 1             (Eq 12)
    F_Di  = GN(W_q,i(F'_Di)),             i = 1..4                (Eq 13)

so ``F_D4, F_D3, F_D2, F_D1`` are at strides 32, 16, 8, 4. ``W_di`` is two 3×3
conv-norm-ReLU layers of width ``channels`` (512, LAVT's width); ``Up`` resizes to the size
of ``F_i`` (2× for even sizes; robust to odd ones), bilinear by default.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import BaseModule
from mmseg.models.utils import resize
from torch import Tensor

__all__ = ['PixelDecoder']


class PixelDecoder(BaseModule):
    """Top-down decoder over the four fused encoder maps (Eq 12) + projections (Eq 13).

    Args:
        in_channels (Sequence[int]): channels ``(C_1, C_2, C_3, C_4)`` of ``F_1..F_4``.
        channels (int): hidden width of every ``W_di`` (512).
        out_channels (int | None): ``C_q`` of the projected ``F_Di`` (Eq 13). ``None``
            builds no projection (the plain 'LQPG off' head only needs ``F'_D1``).
        num_convs (int): conv layers in each ``W_di`` (2).
        upsample_mode (str): interpolation of ``Up`` ('bilinear').
        align_corners (bool): for ``Up``.
        norm_cfg (dict): norm of the ``W_di`` convs (BN; SyncBN in the 8-GPU configs).
        proj_norm_cfg (dict): norm after ``W_q`` (GroupNorm with 32 groups, Eq 13).
        act_cfg (dict): activation of the ``W_di`` convs (ReLU).

    Shapes:
        inputs: ``F_i``: B×C_i×H_i×W_i, strides 4, 8, 16, 32.
        returns ``(raw, proj)``: ``raw = [F'_D1, F'_D2, F'_D3, F'_D4]`` with
        ``F'_Di``: B×channels×H_i×W_i (``F'_D4 = F_4``: B×C_4×H_4×W_4) and
        ``proj = [F_D1, F_D2, F_D3, F_D4]``, each B×C_q×H_i×W_i (empty without projection).
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 channels: int = 512,
                 out_channels: int = 256,
                 num_convs: int = 2,
                 upsample_mode: str = 'bilinear',
                 align_corners: bool = False,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN', requires_grad=True),
                 proj_norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
                 act_cfg=dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(init_cfg)
        in_channels = tuple(in_channels)
        if len(in_channels) != 4:
            raise ValueError(f'PixelDecoder: in_channels must list the channels of the four '
                             f'maps F_1..F_4 (strides 4/8/16/32), got {in_channels}.')
        if num_convs < 1:
            raise ValueError(f'PixelDecoder: num_convs must be >= 1, got {num_convs}.')
        self.in_channels = in_channels
        self.channels = channels
        self.out_channels = out_channels
        self.upsample_mode = upsample_mode
        self.align_corners = align_corners

        # W_d3, W_d2, W_d1 (index 0 = W_d1): input [Up(F'_D(i+1)) ; F_i].
        self.fuse_convs = nn.ModuleList()
        for i in range(3):
            above = in_channels[3] if i == 2 else channels  # F'_D4 = F_4 has C_4 channels
            layers = []
            for k in range(num_convs):
                layers.append(
                    ConvModule(above + in_channels[i] if k == 0 else channels, channels, 3,
                               padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                               act_cfg=act_cfg))
            self.fuse_convs.append(nn.Sequential(*layers))

        # W_q,i + GN (Eq 13), one per level.
        self.projs = nn.ModuleList()
        if out_channels is not None:
            groups = proj_norm_cfg.get('num_groups') if proj_norm_cfg else None
            if groups is not None and out_channels % groups:
                raise ValueError(
                    f'PixelDecoder: out_channels (C_q) = {out_channels} is not divisible by '
                    f'the GroupNorm num_groups = {groups}; set proj_norm_cfg.num_groups to a '
                    f'divisor of C_q.')
            for i in range(4):
                c_in = in_channels[3] if i == 3 else channels
                proj = [nn.Conv2d(c_in, out_channels, 1)]
                if proj_norm_cfg is not None:
                    proj.append(build_norm_layer(proj_norm_cfg, out_channels)[1])
                self.projs.append(nn.Sequential(*proj))

    def _up(self, x: Tensor, like: Tensor) -> Tensor:
        return resize(x, size=like.shape[2:], mode=self.upsample_mode,
                      align_corners=self.align_corners if self.upsample_mode in (
                          'bilinear', 'bicubic') else None)

    def forward(self, feats: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        if len(feats) != 4:
            raise ValueError(f'PixelDecoder expects 4 maps F_1..F_4, got {len(feats)}.')
        for i, (f, c) in enumerate(zip(feats, self.in_channels)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f'PixelDecoder: F_{i + 1} has shape {tuple(f.shape)}, '
                                 f'expected B×{c}×H×W (in_channels={self.in_channels}).')
        raw = [None, None, None, feats[3]]  # F'_D4 = F_4 (Eq 12)
        for i in (2, 1, 0):  # F'_D3, F'_D2, F'_D1 (Eq 12)
            x = torch.cat([self._up(raw[i + 1], feats[i]), feats[i]], dim=1)
            raw[i] = self.fuse_convs[i](x)
        proj = [p(r) for p, r in zip(self.projs, raw)]  # F_Di = GN(W_q F'_Di) (Eq 13)
        return raw, proj
