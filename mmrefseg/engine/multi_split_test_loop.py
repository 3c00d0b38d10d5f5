# Copyright (c) mmrefseg contributors. All rights reserved.
"""A test loop that evaluates several splits with one model load.

mmengine's ``TestLoop`` takes one dataloader. Papers report RefCOCO val / testA / testB
(and RefCOCOg val / test) together, so :class:`MultiSplitTestLoop` builds the config's
``test_dataloader`` once per split (only ``dataset.split`` changes), runs each in turn with
the config's evaluator and returns the metrics of every split as ``<split>/<metric>``::

    test_cfg = dict(type='MultiSplitTestLoop', splits=['val', 'testA', 'testB'])
    test_cfg = dict(type='MultiSplitTestLoop', splits='all')  # the config's `test_splits`

``tools/test.py --split val testA testB`` (or ``--split all``) sets it up. Per split the
hooks see an ordinary test epoch (``before_test_epoch`` ... ``after_test_epoch`` with the
``<split>/``-prefixed metrics), so logging, visualization and distributed evaluation
(``--launcher pytorch``, the dist / slurm scripts) work as with ``TestLoop``; the
dataloader of a split is built when its turn comes and released after it.

After the run the main process holds :attr:`MultiSplitTestLoop.report` (see
:mod:`mmrefseg.evaluation.report`: the protocol, the metrics of every split and, from
``RefSegMetric``, the per-sample records), prints it as one table and, with ``out_file``,
writes it as JSON.
"""
import copy
import json
import logging
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Union

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import TestLoop
from mmengine.runner.loops import _parse_losses
from mmengine.utils import mkdir_or_exist
from mmseg.registry import LOOPS

from ..evaluation.report import format_table

__all__ = ['MultiSplitTestLoop', 'dataset_cfg_with_split', 'evaluation_splits']


def dataset_cfg_with_split(dataloader_cfg: dict) -> dict:
    """The (innermost) dataset config of a dataloader config that has a ``split`` key.

    Follows nested ``dataset=dict(...)`` (dataset wrappers); raises when none has one.
    """
    node = dataloader_cfg.get('dataset')
    while isinstance(node, dict):
        if 'split' in node:
            return node
        node = node.get('dataset')
    raise KeyError('MultiSplitTestLoop: the test dataset config has no `split` key (a '
                   'RefCOCODataset has one); several splits need a dataset chosen by split.')


def evaluation_splits(dataset_cfg: dict) -> List[str]:
    """Every split but ``train`` in a RefCOCO-family refs file (``val`` first)."""
    from ..datasets.refcoco import load_refs_pickle, refer_paths
    if 'data_root' not in dataset_cfg or 'dataset' not in dataset_cfg:
        raise KeyError("MultiSplitTestLoop(splits='all'): the config has no `test_splits` "
                       'and the test dataset is not a RefCOCO-family one (data_root, '
                       'dataset, split_by); list the splits: --split val testA ...')
    _, ref_path = refer_paths(dataset_cfg['data_root'], dataset_cfg['dataset'],
                              dataset_cfg.get('split_by', 'unc'))
    found = {r['split'] for r in load_refs_pickle(ref_path)} - {'train'}
    return sorted(found, key=lambda s: (s != 'val', s))


class _CheckpointMetaHook(Hook):
    """Keeps the ``meta`` of the checkpoint the runner loads (iteration, epoch)."""
    priority = 'VERY_LOW'

    def __init__(self, loop: 'MultiSplitTestLoop'):
        self.loop = loop

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.loop.checkpoint_meta = dict(checkpoint.get('meta', None) or {})


