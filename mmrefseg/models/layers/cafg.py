# Copyright (c) mmrefseg contributors. All rights reserved.
"""Channel Attention Fusion Gate (CAFG), paper §3.2.3, Eq 10-11, and its Table-4 relatives.

    X    = F_i + V_i
    CA(X) = norm(Conv_2(ReLU(norm(Conv_1(GAP(X))))))              (Eq 10)
    F_Gi = F_i ⊙ σ(CA_1(X)) ⊕ CA_2(X)                             (Eq 11)

and the backbone feeds ``V'_i = F_Gi + V_i`` to patch merging / the next stage.

Choices the paper leaves open:

* ``Conv_1`` reduces C_i → C_i / ``reduction`` (default 4, as the multi-scale channel
  attention of Dai et al. 2021 that the paper cites), ``Conv_2`` restores C_i; both 1×1
  without bias (a norm follows each).
* ``norm`` is ``norm_cfg`` (default BN). After GAP a BN normalises B×C×1×1 over the batch
  only, so it needs ≥ 2 samples per process in training: SyncBN in multi-GPU configs with
  one image per GPU, BN with ≥ 2 images per process otherwise, GN where neither holds.
* Table 4 variants are the same module with other ``paths``: each entry is ``'channel'``
  (GAP first: one weight per channel, the paper's CAFG) or ``'spatial'`` (no GAP: one weight
  per pixel and channel). ``('channel',)`` = single-path CAFG (no CA_2), ``('spatial',
  'channel')`` = spatial-channel AFG, ``('spatial', 'spatial')`` = spatial-spatial AFG.
* Init: mmcv ``ConvModule`` default (Kaiming for the convs, norms weight 1 / bias 0). No
  zero-init of the last norm: a zero γ would leave every earlier weight of the gate without
  gradient in the first step. At init σ(CA_1) ≈ 0.5 on average.
"""
import torch
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule

from mmseg.registry import MODELS

__all__ = ['ChannelAttention', 'CAFG', 'tokens_to_map', 'map_to_tokens']


def tokens_to_map(x, hw_shape):
    """B×HW×C tokens → B×C×H×W map."""
    B, _, C = x.shape
    return x.transpose(1, 2).reshape(B, C, *hw_shape)


def map_to_tokens(x):
    """B×C×H×W map → B×HW×C tokens."""
    return x.flatten(2).transpose(1, 2)


class ChannelAttention(BaseModule):
    """One path CA of Eq 10: [GAP] → Conv1×1-norm-ReLU → Conv1×1-norm.

    Args:
        channels (int): C_i.
        reduction (int): hidden width C_i // reduction.
        norm_cfg (dict): the ``norm`` of Eq 10.
        pooled (bool): apply GAP first (``'channel'`` path, B×C×1×1 output) or not
            (``'spatial'`` path, B×C×H×W output).

    Shapes: forward(x B×C×H×W) → B×C×1×1 (pooled) or B×C×H×W.
    """

    def __init__(self, channels, reduction=4, norm_cfg=dict(type='BN'), pooled=True,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if channels // reduction < 1:
            raise ValueError(f'ChannelAttention: channels={channels} // reduction='
                             f'{reduction} is 0; use a smaller reduction.')
        self.pooled = pooled
        hidden = channels // reduction
        self.reduce = ConvModule(channels, hidden, 1, norm_cfg=norm_cfg,
                                 act_cfg=dict(type='ReLU'))  # ReLU(norm(Conv_1(.)))
        self.expand = ConvModule(hidden, channels, 1, norm_cfg=norm_cfg,
                                 act_cfg=None)  # norm(Conv_2(.))

    def forward(self, x):
        if self.pooled:
            x = x.mean(dim=(2, 3), keepdim=True)  # GAP
        return self.expand(self.reduce(x))  # Eq 10


@MODELS.register_module()
class CAFG(BaseModule):
    """Channel Attention Fusion Gate (Eq 10-11) and its Table-4 path variants.

    Args:
        channels (int): C_i.
        reduction (int): channel reduction inside each path. Default 4.
        norm_cfg (dict): norm of Eq 10. Default ``dict(type='BN')``.
        paths (tuple[str]): kinds of CA_1 (sigmoid weight) and, if present, CA_2 (additive
            term); each ``'channel'`` or ``'spatial'``. Default ``('channel', 'channel')``.

    Shapes: forward(fused B×HW×C, vis B×HW×C, hw_shape (H, W)) → gated B×HW×C.
    """

    def __init__(self, channels, reduction=4, norm_cfg=dict(type='BN'),
                 paths=('channel', 'channel'), init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        paths = tuple(paths)
        if len(paths) not in (1, 2) or any(p not in ('channel', 'spatial') for p in paths):
            raise ValueError(f'CAFG: paths must be 1 or 2 of "channel"/"spatial", got {paths}')
        self.paths = paths
        self.scale_path = ChannelAttention(channels, reduction, norm_cfg,
                                           pooled=paths[0] == 'channel')  # CA_1
        self.shift_path = ChannelAttention(
            channels, reduction, norm_cfg,
            pooled=paths[1] == 'channel') if len(paths) == 2 else None  # CA_2

    def init_weights(self):
        """ConvModule default (Kaiming conv, norm 1/0); a user ``init_cfg`` takes precedence."""
        if self.init_cfg:
            return super().init_weights()
        for m in self.modules():
            if isinstance(m, ConvModule):
                m.init_weights()

    def forward(self, fused, vis, hw_shape):
        f = tokens_to_map(fused, hw_shape)
        x = f + tokens_to_map(vis, hw_shape)  # X = F_i + V_i
        out = f * torch.sigmoid(self.scale_path(x))  # F_i ⊙ σ(CA_1(X))   (Eq 11)
        if self.shift_path is not None:
            out = out + self.shift_path(x)  # ⊕ CA_2(X)                     (Eq 11)
        return map_to_tokens(out)
