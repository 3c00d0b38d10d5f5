# Copyright (c) mmrefseg contributors. All rights reserved.
from .ref_data_preprocessor import RefSegDataPreProcessor

__all__ = ['RefSegDataPreProcessor']
