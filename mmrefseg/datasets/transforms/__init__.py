# Copyright (c) mmrefseg contributors. All rights reserved.
from .formatting import REF_META_KEYS, PackRefSegInputs
from .loading import LoadRefAnnotations, decode_segmentation
from .text import TokenizeText, build_tokenizer

__all__ = ['LoadRefAnnotations', 'decode_segmentation', 'TokenizeText', 'build_tokenizer',
           'PackRefSegInputs', 'REF_META_KEYS']
