# Copyright (c) mmrefseg contributors. All rights reserved.
from .fused_adamw import FusedAdamW, fused_adamw_supported

__all__ = ['FusedAdamW', 'fused_adamw_supported']
