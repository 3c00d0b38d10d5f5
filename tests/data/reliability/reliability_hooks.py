"""Test-only hooks for the reliability suite (see README.md here)."""
import time

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class PauseAtIterHook(Hook):
    """After iteration ``pause_at`` (1-based) write ``marker`` and wait to be killed."""

    priority = 'LOWEST'  # after the CheckpointHook of the same iteration

    def __init__(self, pause_at, marker, max_wait=300):
        self.pause_at = pause_at
        self.marker = marker
        self.max_wait = max_wait

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.pause_at:
            with open(self.marker, 'w') as f:
                f.write(str(runner.iter + 1))
            time.sleep(self.max_wait)
            raise RuntimeError('PauseAtIterHook: nobody killed this process')


@HOOKS.register_module()
class RaiseOnRankHook(Hook):
    """Raise ``RuntimeError`` on rank ``rank`` before iteration ``at_iter`` (1-based)."""

    def __init__(self, rank=1, at_iter=2):
        self.rank = rank
        self.at_iter = at_iter

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.at_iter and get_rank() == self.rank:
            raise RuntimeError(f'RaiseOnRankHook: injected failure on rank {self.rank} at '
                               f'iteration {self.at_iter}')
