# Copyright (c) mmrefseg contributors. All rights reserved.
"""BSAMSwinTransformer: the MPG-LQGNet image encoder (§3.2, Fig. 2(a)).

A Swin Transformer whose every stage i runs

    V_i            = blocks_i(V'_{i-1})                         B×HW_i×C_i
    F_i, Q_i       = BSAM_i(V_i, L, word_mask)                  (Eq 1-9)
    F_Gi           = gate_i(F_i, V_i)  (CAFG, Eq 10-11; stages 1-3 only)
    V'_i           = F_Gi + V_i  → patch merging → stage i+1

and returns ``(F_1, F_2, F_3, F_4, Q)``: the four maps B×C_i×H_i×W_i (strides 4/8/16/32,
each through the stage's output LayerNorm ``norm{i}``, as mmseg's Swin and LAVT do) and the
queries ``Q`` B×K×C_q of the K = ``len(query_stages)`` stages, in stage order.

Why a subclass of mmseg's ``SwinTransformer`` (mmseg/models/backbones/swin.py): its stages
already downsample at the END of a stage (the official layout: the fusion slots in between
the blocks and the patch merging without re-wiring), its padding handles any input size, all
its arguments (``drop_path_rate``, ``with_cp``, ``frozen_stages``, ``window_size`` ...) keep
working, and checkpoints converted for it (mmseg's swin2mmseg, ours) load as they are. We
override ``forward`` (the fusion needs the text) and ``init_weights`` (checkpoint layout
conversion + explicit fusion init).

Options (paper's reading is the default):

* ``fusion``: ``'bsam'`` (Eq 1-9) or ``'tile'`` (Table 2 baseline: the sentence vector tiled
  and concatenated, no queries; ``Q`` is then an EMPTY B×0×C_q tensor so the output stays a
  5-tuple of tensors for every head).
* ``gate``: one of :data:`~mmrefseg.models.layers.GATE_TYPES` (Table 4), on ``gate_stages``
  (default stages 1-3 = ``(0, 1, 2)``; a gate on the last stage is only allowed with
  ``decoder_feats='gated'``, otherwise it would get no gradient).
* ``query_stages``: stages whose BSAM builds its language direction and returns a query
  (Table 3). The language projections of the other stages are NOT built.
* ``decoder_feats``: ``'fused'`` = F_i (§3.3.1, default) or ``'gated'`` = F_Gi.
* ``norm_cfg``: the norm of the CAFG paths (BN / SyncBN / GN). The Swin's own LayerNorms
  are ``swin_norm_cfg`` (mmseg's ``norm_cfg`` of ``SwinTransformer``).
* ``bsam_norm``: the instance norm of Eq 1 and 3 (``dict(type='IN1d')``; None = off).
* ``attn_impl``: the window attention of the Swin blocks. ``'sdpa'`` (default) runs it
  through ``F.scaled_dot_product_attention`` with the relative position bias and a -inf
  shift mask as the attention mask (:mod:`.window_attention`: no N×N maps kept for the
  backward, no denormals); ``'mmseg'`` keeps mmseg's explicit ``WindowMSA`` (for comparison).
  Both have the same parameters and state dict keys and compute the same function.
* ``lean_ffn`` (default True): the Swin MLPs keep only the GELU's input for the backward and
  recompute the GELU (:mod:`.lean_ffn`; same function, parameters and keys as mmcv's FFN).
* ``with_cp`` (mmseg's argument): activation checkpointing of every Swin block, here
  non-reentrant (``torch.utils.checkpoint(..., use_reentrant=False)``); ``fusion_with_cp``
  does the same for each stage's fusion (BSAM / tile). Less memory, one more forward of
  those parts in the backward (docs/benchmark.md). The gates are never checkpointed: their
  BatchNorm would update its running statistics twice (forward and recomputation).

Pretrained weights: ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` accepts official
Microsoft Swin checkpoints (e.g. ``swin_base_patch4_window12_384_22k.pth``), timm and mmseg
ones: see :mod:`.swin_checkpoint`. Fusion modules are then (and always) initialised by
their own ``init_weights`` (xavier for linear layers, ConvModule default for CAFG).
"""
import torch
from mmseg.models.backbones.swin import SwinTransformer
from torch.utils.checkpoint import checkpoint
from mmseg.registry import MODELS

