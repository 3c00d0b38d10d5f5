# Copyright (c) mmrefseg contributors. All rights reserved.
"""``LQPGHead``: the MPG-LQGNet decoder (paper §3.3, Eq 12-17) as an mmseg decode head.

    F'_D1..F'_D4, F_D1..F_D4 = PixelDecoder(F_1..F_4)                       (Eq 12-13)
    m_p^1..m_p^{N_l}        = LQPG([F_D2, F_D3, F_D4], Q)                   (Eq 14-15)
    Y = W_m([F_D1 ; m_p^{N_l} ; F_o])     (CoordConv 1×1, F_o ∈ [-1, 1]²)   (Eq 16)
    L = L_mask + λ · (1/N_l) Σ_l L_prior^l                                  (Eq 17)

The head reads the four maps at ``in_index`` (strides 4/8/16/32) and the language
queries ``Q = inputs[-1]`` (B×K×C_q), so it also runs on any backbone that returns four maps
followed by a query tensor. Options for the paper's ablations:

* ``num_layers`` = N_l (Table 5), ``prior_loss_weight`` = λ (0 → no prior loss and only the
  last layer's prior head is built, Table 2 'w/o L_prior'),
* ``query_source`` (Table 3): ``'all'`` uses the K = ``num_queries`` queries the backbone
  returns; a tuple of increasing indices selects some of them. Under ``RefEncoderDecoder``
  with a backbone that has ``query_stages`` the selection is routed to the backbone (only
  those stages build a query branch, so none is left without gradient); with another
  backbone the head selects, and the backbone's unused query branches are its own,
* ``use_coord`` (Table 6): the 2-channel coordinate map of Eq 16,
* ``use_lqpg=False`` (Table 2 rows 1-4): LAVT's plain decoder, ``Y = Conv1×1(F'_D1)``; no
  W_q projections, no LQPG, no priors, no queries needed (``use_coord`` must be False).

Loss terms and keys (mmengine sums every key containing ``loss``, the segmentor adds
``decode.``). The FIRST entry of ``loss_decode`` is the loss of Eq 17 (cross-entropy by
default); every further entry is an extra term, logged under its own ``loss_name``:

* Eq 17: ``loss_mask`` (L_mask on Y) and ``loss_prior_l{i}`` for i = 0..N_l-1 (L_prior on
  each layer's prior, already multiplied by λ/N_l);
* an extra loss named ``loss_x`` (e.g. ``DiceLoss(loss_name='loss_dice')``): ``loss_x`` on Y
  and, if the priors take it, ``loss_x_prior_l{i}`` (also × λ/N_l);
* ``acc_seg`` (not a loss).

Which terms the priors take is ``prior_losses``: ``'first'`` (default: the Eq-17 loss only,
as the paper supervises the priors), ``'all'``, or a list of loss names. The optimised total
is exactly Eq 17 plus the configured extra terms, and each is logged separately.
"""
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.losses import CrossEntropyLoss
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from torch import Tensor

from ..losses import accuracy, non_ignored_count
from .lqpg import LQPG
from .pixel_decoder import PixelDecoder

__all__ = ['LQPGHead', 'coord_map']


