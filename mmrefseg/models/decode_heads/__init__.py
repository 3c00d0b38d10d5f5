# Copyright (c) mmrefseg contributors. All rights reserved.
from .lqpg import LQPG, LQPGLayer, MaskPriorHead, sine_position_embedding
from .lqpg_head import LQPGHead, coord_map
from .pixel_decoder import PixelDecoder

__all__ = [
    'LQPG', 'LQPGLayer', 'MaskPriorHead', 'sine_position_embedding', 'LQPGHead', 'coord_map',
    'PixelDecoder'
]
