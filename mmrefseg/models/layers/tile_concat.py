# Copyright (c) mmrefseg contributors. All rights reserved.
"""Tile-and-concatenate fusion: the Table 2 baseline that replaces BSAM.

    s   = mean of the valid word features L               B×C_t
    F_i = ReLU(Conv1×1([V_i ; tile(s, H_i×W_i)]))         B×HW×C_i

The paper only says "sentence feature vector globally pooled from all words, fused equally
to each position ... tile-and-concatenate"; we pool with the word mask (padding excluded)
and project back to C_i with a 1×1 convolution (a linear layer on tokens) + ReLU so the
stage keeps its width, like Eq 8. No language query is produced. Init: xavier-uniform.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.model.weight_init import xavier_init

from mmseg.registry import MODELS
from .bsam import masked_mean

__all__ = ['TileConcatFusion']


@MODELS.register_module()
class TileConcatFusion(BaseModule):
    """Sentence vector tiled over the map and concatenated (Table 2 baseline).

    Args:
        vis_dims (int): C_i.
        text_dims (int): C_t.

    Shapes: forward(vis B×HW×C_i, text B×Nt×C_t, text_mask B×Nt) → (F_i B×HW×C_i, None)
    """

    def __init__(self, vis_dims, text_dims=768, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.with_query = False
        self.proj = nn.Linear(vis_dims + text_dims, vis_dims)

    def init_weights(self):
        if self.init_cfg:
            return super().init_weights()
        xavier_init(self.proj, distribution='uniform', bias=0.)

    def forward(self, vis, text, text_mask):
        sentence = masked_mean(text, text_mask)  # B×C_t, padding excluded
        tiled = sentence.unsqueeze(1).expand(-1, vis.shape[1], -1)  # B×HW×C_t
        return F.relu(self.proj(torch.cat([vis, tiled], dim=-1))), None
