# Copyright (c) mmrefseg contributors. All rights reserved.
"""Referring-segmentation metric: oIoU, mIoU and P@X at two resolutions in one run.

Conventions (docs/metrics.md), per sample (one sentence): I = |P ∩ G|, U = |P ∪ G| over the
foreground (class 1) pixels, IoU = I / U, **IoU = 0 when U = 0** (LAVT).

- ``oIoU`` = ΣI / ΣU over all samples (overall IoU), ``mIoU`` = mean per-sample IoU,
  ``P@X`` = share of samples with IoU ≥ X. All reported in percent.
- **original** resolution (the headline, keys without prefix): ``pred_sem_seg`` vs
  ``gt_sem_seg``, both at the image's original size (mmseg test pipelines keep the ground
  truth there).
- **resized** resolution (keys prefixed ``resized/``, how LAVT-lineage papers report): the
  model's prediction at the network input, ``input_pred_sem_seg`` (the argmax of the logits
  upsampled bilinearly from 1/4 to ``img_shape``, ``RefEncoderDecoder.postprocess_result``),
  vs the ground truth resized nearest to ``img_shape`` (``gt_resize_mode``; default at pixel
  centres, as PIL / LAVT). Nothing is resized up and back down. For a segmentor without
  ``input_pred_sem_seg`` (not a ``RefEncoderDecoder``) it falls back, with a warning and a
  note in the protocol, to ``seg_logits`` resized bilinearly to ``img_shape``, else to
  ``pred_sem_seg`` resized nearest.

Exactly one record (I, U, I_r, U_r, ids, text) is kept per sample, so mmengine's
``collect_results`` (which drops the padding of distributed shards by dataset size) gives
the same numbers on any number of processes.
"""
import json
import logging
import os.path as osp
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from mmengine.structures import BaseDataElement
from mmengine.utils import mkdir_or_exist

from mmseg.registry import METRICS

TRACE_KEYS = ('ref_id', 'sent_id', 'ann_id', 'image_id', 'text')


def _field(sample, key: str):
    """``sample[key]`` for a dict (what the Evaluator passes) or a data element."""
    if isinstance(sample, BaseDataElement):
        return getattr(sample, key, None) if key in sample else None
    return sample.get(key)


def _pixel_data(value) -> Optional[torch.Tensor]:
    if value is None:
        return None
    if isinstance(value, BaseDataElement):
        return value.data
    if isinstance(value, dict):
        return value['data']
    return torch.as_tensor(value)


def intersect_union(pred_fg: torch.Tensor, gt_fg: torch.Tensor) -> tuple:
    """``(|P ∩ G|, |P ∪ G|)`` of two boolean masks of one shape, as Python ints."""
    return int((pred_fg & gt_fg).sum()), int((pred_fg | gt_fg).sum())


def summarize(inter: np.ndarray, union: np.ndarray,
              iou_thrs: Sequence[float]) -> Dict[str, float]:
    """oIoU / mIoU / P@X (percent) from per-sample I and U (IoU = 0 when U = 0)."""
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    if inter.size == 0:
        return OrderedDict([('oIoU', float('nan')), ('mIoU', float('nan'))] +
                           [(f'P@{t}', float('nan')) for t in iou_thrs])
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    total_u = union.sum()
    out = OrderedDict()
    out['oIoU'] = float(inter.sum() / total_u * 100) if total_u > 0 else 0.0
    out['mIoU'] = float(iou.mean() * 100)
    for t in iou_thrs:
        out[f'P@{t}'] = float((iou >= t).mean() * 100)
    return out