@LOOPS.register_module()
class MultiSplitTestLoop(TestLoop):
    """Test every split of ``splits`` in turn, with one model and one evaluator.

    Args:
        runner (Runner): the runner.
        dataloader (dict): the test dataloader config; its dataset's ``split`` is replaced
            by each split in turn (the first split's dataloader is built here).
        evaluator (Evaluator | dict | list): the test evaluator (reset between splits).
        splits (str | Sequence[str] | None): the splits, in order; ``'all'`` = the config's
            ``test_splits`` or, without that key, every split but ``train`` in the dataset's
            refs file; None = the dataloader's own split. Defaults to None.
        out_file (str, optional): write the report (protocol, metrics, per-sample records
            of every split) to this JSON file. Defaults to None.
        fp16 (bool): autocast the forward, as :class:`mmengine.runner.TestLoop`.
    """

    def __init__(self,
                 runner,
                 dataloader: dict,
                 evaluator,
                 splits: Union[str, Sequence[str], None] = None,
                 out_file: Optional[str] = None,
                 fp16: bool = False):
        if not isinstance(dataloader, dict):
            raise TypeError('MultiSplitTestLoop builds one dataloader per split: give it the '
                            f'dataloader config (a dict), not a {type(dataloader).__name__}.')
        self._dataloader_cfg = copy.deepcopy(dataloader)
        default = dataset_cfg_with_split(self._dataloader_cfg)['split']
        if splits is None:
            splits = [default]
        elif splits == 'all' or (not isinstance(splits, str) and list(splits) == ['all']):
            cfg_splits = runner.cfg.get('test_splits', None)
            splits = list(cfg_splits) if cfg_splits else evaluation_splits(
                dataset_cfg_with_split(self._dataloader_cfg))
        elif isinstance(splits, str):
            splits = [splits]
        splits = list(splits)
        if not splits or len(set(splits)) != len(splits):
            raise ValueError(f'MultiSplitTestLoop: splits must be distinct and not empty, '
                             f'got {splits}.')
        self.splits = splits
        self.out_file = out_file
        self.checkpoint_meta: Optional[dict] = None
        self.report: Optional[dict] = None
        super().__init__(runner, self._split_cfg(splits[0]), evaluator, fp16=fp16)
        runner.register_hook(_CheckpointMetaHook(self))

    def _split_cfg(self, split: str) -> dict:
        cfg = copy.deepcopy(self._dataloader_cfg)
        dataset_cfg_with_split(cfg)['split'] = split
        return cfg

    def _use_split(self, split: str) -> None:
        """Build ``split``'s dataloader (the previous one is released)."""
        self.dataloader = None  # free the previous split's dataset and workers first
        diff_rank_seed = self.runner._randomness_cfg.get('diff_rank_seed', False)
        self.dataloader = self.runner.build_dataloader(
            self._split_cfg(split), seed=self.runner.seed, diff_rank_seed=diff_rank_seed)
        if hasattr(self.dataloader.dataset, 'metainfo'):
            self.evaluator.dataset_meta = self.dataloader.dataset.metainfo
            self.runner.visualizer.dataset_meta = self.dataloader.dataset.metainfo

    def run(self) -> dict:
        """Evaluate every split; returns ``{'<split>/<metric>': value}``."""
        self.runner.call_hook('before_test')
        flat: Dict[str, float] = OrderedDict()
        per_split, sizes, samples = OrderedDict(), OrderedDict(), OrderedDict()
        protocols, scored = [], []
        for i, split in enumerate(self.splits):
            if i > 0:
                self._use_split(split)
            dataset = self.dataloader.dataset
            print_log(f'MultiSplitTestLoop: split {split!r} ({len(dataset)} samples, '
                      f'{i + 1}/{len(self.splits)})', logger='current')
            self.runner.call_hook('before_test_epoch')
            self.runner.model.eval()
            self.test_loss.clear()
            for idx, data_batch in enumerate(self.dataloader):
                self.run_iter(idx, data_batch)
            metrics = self.evaluator.evaluate(len(dataset))
            if self.test_loss:
                metrics.update(_parse_losses(self.test_loss, 'test'))
            per_split[split], sizes[split] = dict(metrics), len(dataset)
            scored.append(self._scoring(dataset))
            for metric in self.evaluator.metrics:  # RefSegMetric: records on rank 0
                if getattr(metric, 'last_records', None) is not None:
                    samples[split] = list(metric.last_records)
                    protocols.append(dict(metric.last_protocol))
                    metric.last_records = []
            prefixed = OrderedDict((f'{split}/{k}', v) for k, v in metrics.items())
            flat.update(prefixed)
            self.runner.call_hook('after_test_epoch', metrics=prefixed)
            # the LoggerHook logs every `test/` scalar of the message hub: drop this split's
            # so that the next split's line shows that split only
            for key in prefixed:
                self.runner.message_hub.log_scalars.pop(f'test/{key}', None)
        if is_main_process():
            self.report = self._report(per_split, sizes, samples, protocols, scored)
            print_log('\n' + format_table(self.report), logger='current')
            if self.out_file:
                self._write(self.report)
        self.runner.call_hook('after_test')
        return flat

    @staticmethod
    def _scoring(dataset) -> str:
        mode = getattr(dataset, 'sentence_mode', None)
        return {'all': 'every sentence', 'random': 'one random sentence per ref'}.get(
            mode, f'every item of {type(dataset).__name__}')

    def _report(self, per_split: dict, sizes: dict, samples: dict, protocols: List[dict],
                scored: List[str]) -> dict:
        dataset_cfg = dataset_cfg_with_split(self._dataloader_cfg)
        meta = self.checkpoint_meta or {}
        checkpoint = getattr(self.runner, '_load_from', None)
        if checkpoint and '://' not in str(checkpoint):
            checkpoint = osp.abspath(checkpoint)
        resolution = protocols[0] if protocols else {}
        if any(p != resolution for p in protocols):  # e.g. another input size per split
            resolution = dict(resolution, input_size='various',
                              resized=' | '.join(sorted({p.get('resized', '')
                                                         for p in protocols})))
        protocol = OrderedDict(
            dataset=dataset_cfg.get('dataset'),
            split_by=dataset_cfg.get('split_by'),
            dataset_type=dataset_cfg.get('type'),
            scored=scored[0] if len(set(scored)) == 1 else ' / '.join(scored),
            checkpoint=checkpoint or None,
            checkpoint_iter=meta.get('iter'),
            checkpoint_epoch=meta.get('epoch'),
            config=getattr(self.runner.cfg, 'filename', None),
            resolution=resolution)
        return OrderedDict(
            protocol=protocol,
            splits=list(per_split),
            metrics=per_split,
            num_samples=sizes,
            samples=samples)

    def _write(self, report: dict) -> None:
        folder = osp.dirname(osp.abspath(self.out_file))
        mkdir_or_exist(folder)
        with open(self.out_file, 'w') as f:
            json.dump(report, f, indent=1, default=str)
        print_log(f'MultiSplitTestLoop: report of {len(report["splits"])} split(s) written '
                  f'to {self.out_file}', logger='current', level=logging.INFO)
