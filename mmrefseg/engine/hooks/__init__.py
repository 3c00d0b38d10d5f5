# Copyright (c) mmrefseg contributors. All rights reserved.
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .nonfinite_loss_hook import NonFiniteLossHook
from .safe_checkpoint_load_hook import SafeCheckpointLoadHook

__all__ = ['AtomicCheckpointHook', 'NonFiniteLossHook', 'SafeCheckpointLoadHook']