@METRICS.register_module()
class RefSegMetric(BaseMetric):
    """oIoU, mIoU and P@X for referring image segmentation.

    Args:
        iou_thrs (Sequence[float]): thresholds X of P@X. Defaults to 0.5 ... 0.9.
        resized_eval (bool): also score at the model input size (``resized/`` keys).
            Defaults to True.
        gt_resize_mode (str): ``F.interpolate`` mode for resizing the ground truth in the
            resized evaluation: ``'nearest-exact'`` (pixel centres: PIL's ``NEAREST``, which
            LAVT uses, and the same sampling grid as the bilinear resize of the logits) or
            ``'nearest'`` (``floor(i * scale)``: cv2 / mmcv's, what the training pipeline
            uses for masks). Defaults to ``'nearest-exact'``.
        out_file (str, optional): dump every sample (ids, sentence, I, U, IoU at both
            resolutions) and the summary to this JSON file. Defaults to None.
        collect_device (str): ``'cpu'`` or ``'gpu'``. Defaults to ``'cpu'``.
        prefix (str, optional): key prefix. Defaults to None.
    """

    def __init__(self,
                 iou_thrs: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
                 resized_eval: bool = True,
                 gt_resize_mode: str = 'nearest-exact',
                 out_file: Optional[str] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None,
                 **kwargs) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, **kwargs)
        self.iou_thrs = tuple(float(t) for t in iou_thrs)
        bad = [t for t in self.iou_thrs if not 0 < t <= 1]
        if bad:
            raise ValueError(f'RefSegMetric: iou_thrs must lie in (0, 1], got {bad}.')
        if gt_resize_mode not in ('nearest', 'nearest-exact'):
            raise ValueError(f'RefSegMetric: gt_resize_mode must be "nearest" or '
                             f'"nearest-exact", got {gt_resize_mode!r}.')
        self.resized_eval = resized_eval
        self.gt_resize_mode = gt_resize_mode
        self.out_file = out_file
        self._warned_fallback = False
        #: the records and protocol of the last ``evaluate`` (main process only)
        self.last_records: List[dict] = []
        self.last_protocol: Dict[str, object] = {}

    # ------------------------------------------------------------------ per batch
    def process(self, data_batch, data_samples: Sequence) -> None:
        """Append one record (I, U, I_r, U_r, ids, text) per sample to ``self.results``."""
        for sample in data_samples:
            pred = _pixel_data(_field(sample, 'pred_sem_seg'))
            gt = _pixel_data(_field(sample, 'gt_sem_seg'))
            if pred is None or gt is None:
                raise KeyError('RefSegMetric needs "pred_sem_seg" and "gt_sem_seg" in every '
                               'data sample: run the model in test mode with a pipeline that '
                               'loads the annotation (LoadRefAnnotations).')
            pred, gt = pred.squeeze(), gt.squeeze().to(pred.device)
            if pred.shape != gt.shape:
                raise ValueError(
                    f'RefSegMetric: prediction {tuple(pred.shape)} and ground truth '
                    f'{tuple(gt.shape)} differ in size ({_field(sample, "img_path")}). The '
                    'test pipeline must run LoadRefAnnotations after Resize so the ground '
                    'truth stays at the original size.')
            gt_fg = gt == 1
            record = dict(zip(('I', 'U'), intersect_union(pred == 1, gt_fg)))
            if self.resized_eval:
                (record['I_r'], record['U_r'], record['hw_r'],
                 record['src_r']) = self._resized_iu(sample, pred, gt_fg)
            for key in TRACE_KEYS:
                value = _field(sample, key)
                record[key] = value.item() if isinstance(value, torch.Tensor) else value
            self.results.append(record)

    def _resized_iu(self, sample, pred: torch.Tensor, gt_fg: torch.Tensor) -> tuple:
        """``(I, U, (h, w), source)`` at ``img_shape`` (the network input)."""
        img_shape = _field(sample, 'img_shape')
        if img_shape is None:
            raise KeyError('RefSegMetric(resized_eval=True) needs "img_shape" in the '
                           'metainfo (PackRefSegInputs keeps it), or set resized_eval=False.')
        size = tuple(int(s) for s in img_shape[:2])
        pred_in = _pixel_data(_field(sample, 'input_pred_sem_seg'))
        if pred_in is not None:
            pred_in = pred_in.squeeze()
            if tuple(pred_in.shape) != size:
                raise ValueError(f'RefSegMetric: input_pred_sem_seg is {tuple(pred_in.shape)} '
                                 f'but img_shape is {size} ({_field(sample, "img_path")}).')
            pred_fg, source = pred_in == 1, 'input'
        else:
            logits = _pixel_data(_field(sample, 'seg_logits'))
            if logits is not None and logits.shape[0] < 2:
                logits = None  # one sigmoid channel: its threshold is the head's
            source = 'seg_logits' if logits is not None else 'pred_sem_seg'
            if not self._warned_fallback:
                warnings.warn(f'RefSegMetric: no "input_pred_sem_seg" in the data samples (a '
                              f'segmentor other than RefEncoderDecoder); the resized '
                              f'evaluation resizes "{source}" from the original size to the '
                              'input size instead, an approximation of the protocol.')
                self._warned_fallback = True
            if logits is not None:
                logits = F.interpolate(logits[None].float(), size=size, mode='bilinear',
                                       align_corners=False)[0]
                pred_fg = logits.argmax(0) == 1
            else:
                pred_fg = F.interpolate(pred[None, None].float(), size=size,
                                        mode='nearest')[0, 0] == 1
        gt_r = self.resize_gt(gt_fg.to(pred_fg.device), size)
        return intersect_union(pred_fg, gt_r) + (size, source)

    def resize_gt(self, gt_fg: torch.Tensor, size: tuple) -> torch.Tensor:
        """H×W boolean ground truth → ``size`` with ``gt_resize_mode`` (docs/metrics.md)."""
        return F.interpolate(gt_fg[None, None].to(torch.uint8), size=size,
                             mode=self.gt_resize_mode)[0, 0] > 0

    # ------------------------------------------------------------------ summary
    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """oIoU / mIoU / P@X (percent), then the same with the ``resized/`` prefix.

        Also keeps :attr:`last_records` (:meth:`sample_records`) and :attr:`last_protocol`
        (:meth:`protocol`) for ``MultiSplitTestLoop`` (on the main process only).
        """
        logger: MMLogger = MMLogger.get_current_instance()
        if not results:
            print_log("RefSegMetric: no samples were evaluated.", logger, level=logging.WARNING)
        metrics = summarize([r['I'] for r in results], [r['U'] for r in results],
                            self.iou_thrs)
        resized = None
        if self.resized_eval:
            resized = summarize([r['I_r'] for r in results], [r['U_r'] for r in results],
                                self.iou_thrs)
            metrics.update((f'resized/{k}', v) for k, v in resized.items())
        self.last_protocol = self.protocol(results)
        self.last_records = self.sample_records(results)
        print_log('\n' + self._table(metrics, resized, len(results)), logger)
        if self.out_file:
            self._dump(self.last_records, metrics)
            print_log(f'RefSegMetric: per-sample results written to {self.out_file}', logger)
        return metrics

    def protocol(self, results: List[dict]) -> Dict[str, object]:
        """How the figures were computed, in words (for reports and JSON dumps)."""
        out = OrderedDict(
            original="prediction vs ground truth at each image's original size",
            iou='per sample I/U over the foreground; IoU = 0 when U = 0; oIoU = sum I / '
                'sum U; mIoU = mean IoU; P@X = share with IoU >= X; percent')
        if not self.resized_eval:
            return out
        sources = sorted({r['src_r'] for r in results})
        out['input_size'] = self.input_size_text([r['hw_r'] for r in results])
        how = {'input': 'argmax of the logits at the network input',
               'seg_logits': 'original-size seg_logits resized bilinearly to the input '
                             '(approximation)',
               'pred_sem_seg': 'original-size prediction resized nearest to the input '
                               '(approximation)'}
        out['resized'] = ('at the network input size ({}): {} vs ground truth resized '
                          "'{}'".format(out['input_size'],
                                        ' / '.join(how[s] for s in sources),
                                        self.gt_resize_mode))
        return out

    @staticmethod
    def input_size_text(sizes: Sequence[Sequence[int]]) -> str:
        """``'448×448'`` for one input size, ``'various'`` otherwise."""
        sizes = sorted({tuple(s) for s in sizes})
        if len(sizes) == 1:
            return '{}×{}'.format(*sizes[0])
        return 'various' if sizes else 'none'

    def sample_records(self, results: List[dict]) -> List[dict]:
        """One JSON-friendly dict per sample: ids, sentence, I, U, IoU (and ``_r``)."""
        samples = []
        for r in results:
            item = {k: r.get(k) for k in TRACE_KEYS}
            item.update(I=r['I'], U=r['U'], IoU=r['I'] / r['U'] if r['U'] else 0.0)
            if 'I_r' in r:
                item.update(I_r=r['I_r'], U_r=r['U_r'],
                            IoU_r=r['I_r'] / r['U_r'] if r['U_r'] else 0.0)
            samples.append(item)
        return samples

    def _table(self, original: dict, resized: Optional[dict], n: int) -> str:
        from prettytable import PrettyTable
        names = ['oIoU', 'mIoU'] + [f'P@{t}' for t in self.iou_thrs]
        table = PrettyTable(['resolution (%d samples)' % n] + names)
        table.add_row(['original'] + [f'{original[k]:.2f}' for k in names])
        if resized is not None:
            size = self.last_protocol.get('input_size', 'size')
            table.add_row([f'resized (input {size})'] + [f'{resized[k]:.2f}' for k in names])
        return table.get_string()

    def _dump(self, samples: List[dict], metrics: Dict[str, float]) -> None:
        folder = osp.dirname(osp.abspath(self.out_file))
        mkdir_or_exist(folder)
        with open(self.out_file, 'w') as f:
            json.dump(dict(metrics=metrics, protocol=self.last_protocol, samples=samples), f,
                      indent=1, default=str)
