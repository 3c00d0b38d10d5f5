# Copyright (c) mmrefseg contributors. All rights reserved.
"""Encoder-side fusion layers: BSAM (Eq 1-9), CAFG (Eq 10-11), Table-4 gates, Table-2 tile."""
from .bsam import BSAM, check_text_inputs, masked_mean
from .cafg import CAFG, PER_SAMPLE_NORM, ChannelAttention, map_to_tokens, tokens_to_map
from .gates import GATE_TYPES, LanguageGate, apply_gate, build_gate
from .tile_concat import TileConcatFusion

__all__ = [
    'BSAM', 'CAFG', 'ChannelAttention', 'LanguageGate', 'TileConcatFusion', 'GATE_TYPES',
    'build_gate', 'apply_gate', 'masked_mean', 'check_text_inputs', 'tokens_to_map',
    'map_to_tokens', 'PER_SAMPLE_NORM'
]
