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
* ``norm`` is ``norm_cfg`` (default BN, the paper's "Batch Normalization"). After GAP the
  tensor is B×C×1×1, so a BatchNorm in training mode normalises each channel over the B
  samples of the step only. With B = 2 it outputs exactly ±γ+β whatever the input (each
  sample's gate then says only on which side of the other sample it lies), and evaluation,
  which uses the running statistics, computes a different function. So:

  - **the paper's recipe** (8 GPUs × 1 image) uses SyncBN: 8 samples per statistic;
  - **every configuration with fewer than about 8 samples per BN** (one GPU with 2 images,
    the tiny / quick-start configs) uses ``dict(type='GN', num_groups=1)``
    (:data:`PER_SAMPLE_NORM`): a LayerNorm over the C channels of the pooled vector of
    each sample, with a per-channel affine. It is computed per sample, so a sample's gate
    does not depend on the other samples of the batch, and training and evaluation compute
    the same function. Why not "no norm" (SE-style convs with bias, the function BN
    computes at test time): the gate input ``X = F_i + V_i`` carries the Swin residual
    stream, whose scale grows with depth and with pretraining; a norm keeps the logits of
    σ(·) and the additive term CA_2 at unit scale whatever that scale is, as BN does. What
    the per-sample norm gives up: it removes each sample's mean and scale over channels,
    so a gate cannot open or close *all* channels of one sample together (only relative
    channel weights and the learned per-channel β remain). Parameter count is the same as
    BN (γ, β per channel). Other GN groupings (``num_groups`` dividing both C_i and
    C_i / ``reduction``) are allowed.
  - A BatchNorm after GAP that trains on fewer than 4 samples per statistic (batch ×
    processes for SyncBN) logs one warning naming ``model.backbone.norm_cfg``; with 1
    sample it raises (BN cannot normalise one value).
* Table 4 variants are the same module with other ``paths``: each entry is ``'channel'``
  (GAP first: one weight per channel, the paper's CAFG) or ``'spatial'`` (no GAP: one weight
  per pixel and channel). ``('channel',)`` = single-path CAFG (no CA_2), ``('spatial',
  'channel')`` = spatial-channel AFG, ``('spatial', 'spatial')`` = spatial-spatial AFG.
* Init: mmcv ``ConvModule`` default (Kaiming for the convs, norms weight 1 / bias 0). No
  zero-init of the last norm: a zero γ would leave every earlier weight of the gate without
  gradient in the first step. At init σ(CA_1) ≈ 0.5 on average.
"""
import logging

import torch
import torch.distributed as dist
from mmcv.cnn import ConvModule
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmseg.registry import MODELS

__all__ = ['ChannelAttention', 'CAFG', 'PER_SAMPLE_NORM', 'tokens_to_map', 'map_to_tokens']

#: The CAFG norm of every configuration with fewer than ~8 samples per BN statistic: a
#: LayerNorm over the channels of each sample's pooled vector (see the module docstring).
PER_SAMPLE_NORM = dict(type='GN', num_groups=1, requires_grad=True)
#: fewer samples than this per BN statistic after GAP → one warning
MIN_POOLED_BN_SAMPLES = 4
_warned_small_pooled_bn = False


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
        norm_cfg (dict): the ``norm`` of Eq 10 (see the module docstring for which).
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
        self._pooled_bn = pooled and any(
            isinstance(m, _BatchNorm) for m in self.modules())

    def _check_pooled_batch(self, x):
        """BN over B×C×1×1 in training: warn (< 4 samples) or raise (1 sample).

        A Python-level shape check (no host-device sync); SyncBN counts every process.
        """
        global _warned_small_pooled_bn
        samples = x.shape[0]
        norm = self.reduce.norm
        if isinstance(norm, torch.nn.SyncBatchNorm) and dist.is_available() \
                and dist.is_initialized():
            samples *= dist.get_world_size(norm.process_group)
        if samples >= MIN_POOLED_BN_SAMPLES:
            return
        fix = ('set model.backbone.norm_cfg=dict(type="GN", num_groups=1) (a per-sample '
               'LayerNorm over the pooled channels, as configs/_base_/models/'
               'mpg_lqgnet_tiny.py), or SyncBN over >= 8 samples (docs/model.md)')
        if samples == 1:
            raise ValueError(
                f'CAFG: {type(norm).__name__} after global average pooling trains on 1 '
                f'sample per step and cannot normalise it; {fix}.')
        if not _warned_small_pooled_bn:
            _warned_small_pooled_bn = True
            print_log(
                f'CAFG: {type(norm).__name__} after global average pooling trains on '
                f'{samples} samples per step (< {MIN_POOLED_BN_SAMPLES}): with 2 it outputs '
                f'±γ+β whatever the input, and evaluation (running statistics) computes '
                f'another function. {fix}.', logger='current', level=logging.WARNING)

    def forward(self, x):
        if self.pooled:
            x = x.mean(dim=(2, 3), keepdim=True)  # GAP
            if self._pooled_bn and self.training:
                self._check_pooled_batch(x)
        return self.expand(self.reduce(x))  # Eq 10


@MODELS.register_module()
class CAFG(BaseModule):
    """Channel Attention Fusion Gate (Eq 10-11) and its Table-4 path variants.

    Args:
        channels (int): C_i.
        reduction (int): channel reduction inside each path. Default 4.
        norm_cfg (dict): norm of Eq 10. Default ``dict(type='BN')`` (the paper's, for
            SyncBN over 8 samples); :data:`PER_SAMPLE_NORM` below ~8 samples per process.
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
