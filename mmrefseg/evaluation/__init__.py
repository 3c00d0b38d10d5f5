# Copyright (c) mmrefseg contributors. All rights reserved.
from .metrics import RefSegMetric

__all__ = ['RefSegMetric']
