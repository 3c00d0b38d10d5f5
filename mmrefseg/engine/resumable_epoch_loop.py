# Copyright (c) mmrefseg contributors. All rights reserved.
"""An epoch-based training loop that resumes a mid-epoch checkpoint where it stopped.

mmengine 0.10.7's ``EpochBasedTrainLoop`` resumes a checkpoint saved in the middle of an
epoch (``CheckpointHook(by_epoch=False, interval=N)``) at the *start* of that epoch: the
batches already trained are trained again and the iteration counter overshoots
``max_iters`` (the poly schedule then sits at ``eta_min`` for the extra iterations).
``IterBasedTrainLoop`` does not have the problem (it advances the dataloader).

:class:`ResumableEpochBasedTrainLoop` skips the ``iter - epoch × len(dataloader)`` batches
of the resumed epoch **at the sampler** (their indices are dropped; nothing is loaded), so
the run continues with exactly the batches the interrupted run had not trained. The
sampler's order for an epoch is a function of ``(seed, epoch)`` (mmengine's
``DefaultSampler`` + ``DistSamplerSeedHook``), so the remaining batches are the same ones.
Use it in place of the stock loop::

    train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=35, val_interval=1)

With epoch-end checkpoints only (the default 35-epoch schedule) both loops behave the same.

The sampler is built before the checkpoint is read, with the seed of the new run. When the
run's seed is not fixed (``randomness.seed`` unset), mmengine adopts the checkpoint's seed on
resume but the sampler keeps the new one, so the order (and the sentence draws of
``EpochTaggedSampler``, a function of (seed, epoch, index)) would differ from the
interrupted run's. This loop gives the sampler the run's seed when training starts.
"""
import logging

from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop
from mmseg.registry import LOOPS

__all__ = ['ResumableEpochBasedTrainLoop']


class _SkipFirst:
    """A sampler view that drops the first ``n`` indices of one pass of ``sampler``."""

    def __init__(self, sampler, n):
        self.sampler = sampler
        self.n = n

    def __iter__(self):
        for i, idx in enumerate(self.sampler):
            if i >= self.n:
                yield idx

    def __len__(self):
        return max(len(self.sampler) - self.n, 0)

    def __getattr__(self, name):  # set_epoch, seed, ... of the real sampler
        if name == 'sampler':  # not set yet (copy / unpickling)
            raise AttributeError(name)
        return getattr(self.sampler, name)


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that resumes a mid-epoch checkpoint mid-epoch.

    Args: as :class:`mmengine.runner.EpochBasedTrainLoop`.
    """

    def _batches_done_in_epoch(self) -> int:
        done = self._iter - self._epoch * len(self.dataloader)
        if done < 0 or done >= len(self.dataloader):
            print_log(
                f'ResumableEpochBasedTrainLoop: iteration {self._iter} is not inside epoch '
                f'{self._epoch + 1} of {len(self.dataloader)} batches (a different batch size '
                'or number of processes than the checkpoint\'s?); the epoch restarts from '
                'its first batch.', logger='current', level=logging.WARNING)
            return 0
        return done

    def run(self):
        """Train; the sampler first takes the run's (possibly resumed) seed."""
        self._sync_sampler_seed()
        return super().run()

    def _sync_sampler_seed(self) -> None:
        sampler = getattr(self.dataloader, 'sampler', None)
        seed = self.runner.seed
        if self.runner._randomness_cfg.get('diff_rank_seed', False) or seed is None or \
                getattr(sampler, 'seed', None) in (None, seed):
            return
        print_log(f'ResumableEpochBasedTrainLoop: the sampler takes the run\'s seed {seed} '
                  f'(it was built with {sampler.seed}, before the checkpoint was read).',
                  logger='current', level=logging.INFO)
        sampler.seed = seed

    def run_epoch(self) -> None:
        """Iterate one epoch, skipping the batches a resumed checkpoint already trained."""
        skip = self._batches_done_in_epoch() if self._iter > 0 else 0
        if skip == 0:
            return super().run_epoch()
        batch_sampler = getattr(self.dataloader, 'batch_sampler', None)
        if batch_sampler is None or not hasattr(batch_sampler, 'batch_size'):
            raise TypeError('ResumableEpochBasedTrainLoop needs a DataLoader with a '
                            'BatchSampler (batch_size=...) to skip the trained batches.')
        print_log(f'ResumableEpochBasedTrainLoop: resuming epoch {self._epoch + 1} after its '
                  f'first {skip} batches (iteration {self._iter}); they are not trained '
                  'again.', logger='current', level=logging.WARNING)
        self.runner.call_hook('before_train_epoch')  # DistSamplerSeedHook sets the epoch
        self.runner.model.train()
        original = batch_sampler.sampler
        batch_sampler.sampler = _SkipFirst(original, skip * batch_sampler.batch_size)
        try:
            for idx, data_batch in enumerate(self.dataloader, start=skip):
                self.run_iter(idx, data_batch)
        finally:
            batch_sampler.sampler = original
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
