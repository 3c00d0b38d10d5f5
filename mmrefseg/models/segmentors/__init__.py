# Copyright (c) mmrefseg contributors. All rights reserved.
from .ref_encoder_decoder import RefEncoderDecoder

__all__ = ['RefEncoderDecoder']
