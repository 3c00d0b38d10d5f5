# Copyright (c) mmrefseg contributors. All rights reserved.
"""Language Query guided mask Prior Generator (LQPG, paper §3.3.2, Eq 14-15).

Keys are the flattened low-resolution decoder maps plus a sine position embedding::

    F_k = Concat(flatten(F_D2, F_D3, F_D4)) + e_p                   (Eq 14)
    A, Q' = MHCA(F_k, Q)                                            (Eq 15)
    Q1 = LN(Q + Q'),  Q2 = LN(Q1 + FFN(Q1))                         (§3.3.2)

Values are the same maps without ``e_p``. Each layer keeps its attention map ``A``
(B×K·h×N_p, ``N_p = HW/64 + HW/256 + HW/1024``) and turns it into a mask prior: split ``A``
by level and unflatten, a linear (1×1) layer per level over its ``K·h`` channels, upsample
to 1/8 (the size of ``F_D2``), concatenate, a linear layer to ``num_classes`` and a 2×
upsample to 1/4 (the size of ``F_D1``) → ``m_p`` (logits, not detached).

Open choices (defaults first; all are options of :class:`LQPG`):

* ``attn_maps='post_softmax'`` (the attention weights; ``'pre_softmax'`` = the scaled logits).
* ``attn_scale='num_keys'``: post-softmax maps are multiplied by ``N_p`` before the prior
  layers, so a uniform map is 1 instead of 1/N_p ≈ 2.4e-4 at 448². This is a fixed
  re-parametrisation of the first prior linear (same function class) that keeps the prior
  logits O(1) at init and trainable at lr 1.5e-5 with AdamW; ``'none'`` = literal maps.
* ``prior_channels=32``: output width of the per-level linear (the paper gives none).
* the sine embedding is 2-D per level (DETR style, normalised coordinates), on keys only.
* the last layer's query update (value/output projections, FFN, norms) feeds nothing and
  is not built; with ``prior_layers='last'`` (used for λ = 0) only the last layer gets a
  prior head. Neither leaves a parameter without gradient (DDP needs no
  ``find_unused_parameters``).
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

__all__ = ['sine_position_embedding', 'LQPGLayer', 'MaskPriorHead', 'LQPG']


def sine_position_embedding(h: int, w: int, channels: int, temperature: float = 10000.,
                            device=None, dtype=torch.float32) -> Tensor:
    """2-D sine position embedding (DETR), normalised coordinates in (0, 2π].

    Returns:
        Tensor: HW×channels (first half encodes y, second half x; row-major positions).
    """
    if channels % 4:
        raise ValueError(f'sine_position_embedding: channels must be divisible by 4, '
                         f'got {channels} (set channels / C_q to a multiple of 4).')
    npf = channels // 2
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, device=device, dtype=torch.float32)
    x = torch.arange(1, w + 1, device=device, dtype=torch.float32)
    y = y / (h + eps) * scale
    x = x / (w + eps) * scale
    dim_t = torch.arange(npf, device=device, dtype=torch.float32)
    dim_t = temperature**(2 * torch.div(dim_t, 2, rounding_mode='floor') / npf)
    py = y[:, None] / dim_t  # H×npf
    px = x[:, None] / dim_t  # W×npf
    py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
    px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat([py[:, None, :].expand(h, w, npf), px[None, :, :].expand(h, w, npf)],
                    dim=2)
    return pos.reshape(h * w, channels).to(dtype)


class LQPGLayer(BaseModule):
    """One LQPG layer: multi-head cross-attention with the map kept, then FFN (Eq 15).

    Args:
        embed_dims (int): C_q.
        num_heads (int): h.
        ffn_channels (int): hidden width of the FFN (2048).
        update_query (bool): build the query update (V/out projections, FFN, LayerNorms).
            ``False`` for the last layer, whose updated queries feed nothing.
        attn_maps (str): 'post_softmax' or 'pre_softmax' (which map is returned).
        dropout (float): dropout on attention output and FFN (0).

    Shapes:
        query: B×K×C, key: B×N×C (with position), value: B×N×C.
        returns ``(query', A)``: B×K×C (``None`` without update) and B×K×h×N.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, ffn_channels: int = 2048,
                 update_query: bool = True, attn_maps: str = 'post_softmax',
                 dropout: float = 0.0, init_cfg=None):
        super().__init__(init_cfg)
        if embed_dims % num_heads:
            raise ValueError(f'LQPGLayer: embed_dims (C_q) = {embed_dims} must be divisible '
                             f'by num_heads = {num_heads}.')
        if attn_maps not in ('post_softmax', 'pre_softmax'):
            raise ValueError(f"LQPGLayer: attn_maps must be 'post_softmax' or 'pre_softmax', "
                             f'got {attn_maps!r}.')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.update_query = update_query
        self.attn_maps = attn_maps
        self.q_proj = nn.Linear(embed_dims, embed_dims)
        self.k_proj = nn.Linear(embed_dims, embed_dims)
        if update_query:
            self.v_proj = nn.Linear(embed_dims, embed_dims)
            self.out_proj = nn.Linear(embed_dims, embed_dims)
            self.norm1 = nn.LayerNorm(embed_dims)
            self.ffn = nn.Sequential(
                nn.Linear(embed_dims, ffn_channels), nn.ReLU(inplace=True),
                nn.Dropout(dropout), nn.Linear(ffn_channels, embed_dims))
            self.norm2 = nn.LayerNorm(embed_dims)
            self.dropout = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dims).transpose(1, 2)  # B×h×n×d

    def forward(self, query: Tensor, key: Tensor,
                value: Tensor) -> Tuple[Optional[Tensor], Tensor]:
        q = self._heads(self.q_proj(query))  # B×h×K×d
        k = self._heads(self.k_proj(key))  # B×h×N×d
        logits = q @ k.transpose(-2, -1) * self.head_dims**-0.5  # B×h×K×N
        attn = logits.softmax(dim=-1)
        amap = attn if self.attn_maps == 'post_softmax' else logits
        amap = amap.transpose(1, 2)  # B×K×h×N
        if not self.update_query:
            return None, amap
        v = self._heads(self.v_proj(value))  # B×h×N×d
        out = (attn @ v).transpose(1, 2).flatten(2)  # B×K×C
        q1 = self.norm1(query + self.dropout(self.out_proj(out)))  # Q1 = LN(Q + MHCA)
        q2 = self.norm2(q1 + self.dropout(self.ffn(q1)))  # Q2 = LN(Q1 + FFN(Q1))
        return q2, amap


