# Copyright (c) mmrefseg contributors. All rights reserved.
"""Bidirectional Spatial Alignment Module (BSAM), paper §3.2.2, Eq 1-9.

One BSAM sits after the blocks of every Swin stage i (before patch merging). With the
stage output ``V_i`` (B×HW×C_i, tokens in row-major order) and the word features ``L``
(B×Nt×C_t) it computes

    V_q = IN(W_vq V_i)                                  (Eq 1)
    L_k = W_lk L                                        (Eq 2)
    V_v = IN(W_vv V_i)                                  (Eq 3)
    L_v = W_lv L                                        (Eq 4)
    A   = V_q L_kᵀ / √C_i            B×HW×Nt            (Eq 5)
    V_f = [V_i ; softmax_words(A) L_v]                  (Eq 6, padding words masked)
    L_f = [L ; softmax_pixels(Aᵀ) V_v]                  (Eq 7)
    F_i = ReLU(W_ov V_f)             B×HW×C_i           (Eq 8)
    Q_i = mean_valid_words ReLU(W_ol L_f)  B×C_q        (Eq 9)

Choices the paper leaves open (defaults follow LAVT's PWAM):

* ``IN`` is an instance norm over the pixels of each channel, without affine parameters
  (``norm_cfg=dict(type='IN1d')``; ``None`` switches it off). torch refuses it on a single
  pixel, so with IN every stage map needs ≥ 2 pixels (inputs larger than 32 px).
* All projections are linear layers (1×1 convolutions) with bias.
* Neither softmax needs the attention map itself, so both directions run through
  :func:`torch.nn.functional.scaled_dot_product_attention` with the scale 1/√C_i of Eq 5:
  words → pixels with a boolean mask over padding words, pixels → words unmasked (the rows of
  padding words are computed but dropped by the masked mean of Eq 9).
* ``with_query=False`` (Table 2 rows 3-4, or a stage outside ``query_stages`` of Table 3)
  builds neither ``W_ol`` nor the language direction, so no parameter is left without a
  gradient.
* Init: xavier-uniform weights, zero biases (see :meth:`BSAM.init_weights`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmengine.model.weight_init import xavier_init

from mmseg.registry import MODELS

__all__ = ['BSAM', 'masked_mean', 'check_text_inputs']


def masked_mean(x, mask):
    """Mean of ``x`` (B×Nt×C) over the words where ``mask`` (B×Nt) is non-zero → B×C."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def check_text_inputs(text_feats, text_mask, text_dims, owner):
    """Validate word features B×Nt×C_t and word mask B×Nt; raise a readable error."""
    if text_feats.dim() != 3 or text_feats.shape[-1] != text_dims:
        raise ValueError(
            f'{owner}: text_feats must be B×Nt×{text_dims} (text_dims={text_dims}), got '
            f'{tuple(text_feats.shape)}. Set text_dims to the text encoder\'s embed_dims.')
    if text_mask is None or tuple(text_mask.shape) != tuple(text_feats.shape[:2]):
        got = None if text_mask is None else tuple(text_mask.shape)
        raise ValueError(
            f'{owner}: text_mask must be B×Nt = {tuple(text_feats.shape[:2])} (1 on real '
            f'tokens, 0 on padding), got {got}.')


@MODELS.register_module()
class BSAM(BaseModule):
    """Bidirectional Spatial Alignment Module (Eq 1-9).

    Args:
        vis_dims (int): C_i, channels of the Swin stage.
        text_dims (int): C_t, channels of the word features. Default 768 (BERT-base).
        query_dims (int): C_q, channels of the language query. Default 256.
        with_query (bool): build the language direction (Eq 7, 9). Default True.
        norm_cfg (dict | None): the ``norm`` of Eq 1 and 3. Default ``dict(type='IN1d')``.
        init_cfg (dict | None): mmengine init config; default init see ``init_weights``.

    Shapes:
        forward(vis B×HW×C_i, text B×Nt×C_t, text_mask B×Nt) →
        (F_i B×HW×C_i, Q_i B×C_q or None when ``with_query=False``)
    """

    def __init__(self,
                 vis_dims,
                 text_dims=768,
                 query_dims=256,
                 with_query=True,
                 norm_cfg=dict(type='IN1d'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.vis_dims = vis_dims
        self.text_dims = text_dims
        self.query_dims = query_dims
        self.with_query = with_query
        self.vis_query = nn.Linear(vis_dims, vis_dims)  # W_vq (Eq 1)
        self.text_key = nn.Linear(text_dims, vis_dims)  # W_lk (Eq 2)
        self.text_value = nn.Linear(text_dims, vis_dims)  # W_lv (Eq 4)
        self.vis_out = nn.Linear(2 * vis_dims, vis_dims)  # W_ov (Eq 8)
        self.query_norm = self._norm(norm_cfg, vis_dims)  # IN of Eq 1
        if with_query:
            self.vis_value = nn.Linear(vis_dims, vis_dims)  # W_vv (Eq 3)
            self.value_norm = self._norm(norm_cfg, vis_dims)  # IN of Eq 3
            self.text_out = nn.Linear(text_dims + vis_dims, query_dims)  # W_ol (Eq 9)

    @staticmethod
    def _norm(norm_cfg, channels):
        if norm_cfg is None:
            return nn.Identity()
        return build_norm_layer(norm_cfg, channels)[1]

    @staticmethod
    def _pixel_norm(norm, x):
        """Apply a B×C×N norm (instance norm over pixels) to tokens B×N×C."""
        if isinstance(norm, nn.Identity):
            return x
        return norm(x.transpose(1, 2)).transpose(1, 2)

    def init_weights(self):
        """Xavier-uniform for every projection, zero bias (mmseg/LAVT convention for
        freshly added fusion layers on top of a pretrained backbone); a user ``init_cfg``
        takes precedence."""
        if self.init_cfg:
            return super().init_weights()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                xavier_init(m, distribution='uniform', bias=0.)

    def forward(self, vis, text, text_mask):
        """vis B×HW×C_i, text B×Nt×C_t, text_mask B×Nt → (F_i B×HW×C_i, Q_i B×C_q | None)."""
        scale = self.vis_dims**-0.5  # 1/√C_i of Eq 5
        v_q = self._pixel_norm(self.query_norm, self.vis_query(vis))  # Eq 1
        l_k = self.text_key(text)  # Eq 2
        l_v = self.text_value(text)  # Eq 4
        word_ok = text_mask.bool().unsqueeze(1)  # B×1×Nt, True = real word
        # Eq 5 + 6: softmax over valid words of A = V_q L_kᵀ/√C_i, applied to L_v.
        v2l = F.scaled_dot_product_attention(v_q, l_k, l_v, attn_mask=word_ok, scale=scale)
        fused = F.relu(self.vis_out(torch.cat([vis, v2l], dim=-1)))  # Eq 6 + 8
        if not self.with_query:
            return fused, None
        v_v = self._pixel_norm(self.value_norm, self.vis_value(vis))  # Eq 3
        # Eq 5 + 7: softmax over pixels of Aᵀ, applied to V_v.
        l2v = F.scaled_dot_product_attention(l_k, v_q, v_v, scale=scale)
        words = F.relu(self.text_out(torch.cat([text, l2v], dim=-1)))  # Eq 7 + 9 (W_ol)
        query = masked_mean(words, text_mask)  # Eq 9: avg over (valid) words
        return fused, query