def coord_map(b: int, h: int, w: int, device=None, dtype=torch.float32) -> Tensor:
    """The CoordConv map F_o of Eq 16: B×2×H×W, channel 0 = x, channel 1 = y, in [-1, 1]."""
    y = torch.linspace(-1, 1, h, device=device, dtype=dtype)
    x = torch.linspace(-1, 1, w, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(y, x, indexing='ij')
    return torch.stack([xx, yy])[None].expand(b, 2, h, w)


@MODELS.register_module()
class LQPGHead(BaseDecodeHead):
    """Pixel decoder + LQPG + CoordConv mask head of MPG-LQGNet.

    Args:
        in_channels (Sequence[int]): channels of F_1..F_4, e.g. (128, 256, 512, 1024).
        channels (int): C_q, the LQPG / query width (256).
        decoder_channels (int): width of the pixel decoder convs W_di (512).
        decoder_num_convs (int): conv layers per W_di (2).
        num_queries (int): K queries the backbone returns (4, one per stage).
        query_source ('all' | Sequence[int]): which of them the LQPG uses (Table 3).
        num_layers (int): N_l (6). num_heads (int): h (8). ffn_channels (int): 2048.
        prior_loss_weight (float): λ of Eq 17 (0.1).
        use_coord (bool): CoordConv in the mask head (Eq 16).
        use_lqpg (bool): False = LAVT's plain upsampling-conv head (Table 2).
        attn_maps (str): 'post_softmax' | 'pre_softmax' maps feed the priors.
        attn_scale (str): 'num_keys' | 'none' (see :mod:`.lqpg`).
        prior_channels (int): per-level linear width of the prior heads (32).
        upsample_mode (str): interpolation in the pixel decoder ('bilinear').
        proj_norm_cfg (dict): norm after W_q (GN with 32 groups, Eq 13).
        lqpg_dropout (float): dropout inside the LQPG layers (0).
        norm_cfg (dict): norm of the pixel-decoder convs (BN; SyncBN for 1 image/GPU).
        num_classes (int): 2 (background, referent); the head predicts softmax logits.
        dropout_ratio (float): dropout before the mask head conv (0).
        loss_decode (dict | list[dict]): the first entry is the loss of Eq 17 (L_mask and
            every L_prior; CrossEntropyLoss with ``avg_non_ignore=True``, i.e. torch's
            mean); further entries are extra terms on Y, logged under their ``loss_name``.
        prior_losses ('first' | 'all' | Sequence[str]): the ``loss_decode`` terms the
            priors take: ``'first'`` (the Eq-17 loss only, default), ``'all'``, or the
            ``loss_name`` of each (the first entry's name selects the Eq-17 loss).

    Shapes:
        inputs: tuple whose ``in_index`` entries are F_i (B×C_i×H/s_i×W/s_i, s = 4, 8, 16,
        32) and whose last entry is Q (B×K×C_q).
        ``forward`` returns ``(Y, priors)``: Y B×2×H/4×W/4 and a list of priors, one per
        layer with a prior head (N_l, or 1 when λ = 0, or 0 with ``use_lqpg=False``),
        each B×2×H/4×W/4.
    """

    def __init__(self,
                 in_channels: Sequence[int] = (128, 256, 512, 1024),
                 channels: int = 256,
                 *,
                 decoder_channels: int = 512,
                 decoder_num_convs: int = 2,
                 num_queries: int = 4,
                 query_source: Union[str, Sequence[int]] = 'all',
                 num_layers: int = 6,
                 num_heads: int = 8,
                 ffn_channels: int = 2048,
                 prior_loss_weight: float = 0.1,
                 use_coord: bool = True,
                 use_lqpg: bool = True,
                 attn_maps: str = 'post_softmax',
                 attn_scale: str = 'num_keys',
                 prior_channels: int = 32,
                 upsample_mode: str = 'bilinear',
                 proj_norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
                 lqpg_dropout: float = 0.0,
                 num_classes: int = 2,
                 in_index: Sequence[int] = (0, 1, 2, 3),
                 input_transform: str = 'multiple_select',
                 dropout_ratio: float = 0.0,
                 norm_cfg=dict(type='BN', requires_grad=True),
                 prior_losses: Union[str, Sequence[str]] = 'first',
                 **kwargs):
        in_channels = tuple(in_channels)
        in_index = tuple(in_index)
        if len(in_channels) != 4 or len(in_index) != 4:
            raise ValueError(f'LQPGHead needs four maps at strides 4/8/16/32: got '
                             f'in_channels={in_channels}, in_index={in_index}.')
        if input_transform != 'multiple_select':
            raise ValueError(f"LQPGHead: input_transform must be 'multiple_select', got "
                             f'{input_transform!r}.')
        kwargs.setdefault('out_channels', num_classes)
        # cross-entropy averaged over non-ignored pixels, as torch's (and LAVT's) default
        kwargs.setdefault('loss_decode', dict(type='CrossEntropyLoss', use_sigmoid=False,
                                              loss_weight=1.0, avg_non_ignore=True))
        if kwargs['out_channels'] != num_classes:
            raise ValueError(f'LQPGHead predicts {num_classes}-way softmax logits (Eq 16); '
                             f"out_channels={kwargs['out_channels']} is not supported.")
        if prior_loss_weight < 0:
            raise ValueError(f'LQPGHead: prior_loss_weight (λ) must be >= 0, '
                             f'got {prior_loss_weight}.')
        if not use_lqpg and use_coord:
            raise ValueError('LQPGHead: use_lqpg=False builds the plain LAVT head '
                             'Y = Conv1x1(F\'_D1), which has no CoordConv; set use_coord=False '
                             'too.')
        super().__init__(in_channels, channels, num_classes=num_classes, in_index=in_index,
                         input_transform=input_transform, dropout_ratio=dropout_ratio,
                         norm_cfg=norm_cfg, **kwargs)
        if query_source != 'all':
            query_source = tuple(int(i) for i in query_source)
            if not query_source or any(not 0 <= i < num_queries for i in query_source):
                raise ValueError(f"LQPGHead: query_source must be 'all' or indices in "
                                 f'[0, num_queries={num_queries}), got {query_source}.')
        self._init_loss_keys(prior_losses)
        self.query_source = query_source
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.prior_loss_weight = float(prior_loss_weight)
        self.use_coord = use_coord
        self.use_lqpg = use_lqpg

        self.pixel_decoder = PixelDecoder(
            in_channels, decoder_channels, channels if use_lqpg else None,
            num_convs=decoder_num_convs, upsample_mode=upsample_mode,
            align_corners=self.align_corners, conv_cfg=self.conv_cfg, norm_cfg=norm_cfg,
            proj_norm_cfg=proj_norm_cfg, act_cfg=self.act_cfg)
        if use_lqpg:
            k = num_queries if query_source == 'all' else len(query_source)
            self.lqpg = LQPG(channels, k, num_layers, num_heads, ffn_channels,
                             attn_maps=attn_maps, attn_scale=attn_scale,
                             prior_layers='all' if self.prior_loss_weight > 0 else 'last',
                             prior_channels=prior_channels, num_classes=num_classes,
                             dropout=lqpg_dropout, align_corners=self.align_corners)
            # W_m of Eq 16 over [F_D1 ; m_p ; F_o].
            self.conv_seg = nn.Conv2d(channels + num_classes + (2 if use_coord else 0),
                                      self.out_channels, 1)
        else:
            self.lqpg = None
            self.conv_seg = nn.Conv2d(decoder_channels, self.out_channels, 1)

    def _queries(self, inputs: Sequence[Tensor]) -> Tensor:
        q = inputs[-1]
        if not isinstance(q, Tensor) or q.dim() != 3:
            shape = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
            raise ValueError(
                f'LQPGHead reads the language queries Q (B×K×C_q) from inputs[-1], got '
                f'{shape}. The backbone must return (F_1, F_2, F_3, F_4, Q) '
                f'(e.g. BSAMSwinTransformer); a backbone without queries needs use_lqpg=False.')
        if self.query_source == 'all':
            return q
        if q.shape[1] <= max(self.query_source):
            raise ValueError(f'LQPGHead: query_source={self.query_source} but the backbone '
                             f'returned only {q.shape[1]} queries.')
        return q[:, list(self.query_source)]

    def forward(self, inputs: Sequence[Tensor],
                all_priors: bool = True) -> Tuple[Tensor, List[Tensor]]:
        """``(Y, priors)``; ``all_priors=False`` computes only the last layer's prior (the
        one Eq 16 reads), so ``priors`` has one entry: what prediction needs."""
        feats = self._transform_inputs(inputs)
        raw, proj = self.pixel_decoder(feats)  # Eq 12-13
        if not self.use_lqpg:
            return self.cls_seg(raw[0]), []
        f_d1 = proj[0]
        priors = self.lqpg(proj[1:], self._queries(inputs), out_size=f_d1.shape[2:],
                           last_only=not all_priors)
        x = [f_d1, priors[-1]]  # the last layer's m_p feeds the mask head
        if self.use_coord:
            b, _, h, w = f_d1.shape
            x.append(coord_map(b, h, w, device=f_d1.device, dtype=f_d1.dtype))
        return self.cls_seg(torch.cat(x, dim=1)), priors  # Y = W_m([F_D1; m_p; F_o]) (Eq 16)

    # ---------------------------------------------------------------- loss (Eq 17)
    def _loss_terms(self) -> List[nn.Module]:
        return list(self.loss_decode) if isinstance(self.loss_decode,
                                                    nn.ModuleList) else [self.loss_decode]

    def _init_loss_keys(self, prior_losses) -> None:
        """Log key of each ``loss_decode`` term on Y, and which terms the priors take."""
        names = [str(loss.loss_name) for loss in self._loss_terms()]
        self.mask_loss_keys = ['loss_mask'] + names[1:]  # Eq 17's L_mask, then the extras
        if len(set(names)) != len(names) or any(
                n == 'loss_mask' or n.startswith('loss_prior') for n in names[1:]):
            raise ValueError(
                f'LQPGHead: every loss_decode term needs its own loss_name, and the terms after '
                f'the first (the Eq-17 loss, logged as loss_mask / loss_prior_l*) not '
                f'"loss_mask" nor "loss_prior*"; got loss names {names}.')
        if prior_losses == 'first':
            idx = [0]
        elif prior_losses == 'all':
            idx = list(range(len(names)))
        elif isinstance(prior_losses, (list, tuple)) and all(
                isinstance(n, str) for n in prior_losses):
            unknown = [n for n in prior_losses if n not in names]
            if unknown:
                raise ValueError(f'LQPGHead: prior_losses names {unknown}, which are not '
                                 f'loss_name of any loss_decode term ({names}).')
            idx = sorted({names.index(n) for n in prior_losses})
        else:
            raise ValueError(f"LQPGHead: prior_losses must be 'first', 'all' or a list of "
                             f'loss names from {names}, got {prior_losses!r}.')
        self.prior_loss_terms = tuple(idx)

    def _prior_key(self, term: int, layer: int) -> str:
        base = 'loss_prior' if term == 0 else f'{self.mask_loss_keys[term]}_prior'
        return f'{base}_l{layer}'

    @staticmethod
    def _avg_factor(loss, valid_count: Tensor) -> dict:
        """mmseg's softmax ``CrossEntropyLoss(avg_non_ignore=True)`` counts the valid
        pixels with ``.item()`` (a host-device sync per call); give it the count as a
        device tensor (the same number, the same division)."""
        if (isinstance(loss, CrossEntropyLoss) and loss.avg_non_ignore
                and loss.class_weight is None and not loss.use_sigmoid
                and not loss.use_mask and loss.reduction == 'mean'):
            return dict(avg_factor=valid_count)
        return {}

    def _term(self, loss, logits: Tensor, label: Tensor, valid_count: Tensor) -> Tensor:
        """One ``loss_decode`` term on ``logits`` (the valid-pixel count from the device)."""
        return loss(logits, label, weight=None, ignore_index=self.ignore_index,
                    **self._avg_factor(loss, valid_count))

    def loss_by_feat(self, seg_logits: Tuple[Tensor, List[Tensor]],
                     batch_data_samples) -> dict:
        """``loss_mask`` + ``loss_prior_l{i}`` (×λ/N_l each) + one key per extra term (on Y,
        and on the priors that take it) + ``acc_seg``."""
        y, priors = seg_logits if isinstance(seg_logits, (tuple, list)) else (seg_logits, [])
        seg_label = self._stack_batch_gt(batch_data_samples)
        size = seg_label.shape[2:]
        seg_label = seg_label.squeeze(1)
        terms = self._loss_terms()
        y = resize(y, size=size, mode='bilinear', align_corners=self.align_corners)
        valid = non_ignored_count(seg_label, self.ignore_index)  # on the device
        losses = {}
        for key, loss in zip(self.mask_loss_keys, terms):  # L_mask (+ extra terms on Y)
            losses[key] = self._term(loss, y, seg_label, valid)
        if self.prior_loss_weight > 0 and priors:
            scale = self.prior_loss_weight / len(priors)  # λ / N_l
            for i, p in enumerate(priors):
                p = resize(p, size=size, mode='bilinear', align_corners=self.align_corners)
                for t in self.prior_loss_terms:  # λ/N_l · L_prior^l (Eq 17)
                    losses[self._prior_key(t, i)] = scale * self._term(terms[t], p, seg_label,
                                                                       valid)
        # mmseg's accuracy indexes with a boolean mask (a sync); the same value on device
        losses['acc_seg'] = accuracy(y, seg_label, ignore_index=self.ignore_index)
        return losses

    # ---------------------------------------------------------------- inference
    def predict(self, inputs, batch_img_metas: List[dict], test_cfg=None) -> Tensor:
        """Logits Y at the input (padded) size, B×2×H×W. The intermediate mask priors are
        not computed (nothing reads them; :meth:`predict_with_priors` returns them)."""
        y, _ = self.forward(inputs, all_priors=False)
        return self.predict_by_feat(y, batch_img_metas)

    def predict_with_priors(self, inputs, batch_img_metas: List[dict]) -> Tuple[Tensor, Tensor]:
        """Logits and foreground probabilities of every prior, resized to the input size.

        Returns:
            ``(seg_logits, priors)``: B×2×H×W and B×N×H×W with N the number of priors
            (``softmax(prior)[:, 1]``), or ``None`` when the head has no priors.
        """
        y, priors = self.forward(inputs)
        seg_logits = self.predict_by_feat(y, batch_img_metas)
        if not priors:
            return seg_logits, None
        probs = torch.stack([p.softmax(dim=1)[:, 1] for p in priors], dim=1)
        return seg_logits, self.predict_by_feat(probs, batch_img_metas)