class MaskPriorHead(BaseModule):
    """Attention maps of one layer → mask prior ``m_p`` (§3.3.2, after Eq 15).

    Args:
        in_channels (int): K·h, the channels of the attention map.
        prior_channels (int): width of the per-level linear (32).
        num_classes (int): 2.
        num_levels (int): 3 (F_D2, F_D3, F_D4).

    Shapes:
        maps: list of per-level maps B×K·h×H_l×W_l (strides 8, 16, 32).
        returns m_p: B×num_classes×``out_size`` (stride 4).
    """

    def __init__(self, in_channels: int, prior_channels: int = 32, num_classes: int = 2,
                 num_levels: int = 3, align_corners: bool = False, init_cfg=None):
        super().__init__(init_cfg)
        self.align_corners = align_corners
        self.level_linears = nn.ModuleList(
            nn.Conv2d(in_channels, prior_channels, 1) for _ in range(num_levels))
        self.fuse = nn.Conv2d(prior_channels * num_levels, num_classes, 1)

    def forward(self, maps: Sequence[Tensor], out_size: Sequence[int]) -> Tensor:
        size = maps[0].shape[2:]  # 1/8
        a = [
            F.interpolate(lin(m), size=size, mode='bilinear', align_corners=self.align_corners)
            if m.shape[2:] != size else lin(m) for lin, m in zip(self.level_linears, maps)
        ]
        prior = self.fuse(torch.cat(a, dim=1))  # A_cat → linear → num_classes at 1/8
        return F.interpolate(prior, size=tuple(out_size), mode='bilinear',
                             align_corners=self.align_corners)  # 2× → 1/4


