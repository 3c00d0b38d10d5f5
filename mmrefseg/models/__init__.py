# Copyright (c) mmrefseg contributors. All rights reserved.
"""Models: every subpackage is imported so its components register into mmseg's MODELS."""
from . import (backbones, data_preprocessors, decode_heads, layers,  # noqa: F401
               segmentors, text_encoders)
from .backbones import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .text_encoders import *  # noqa: F401,F403