from ..layers import BSAM, TileConcatFusion, apply_gate, build_gate, check_text_inputs
from ..layers.gates import GATE_TYPES
from ..utils import check_text_values
from .swin_checkpoint import load_swin_pretrained
from .lean_ffn import LeanFFN
from .window_attention import SDPAShiftWindowMSA

__all__ = ['BSAMSwinTransformer']


@MODELS.register_module()
class BSAMSwinTransformer(SwinTransformer):
    """Swin Transformer with BSAM fusion + CAFG gates at every stage (MPG-LQGNet encoder).

    Args:
        text_dims (int): C_t of the word features. Default 768 (BERT-base).
        query_dims (int): C_q of the language queries. Default 256.
        fusion (str): ``'bsam'`` | ``'tile'`` (Table 2). Default ``'bsam'``.
        gate (str | dict): Table-4 gate name, or a config of a registered gate.
            Default ``'cafg'``.
        gate_stages (tuple[int]): stages with a gate. Default ``(0, 1, 2)``.
        gate_reduction (int): channel reduction inside CAFG. Default 4.
        query_stages (tuple[int]): stages that return a language query (Table 3).
            Default ``(0, 1, 2, 3)``. Ignored (no query) with ``fusion='tile'``.
        decoder_feats (str): ``'fused'`` (F_i) | ``'gated'`` (F_Gi). Default ``'fused'``.
        norm_cfg (dict): norm of the CAFG paths. Default ``dict(type='BN')``.
        bsam_norm (dict | None): norm of Eq 1, 3. Default ``dict(type='IN1d')``.
        swin_norm_cfg (dict): the Swin's LayerNorms (``norm_cfg`` of mmseg's Swin).
        attn_impl (str): window attention, ``'sdpa'`` (fused) or ``'mmseg'`` (explicit).
            Default ``'sdpa'``.
        lean_ffn (bool): Swin MLPs that recompute the GELU in the backward. Default True.
        with_cp (bool): checkpoint every Swin block (non-reentrant). Default False.
        fusion_with_cp (bool): checkpoint every stage's fusion (not the gate). Default False.
        **kwargs: every other argument of mmseg's ``SwinTransformer``. ``out_indices`` must
            stay ``(0, 1, 2, 3)``: all four maps are returned.

    Shapes:
        forward(img B×3×H×W, text_feats B×Nt×C_t, text_mask B×Nt) →
        (F_1 B×C×H/4×W/4, F_2 B×2C×H/8×W/8, F_3 B×4C×H/16×W/16, F_4 B×8C×H/32×W/32,
        Q B×K×C_q); sizes are rounded up for inputs that are not multiples of 32.
    """

    def __init__(self,
                 text_dims=768,
                 query_dims=256,
                 fusion='bsam',
                 gate='cafg',
                 gate_stages=(0, 1, 2),
                 gate_reduction=4,
                 query_stages=(0, 1, 2, 3),
                 decoder_feats='fused',
                 norm_cfg=dict(type='BN', requires_grad=True),
                 bsam_norm=dict(type='IN1d'),
                 swin_norm_cfg=dict(type='LN'),
                 attn_impl='sdpa',
                 lean_ffn=True,
                 with_cp=False,
                 fusion_with_cp=False,
                 **kwargs):
        if norm_cfg is not None and str(norm_cfg.get('type')) in ('LN', 'LayerNorm'):
            raise ValueError(
                'BSAMSwinTransformer: norm_cfg is the norm of the CAFG gates (BN / SyncBN / '
                'GN), got LN. The Swin\'s own LayerNorms are set with swin_norm_cfg (this is '
                'the norm_cfg of mmseg\'s SwinTransformer); drop norm_cfg=LN from the config.')
        if attn_impl not in ('sdpa', 'mmseg'):
            raise ValueError(f"BSAMSwinTransformer: attn_impl must be 'sdpa' (fused) or "
                             f"'mmseg' (explicit WindowMSA), got {attn_impl!r}.")
        # mmseg's blocks would checkpoint with the reentrant variant: we do it in forward
        super().__init__(norm_cfg=swin_norm_cfg, with_cp=False, **kwargs)
        self.attn_impl = attn_impl
        self.with_cp = bool(with_cp)
        self.fusion_with_cp = bool(fusion_with_cp)
        self.lean_ffn = bool(lean_ffn)
        for stage in self.stages:  # same parameters and state dict keys, other forwards
            for block in stage.blocks:
                if attn_impl == 'sdpa':
                    block.attn = SDPAShiftWindowMSA(block.attn)
                if self.lean_ffn and LeanFFN.supports(block.ffn):
                    block.ffn = LeanFFN(block.ffn)
        num_stages = len(self.stages)
        if tuple(self.out_indices) != tuple(range(num_stages)):
            raise ValueError(f'BSAMSwinTransformer returns all {num_stages} stage maps; '
                             f'out_indices must be {tuple(range(num_stages))}, got '
                             f'{self.out_indices}.')
        if fusion not in ('bsam', 'tile'):
            raise ValueError(f"BSAMSwinTransformer: fusion must be 'bsam' or 'tile' (Table 2),"
                             f' got {fusion!r}.')
        if decoder_feats not in ('fused', 'gated'):
            raise ValueError(f"BSAMSwinTransformer: decoder_feats must be 'fused' (F_i) or "
                             f"'gated' (F_Gi), got {decoder_feats!r}.")
        for name, stages in (('gate_stages', gate_stages), ('query_stages', query_stages)):
            bad = [s for s in stages if s not in range(num_stages)]
            if bad or len(set(stages)) != len(tuple(stages)):
                raise ValueError(f'BSAMSwinTransformer: {name}={tuple(stages)} must be distinct'
                                 f' stage indices in 0..{num_stages - 1}.')
        if (num_stages - 1 in gate_stages and decoder_feats == 'fused'
                and not (isinstance(gate, str) and gate == 'none')):
            raise ValueError(
                f'BSAMSwinTransformer: a gate on the last stage ({num_stages - 1}) feeds '
                f"nothing with decoder_feats='fused' (no next stage; the decoder reads F_i) and"
                f' would get no gradient. Remove it from gate_stages or use '
                f"decoder_feats='gated'.")
        if isinstance(gate, str) and gate not in GATE_TYPES:
            raise ValueError(f'BSAMSwinTransformer: gate={gate!r} is not one of '
                             f'{sorted(GATE_TYPES)} (Table 4).')

        self.text_dims = text_dims
        self.query_dims = query_dims
        self.fusion = fusion
        self.gate_type = gate
        self.decoder_feats = decoder_feats
        self.query_stages = tuple(sorted(query_stages)) if fusion == 'bsam' else ()
        self.gate_stages = tuple(sorted(gate_stages))

        self.fusions = torch.nn.ModuleList()
        self.gates = torch.nn.ModuleDict()
        for i, channels in enumerate(self.num_features):
            if fusion == 'bsam':
                self.fusions.append(
                    BSAM(channels, text_dims, query_dims, with_query=i in self.query_stages,
                         norm_cfg=bsam_norm))
            else:
                self.fusions.append(TileConcatFusion(channels, text_dims))
            if i in self.gate_stages:
                module = build_gate(gate, channels, norm_cfg=norm_cfg, reduction=gate_reduction)
                if module is not None:
                    self.gates[str(i)] = module

    def train(self, mode=True):
        """mmseg's ``SwinTransformer.train`` returns None; return ``self`` like nn.Module."""
        super().train(mode)
        return self

    @property
    def num_queries(self):
        """K, the number of language queries returned."""
        return len(self.query_stages)

    def init_weights(self):
        """mmseg's Swin init (no checkpoint) or the checkpoint's Swin weights (converted from
        the official / timm layout when detected, see :mod:`.swin_checkpoint`); every fusion /
        gate module gets its own explicit init first, so that an mmrefseg checkpoint holding
        fusion weights overrides it."""
        if self.init_cfg is None:
            super().init_weights()  # trunc-normal Linear, LN 1/0 (mmseg's Swin)
        for m in list(self.fusions) + list(self.gates.values()):
            m.init_weights()  # explicit fusion init (see each module)
        if self.init_cfg is not None:  # last: a file with fusion weights (ours) keeps them
            cfg = self.init_cfg if isinstance(self.init_cfg, dict) else {}
            checkpoint = cfg.get('checkpoint')
            if cfg.get('type') != 'Pretrained' or checkpoint is None:
                raise ValueError(
                    f'BSAMSwinTransformer: init_cfg must be None or dict(type="Pretrained", '
                    f'checkpoint=<path or url>), got {self.init_cfg}.')
            load_swin_pretrained(self, checkpoint, num_stages=len(self.stages))
        self._is_init = True

    def _check_inputs(self, img, text_feats, text_mask):
        if img.dim() != 4:
            raise ValueError(f'BSAMSwinTransformer: img must be B×3×H×W, got '
                             f'{tuple(img.shape)}.')
        check_text_inputs(text_feats, text_mask, self.text_dims, 'BSAMSwinTransformer')
        if text_feats.shape[0] != img.shape[0]:
            raise ValueError(f'BSAMSwinTransformer: {img.shape[0]} images but '
                             f'{text_feats.shape[0]} sentences; repeat the image per sentence.')
        # values: on the host only (no device sync; the preprocessor checked them)
        check_text_values(text_mask, text_mask, None, 'BSAMSwinTransformer')

    @staticmethod
    def _maybe_checkpoint(enabled, fn, *args):
        """``fn(*args)``, through non-reentrant activation checkpointing when ``enabled``
        and a gradient is being recorded."""
        if enabled and torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, img, text_feats, text_mask):
        """img B×3×H×W, text_feats B×Nt×C_t, text_mask B×Nt → (F_1, F_2, F_3, F_4, Q)."""
        self._check_inputs(img, text_feats, text_mask)
        x, hw_shape = self.patch_embed(img)
        if self.use_abs_pos_embed:
            x = x + self.absolute_pos_embed
        x = self.drop_after_pos(x)

        outs, queries = [], []
        for i, stage in enumerate(self.stages):
            for block in stage.blocks:
                x = self._maybe_checkpoint(self.with_cp, block, x, hw_shape)
            vis = x  # V_i, B×HW×C_i
            fused, query = self._maybe_checkpoint(self.fusion_with_cp, self.fusions[i], vis,
                                                  text_feats, text_mask)  # Eq 1-9 / tile
            if query is not None:
                queries.append(query)
            gated = apply_gate(self.gates[str(i)] if str(i) in self.gates else None,
                               fused, vis, hw_shape)  # Eq 10-11 (F_Gi)
            out = fused if self.decoder_feats == 'fused' else gated
            out = getattr(self, f'norm{i}')(out)
            outs.append(out.view(-1, *hw_shape, self.num_features[i]).permute(0, 3, 1,
                                                                             2).contiguous())
            if stage.downsample is not None:
                x, hw_shape = stage.downsample(gated + vis, hw_shape)  # V'_i = F_Gi + V_i
        if queries:
            q = torch.stack(queries, dim=1)  # B×K×C_q
        else:
            q = img.new_zeros((img.shape[0], 0, self.query_dims))
        return tuple(outs) + (q, )
