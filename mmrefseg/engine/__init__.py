# Copyright (c) mmrefseg contributors. All rights reserved.
"""Training-engine pieces: crash-safe checkpoint writes, safe checkpoint loading, NaN guard,
bad-sample skipping, mid-epoch resumption.

Importing this package registers components (hooks, a loop, a dataset wrapper, an optim
wrapper) and changes nothing of mmengine's: a config opts in to each by naming it.
"""
from . import runner_utils  # noqa: F401  (registers CPUAmpOptimWrapper)
from .hooks import *  # noqa: F401,F403
from .multi_split_test_loop import MultiSplitTestLoop
from .optimizers import FusedAdamW
from .resumable_epoch_loop import ResumableEpochBasedTrainLoop
from .skip_bad_samples import SkipBadSamplesDataset

__all__ = [
    'SkipBadSamplesDataset', 'NonFiniteLossHook', 'ResumableEpochBasedTrainLoop',
    'MultiSplitTestLoop', 'FusedAdamW', 'AtomicCheckpointHook', 'SafeCheckpointLoadHook'
]
