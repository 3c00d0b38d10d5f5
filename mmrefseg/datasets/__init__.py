# Copyright (c) mmrefseg contributors. All rights reserved.
from .refcoco import RefCOCODataset
from .refshapes import RefShapesDataset
from .samplers import EpochIndex, EpochTaggedSampler
from .transforms import (REF_META_KEYS, LoadRefAnnotations, PackRefSegInputs,
                         TokenizeText, decode_segmentation)

__all__ = ['RefCOCODataset', 'RefShapesDataset', 'LoadRefAnnotations', 'TokenizeText',
           'PackRefSegInputs', 'decode_segmentation', 'REF_META_KEYS', 'EpochIndex',
           'EpochTaggedSampler']