class LQPG(BaseModule):
    """N_l LQPG layers with a mask prior per layer (Eq 14-15).

    Args:
        embed_dims (int): C_q (256).
        num_queries (int): K, the number of language queries (4 = one per Swin stage).
        num_layers (int): N_l (6).
        num_heads (int): h (8).
        ffn_channels (int): FFN width (2048).
        attn_maps (str): 'post_softmax' (default) or 'pre_softmax'.
        attn_scale (str): 'num_keys' (default; post-softmax maps × N_p) or 'none'.
        prior_layers (str): 'all' (a prior head per layer, deep supervision) or 'last'.
        prior_channels (int): per-level linear width of the prior heads (32).
        num_classes (int): 2.
        dropout (float): 0.

    Shapes:
        feats: ``[F_D2, F_D3, F_D4]``, each B×C_q×H_l×W_l (strides 8, 16, 32).
        queries: B×K×C_q.
        returns the list of priors (one per layer with a prior head, in layer order),
        each B×num_classes×``out_size``; with ``last_only=True`` only the last layer's
        (the one the mask head reads, Eq 16).
    """

    def __init__(self, embed_dims: int = 256, num_queries: int = 4, num_layers: int = 6,
                 num_heads: int = 8, ffn_channels: int = 2048,
                 attn_maps: str = 'post_softmax', attn_scale: str = 'num_keys',
                 prior_layers: str = 'all', prior_channels: int = 32, num_classes: int = 2,
                 dropout: float = 0.0, align_corners: bool = False, init_cfg=None):
        super().__init__(init_cfg)
        if num_layers < 1:
            raise ValueError(f'LQPG: num_layers (N_l) must be >= 1, got {num_layers}.')
        if prior_layers not in ('all', 'last'):
            raise ValueError(f"LQPG: prior_layers must be 'all' or 'last', got {prior_layers!r}.")
        if attn_scale not in ('num_keys', 'none'):
            raise ValueError(f"LQPG: attn_scale must be 'num_keys' or 'none', got {attn_scale!r}.")
        self.embed_dims = embed_dims
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.attn_maps = attn_maps
        self.attn_scale = attn_scale
        self.layers = nn.ModuleList(
            LQPGLayer(embed_dims, num_heads, ffn_channels, update_query=i < num_layers - 1,
                      attn_maps=attn_maps, dropout=dropout) for i in range(num_layers))
        self.prior_layer_ids = list(range(num_layers)) if prior_layers == 'all' else [
            num_layers - 1]
        self.prior_heads = nn.ModuleDict({
            str(i): MaskPriorHead(num_queries * num_heads, prior_channels, num_classes,
                                  align_corners=align_corners) for i in self.prior_layer_ids
        })

    def forward(self, feats: Sequence[Tensor], queries: Tensor,
                out_size: Sequence[int], last_only: bool = False) -> List[Tensor]:
        if queries.dim() != 3 or queries.shape[1:] != (self.num_queries, self.embed_dims):
            raise ValueError(
                f'LQPG: queries have shape {tuple(queries.shape)}, expected '
                f'B×{self.num_queries}×{self.embed_dims} (num_queries × C_q). Set the head\'s '
                f'num_queries / query_source to match what the backbone returns.')
        sizes = [f.shape[2:] for f in feats]
        value = torch.cat([f.flatten(2) for f in feats], dim=2).transpose(1, 2)  # B×N_p×C
        pos = torch.cat([
            sine_position_embedding(h, w, self.embed_dims, device=value.device,
                                    dtype=value.dtype) for h, w in sizes
        ])  # N_p×C
        key = value + pos[None]  # F_k (Eq 14)
        b, n_p = value.shape[:2]
        priors = []
        q = queries
        for i, layer in enumerate(self.layers):
            q_next, amap = layer(q, key, value)  # A, Q' = MHCA(F_k, Q) (Eq 15)
            if str(i) in self.prior_heads and (not last_only or i == self.num_layers - 1):
                amap = amap.reshape(b, -1, n_p)  # B×K·h×N_p
                if self.attn_maps == 'post_softmax' and self.attn_scale == 'num_keys':
                    amap = amap * n_p
                maps = [
                    m.reshape(b, -1, h, w)
                    for m, (h, w) in zip(amap.split([h * w for h, w in sizes], dim=2), sizes)
                ]  # split + unflatten: A_2, A_3, A_4
                priors.append(self.prior_heads[str(i)](maps, out_size))
            q = q_next
        return priors
