# Copyright (c) mmrefseg contributors. All rights reserved.
from .refseg_metric import RefSegMetric

__all__ = ['RefSegMetric']
