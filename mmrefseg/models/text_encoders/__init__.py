# Copyright (c) mmrefseg contributors. All rights reserved.
"""Language encoders (the "language neck" built by the segmentor's ``text_encoder=`` key)."""
from .bert import BertTextEncoder

__all__ = ['BertTextEncoder']
