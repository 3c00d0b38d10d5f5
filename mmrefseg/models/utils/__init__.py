# Copyright (c) mmrefseg contributors. All rights reserved.
from .text_checks import check_text_values, is_host_tensor

__all__ = ['check_text_values', 'is_host_tensor']
