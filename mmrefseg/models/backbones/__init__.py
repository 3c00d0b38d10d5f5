# Copyright (c) mmrefseg contributors. All rights reserved.
"""Backbones: the BSAM-fused Swin Transformer and Swin checkpoint conversion."""
from .bsam_swin import BSAMSwinTransformer
from .swin_checkpoint import (convert_swin_state_dict, detect_swin_layout,
                              load_swin_pretrained)

__all__ = [
    'BSAMSwinTransformer', 'convert_swin_state_dict', 'detect_swin_layout',
    'load_swin_pretrained'
]
