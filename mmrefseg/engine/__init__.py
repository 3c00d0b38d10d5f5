# Copyright (c) mmrefseg contributors. All rights reserved.
"""Training-engine pieces: crash-safe checkpoint writes, NaN guard, bad-sample skipping,
mid-epoch resumption.

Importing this package (``import mmrefseg`` does) makes mmengine's local checkpoint and
``last_checkpoint`` writes atomic (:mod:`mmrefseg.utils.atomic_io`).
"""
from ..utils import atomic_io
from . import runner_utils  # noqa: F401  (registers CPUAmpOptimWrapper)
from .hooks import *  # noqa: F401,F403
from .multi_split_test_loop import MultiSplitTestLoop
from .optimizers import FusedAdamW
from .resumable_epoch_loop import ResumableEpochBasedTrainLoop
from .skip_bad_samples import SkipBadSamplesDataset

atomic_io.apply()

__all__ = [
    'SkipBadSamplesDataset', 'NonFiniteLossHook', 'ResumableEpochBasedTrainLoop',
    'MultiSplitTestLoop', 'FusedAdamW'
]
