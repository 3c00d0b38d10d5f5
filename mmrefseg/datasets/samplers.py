# Copyright (c) mmrefseg contributors. All rights reserved.
"""A sampler whose indices carry the epoch, so that per-epoch draws reach every worker.

``RefCOCODataset`` in ``sentence_mode='random'`` draws one of a ref's sentences on every
access. For the draw to be a function of ``(seed, epoch, index)`` (a different sentence
each epoch, the same one again after a resume), the dataset must know the epoch in the
process that loads the sample. A dataset attribute set in the main process (e.g. by a hook)
does not reach ``persistent_workers=True`` workers, which hold their own copy of the
dataset. The index does: the sampler runs in the main process and every index it yields is
sent to the worker that loads it. :class:`EpochTaggedSampler` is mmengine's
``DefaultSampler`` (same order, padding, sharding; ``set_epoch`` is called by
``DistSamplerSeedHook`` and by ``IterBasedTrainLoop`` at every pass) whose indices are
:class:`EpochIndex` ints carrying ``epoch``, the sampler's ``seed`` and ``alternates``: the
next ``num_alternates`` indices of the same rank's shard, in order (with wrap-around), from
which :class:`~mmrefseg.engine.SkipBadSamplesDataset` takes the substitute of an
unreadable sample, so that the substitute belongs to the same rank (and the same epoch).

    train_dataloader = dict(sampler=dict(type='EpochTaggedSampler', shuffle=True), ...)
"""
from typing import Iterator, Sequence

from mmengine.dataset import DefaultSampler

from mmseg.registry import DATA_SAMPLERS

__all__ = ['EpochIndex', 'EpochTaggedSampler']


class EpochIndex(int):
    """A dataset index (an ``int``) that also carries the sampler's epoch and seed, and the
    indices that follow it in the same rank's shard (``alternates``).

    Arithmetic gives plain ints; :meth:`retag` moves the epoch and seed to another index.
    Pickles (to dataloader workers) with its tags.
    """

    def __new__(cls, index: int, epoch: int = 0, seed: int = 0,
                alternates: Sequence[int] = ()):
        obj = super().__new__(cls, index)
        obj.epoch = int(epoch)
        obj.seed = int(seed)
        obj.alternates = tuple(int(a) for a in alternates)
        return obj

    def __getnewargs__(self):
        return int(self), self.epoch, self.seed, self.alternates

    def __repr__(self) -> str:
        return (f'EpochIndex({int(self)}, epoch={self.epoch}, seed={self.seed}, '
                f'alternates={self.alternates})')

    @staticmethod
    def retag(index: int, like) -> int:
        """``index`` with the epoch and seed of ``like`` (a plain int when it has none)."""
        if isinstance(like, EpochIndex):
            return EpochIndex(index, like.epoch, like.seed)
        return int(index)


@DATA_SAMPLERS.register_module()
class EpochTaggedSampler(DefaultSampler):
    """mmengine's ``DefaultSampler`` yielding :class:`EpochIndex` (epoch, seed and the
    same-rank alternates attached).

    Args:
        num_alternates (int): same-shard indices attached to each index, for
            ``SkipBadSamplesDataset`` (its ``max_consecutive`` - 1 are used). Defaults to 10.
        **kwargs: as :class:`mmengine.dataset.DefaultSampler` (``dataset``, ``shuffle``,
            ``seed``, ``round_up``).
    """

    def __init__(self, *args, num_alternates: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(num_alternates, int) or num_alternates < 0:
            raise ValueError(f'EpochTaggedSampler: num_alternates={num_alternates!r} must '
                             'be an int >= 0.')
        self.num_alternates = num_alternates

    def __iter__(self) -> Iterator[int]:
        epoch, seed = self.epoch, self.seed  # fixed for this pass
        shard = list(super().__iter__())  # this rank's indices, in order
        n, k = len(shard), min(self.num_alternates, max(len(shard) - 1, 0))
        return (EpochIndex(i, epoch, seed, [shard[(p + j) % n] for j in range(1, k + 1)])
                for p, i in enumerate(shard))
