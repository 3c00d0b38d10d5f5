# Copyright (c) mmrefseg contributors. All rights reserved.
"""Opt-in skipping of unreadable training samples (a dataset wrapper).

One corrupt JPEG among 140,000 training images should not end a 35-epoch run at epoch 30.
By default nothing is skipped: a sample that fails to load raises, naming the file. Wrap the
*training* dataset to skip such samples instead::

    train_dataloader = dict(dataset=dict(
        type='SkipBadSamplesDataset', max_skips=100,
        dataset=dict(type='RefCOCODataset', ...)))

A skipped sample is replaced by another sample **of the same rank's shard**, counted, and
logged with its file and the error. The substitute is the next index of this rank's shard in
this epoch's order: :class:`~mmrefseg.datasets.EpochTaggedSampler` (our configs' training
sampler) attaches those indices to every index it yields (``alternates``), so the choice is
deterministic (resumed runs see the same data) and never takes a sample of another rank's
shard (which would train it twice in the epoch). With an untagged index (another sampler)
the substitute is ``idx + 1``, which under mmengine's ``DefaultSampler`` belongs to another
rank's shard in a distributed run; a warning says so once. Evaluation never skips: the wrapper refuses datasets in ``test_mode`` or whose ``split`` is not a training
split, so every test sentence is scored or the run fails.

Counts are per process: with ``num_workers > 0`` each dataloader worker keeps its own count
(the log line says which process); ``max_skips`` and ``max_consecutive`` apply per process.
"""
import copy
import logging
import os
from typing import List, Union

from mmengine.dataset import BaseDataset, force_full_init
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmseg.registry import DATASETS

from ..datasets.samplers import EpochIndex

__all__ = ['SkipBadSamplesDataset']


@DATASETS.register_module()
class SkipBadSamplesDataset:
    """Wrap a training dataset so that samples raising in the pipeline are skipped.

    Args:
        dataset (BaseDataset | dict): the training dataset (or its config).
        max_skips (int): raise once more than this many samples were skipped in this
            process (a systematic problem, not a bad file). Defaults to 100.
        max_consecutive (int): raise once this many indices in a row failed (a bug in the
            pipeline fails on every sample). Defaults to 10.
        lazy_init (bool): as in mmengine's dataset wrappers. Defaults to False.

    Attributes:
        num_skipped (int): samples skipped so far in this process.
        skipped (list[tuple[int, str, str]]): ``(index, file, error)`` of each skip.
    """

    def __init__(self,
                 dataset: Union[BaseDataset, dict],
                 max_skips: int = 100,
                 max_consecutive: int = 10,
                 lazy_init: bool = False):
        if isinstance(dataset, dict):
            dataset = DATASETS.build(dataset)
        if not hasattr(dataset, '__getitem__') or not hasattr(dataset, '__len__'):
            raise TypeError('SkipBadSamplesDataset: `dataset` must be a dataset or a dataset '
                            f'config dict, got {type(dataset).__name__}.')
        split = getattr(dataset, 'split', None)
        if getattr(dataset, 'test_mode', False) or (
                isinstance(split, str) and not split.startswith('train')):
            raise ValueError(
                f'SkipBadSamplesDataset wraps training datasets only, got '
                f'{type(dataset).__name__} with test_mode='
                f'{getattr(dataset, "test_mode", None)}, split={split!r}. Evaluation must '
                'score every sample: remove the wrapper from the val/test dataloader and fix '
                'or remove the unreadable files.')
        for name, value in (('max_skips', max_skips), ('max_consecutive', max_consecutive)):
            if not isinstance(value, int) or value < 0 or (name == 'max_consecutive'
                                                            and value < 1):
                raise ValueError(f'SkipBadSamplesDataset: {name}={value!r} must be a '
                                 'non-negative int (max_consecutive >= 1).')
        self.dataset = dataset
        self.max_skips = max_skips
        self.max_consecutive = max_consecutive
        self.num_skipped = 0
        self.skipped: List[tuple] = []
        self._warned_untagged = False
        self._metainfo = getattr(dataset, 'metainfo', {})
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self._metainfo)

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()
        self._ori_len = len(self.dataset)
        if self._ori_len == 0:
            raise ValueError(f'SkipBadSamplesDataset: the wrapped {type(self.dataset).__name__}'
                             ' is empty.')
        self._fully_initialized = True

    @force_full_init
    def __len__(self) -> int:
        return self._ori_len

    @force_full_init
    def get_data_info(self, idx: int) -> dict:
        return self.dataset.get_data_info(idx)

    def _file_of(self, idx: int) -> str:
        try:
            info = self.dataset.get_data_info(idx)
        except Exception:  # noqa: BLE001 - best effort, only for the log line
            return f'<index {idx}>'
        return str(info.get('img_path', f'<index {idx}>'))

    def _candidates(self, idx: int) -> list:
        """``idx``, then its substitutes in order (same rank's shard when tagged)."""
        alternates = getattr(idx, 'alternates', None)
        if alternates is None:
            if not self._warned_untagged:
                self._warned_untagged = True
                if get_dist_info()[1] > 1:
                    print_log(
                        'SkipBadSamplesDataset: the sampler\'s indices carry no same-rank '
                        'alternates, so a skipped sample is replaced by idx + 1, which may '
                        'belong to another rank\'s shard. Use train_dataloader.sampler='
                        "dict(type='EpochTaggedSampler', shuffle=True).", logger='current',
                        level=logging.WARNING)
            subs = [(int(idx) + k) % self._ori_len for k in range(1, self.max_consecutive)]
        else:
            subs = [EpochIndex.retag(a, idx) for a in alternates[:self.max_consecutive - 1]]
        return [idx] + subs

    def __getitem__(self, idx: int):
        if not self._fully_initialized:
            self.full_init()
        first_error = None
        candidates = self._candidates(idx)
        for cur in candidates:
            try:
                return self.dataset[cur]
            except Exception as e:  # noqa: BLE001 - any per-sample failure is skippable
                first_error = first_error or e
                self._record(int(cur), e)
        raise RuntimeError(
            f'SkipBadSamplesDataset: {len(candidates)} consecutive samples (indices '
            f'{[int(c) for c in candidates]}) failed to load; this is not one bad file but a '
            f'broken pipeline or data root. First error: {first_error!r}') from first_error

    def _record(self, idx: int, error: Exception) -> None:
        path = self._file_of(idx)
        self.num_skipped += 1
        self.skipped.append((idx, path, f'{type(error).__name__}: {error}'))
        msg = (f'SkipBadSamplesDataset: skipped sample {idx} ({path}): '
               f'{type(error).__name__}: {error} [{self.num_skipped} skipped so far in '
               f'process {os.getpid()}, limit {self.max_skips}]')
        if self.num_skipped > self.max_skips:
            raise RuntimeError(
                msg + f'\nMore than max_skips={self.max_skips} unreadable samples: check the '
                'data (tools/dataset_converters/check_refer_data.py) or raise max_skips.'
            ) from error
        print_log(msg, logger='current', level=logging.WARNING)

    def get_subset_(self, indices):
        raise NotImplementedError('SkipBadSamplesDataset does not support get_subset_; '
                                  'take the subset of the wrapped dataset (`indices=`).')

    def get_subset(self, indices):
        self.get_subset_(indices)
