# Copyright (c) mmrefseg contributors. All rights reserved.
from .inference import build_inference_pipeline, inference_model, init_model
from .measure import build_model_for_measurement, dummy_data_batch

__all__ = ['init_model', 'inference_model', 'build_inference_pipeline', 'dummy_data_batch',
           'build_model_for_measurement']
