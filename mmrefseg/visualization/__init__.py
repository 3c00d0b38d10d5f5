# Copyright (c) mmrefseg contributors. All rights reserved.
from .ref_visualizer import RefSegLocalVisualizer

__all__ = ['RefSegLocalVisualizer']
