# Copyright (c) mmrefseg contributors. All rights reserved.
from .dummy_batch import dummy_data_batch
from .inference import build_inference_pipeline, inference_model, init_model

__all__ = ['init_model', 'inference_model', 'build_inference_pipeline', 'dummy_data_batch']
