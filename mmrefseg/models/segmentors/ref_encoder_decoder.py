# Copyright (c) mmrefseg contributors. All rights reserved.
"""``RefEncoderDecoder``: mmseg's ``EncoderDecoder`` with a language encoder.

    ids, mask (B×Nt, from the data samples) → text_encoder → L (B×Nt×C_t), word_mask (B×Nt)
    backbone(img, L, word_mask) → (F_1, F_2, F_3, F_4, Q)
    decode_head(...) → Y (B×2×H/4×W/4) [, priors]

The language encoder is built from ``text_encoder=dict(...)`` as mmseg 1.2.2's
``MultimodalEncoderDecoder`` does (mmseg's ``neck`` runs after the backbone). Any mmseg
decode head works: stock heads pick the maps with ``in_index`` and ignore Q; a head with a
``predict_with_priors`` method (``LQPGHead``) also returns its mask priors, which
``predict`` stores on every sample as ``mask_priors`` when asked to (``return_priors``).

Query selection (Table 3): a head ``query_source=(i, ...)`` (a subset of the K queries the
backbone returns) on a backbone with ``query_stages`` is routed to the backbone: it builds
the query branches of those stages only and the head takes all of them. Otherwise the
query branches of the other stages would run without a gradient, which DDP
(``find_unused_parameters=False``) rejects.
"""
import copy
import inspect
import logging
from typing import List, Optional, Sequence

import torch
from mmengine.logging import print_log
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.utils import ConfigType, OptConfigType, OptMultiConfig, OptSampleList, SampleList
from torch import Tensor

__all__ = ['RefEncoderDecoder']


def route_query_source(backbone, decode_head):
    """``(backbone, decode_head)`` configs with a head ``query_source`` subset moved to the
    backbone's ``query_stages`` (see the module docstring); unchanged otherwise."""
    if not isinstance(backbone, dict) or not isinstance(decode_head, dict):
        return backbone, decode_head
    source = decode_head.get('query_source', 'all')
    kind = backbone.get('type')
    cls = MODELS.get(kind) if isinstance(kind, str) else kind
    params = inspect.signature(cls.__init__).parameters if inspect.isclass(cls) else {}
    if source == 'all' or 'query_stages' not in params:
        return backbone, decode_head
    source = tuple(int(i) for i in source)
    stages = tuple(sorted(backbone.get('query_stages', params['query_stages'].default)))
    if not source or list(source) != sorted(set(source)) or source[-1] >= len(stages):
        raise ValueError(
            f'decode_head.query_source={source} must be increasing, distinct indices into '
            f'the {len(stages)} queries of backbone.query_stages={stages} (stage order).')
    selected = tuple(stages[i] for i in source)
    backbone, decode_head = copy.deepcopy(backbone), copy.deepcopy(decode_head)
    backbone['query_stages'] = selected
    decode_head['query_source'] = 'all'
    decode_head['num_queries'] = len(selected)
    print_log(f'RefEncoderDecoder: decode_head.query_source={source} → backbone.'
              f'query_stages={selected} (only those query branches are built).',
              logger='current', level=logging.INFO)
    return backbone, decode_head


@MODELS.register_module()
class RefEncoderDecoder(EncoderDecoder):
    """Referring segmentor: text encoder + text-conditioned backbone + decode head.

    Args:
        text_encoder (dict): config of the language encoder; called as
            ``text_encoder(text_ids, text_mask)`` → ``(L, word_mask)``.
        backbone (dict): called as ``backbone(img, L, word_mask)``; returns the feature
            maps followed by the query tensor (``(F_1, F_2, F_3, F_4, Q)``).
        decode_head, neck, auxiliary_head, train_cfg, test_cfg, data_preprocessor,
        pretrained, init_cfg: as :class:`mmseg.models.EncoderDecoder`. A ``neck`` is applied
        to the maps only (Q is passed on unchanged). ``test_cfg.mode`` must be 'whole'.
        A head ``query_source`` subset becomes the backbone's ``query_stages``
        (:func:`route_query_source`).

    ``test_cfg`` keys: ``mode`` (must be ``'whole'``), ``return_logits`` (default True) and
    ``return_priors`` (default False): what :meth:`predict` stores besides the masks.

    Modes: ``loss`` (dict of losses), ``tensor`` (the head's raw output) and ``predict``:
    data samples with

    - ``pred_sem_seg`` (1×H×W uint8 at the original size);
    - ``input_pred_sem_seg`` (1×h×w uint8 at the network input size ``img_shape``: the
      argmax of the logits there, the prediction ``RefSegMetric``'s resized protocol scores);
    - ``seg_logits`` (C×H×W at the original size, mmseg's field), only with
      ``return_logits`` (2×4 bytes per pixel: 384 MB on an 8000×6000 image, so the
      evaluation configs switch it off);
    - ``mask_priors`` (N_l×H×W foreground probabilities at the original size), only with
      ``return_priors`` and a head with a ``predict_with_priors`` method (``LQPGHead``);
      without it the head does not even compute the intermediate priors.

    One image with several sentences: pass ``inputs`` of batch 1 and one data sample per
    sentence (predict / tensor).
    """

    def __init__(self,
                 text_encoder: ConfigType,
                 backbone: ConfigType,
                 decode_head: ConfigType,
                 neck: OptConfigType = None,
                 auxiliary_head: OptConfigType = None,
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = dict(mode='whole'),
                 data_preprocessor: OptConfigType = None,
                 pretrained: Optional[str] = None,
                 init_cfg: OptMultiConfig = None):
        backbone, decode_head = route_query_source(backbone, decode_head)
        super().__init__(backbone=backbone, decode_head=decode_head, neck=neck,
                         auxiliary_head=auxiliary_head, train_cfg=train_cfg,
                         test_cfg=test_cfg, data_preprocessor=data_preprocessor,
                         pretrained=pretrained, init_cfg=init_cfg)
        if text_encoder is None:
            raise ValueError('RefEncoderDecoder needs text_encoder=dict(type=...), e.g. '
                             "dict(type='BertTextEncoder', ...).")
        self.text_encoder = MODELS.build(text_encoder)
        # the preprocessor checks token ids on the host, before the move (no device sync)
        if getattr(self.data_preprocessor, 'vocab_size', 0) is None:
            self.data_preprocessor.vocab_size = getattr(self.text_encoder, 'vocab_size', None)
        if self.test_cfg is not None and self.test_cfg.get('mode', 'whole') != 'whole':
            raise ValueError(f"RefEncoderDecoder supports test_cfg.mode='whole' only (one "
                             f"sentence per image crop is ill-defined), got "
                             f"{self.test_cfg.get('mode')!r}.")

    # ------------------------------------------------------------------ features
    @staticmethod
    def _stack_text(data_samples: SampleList, device) -> tuple:
        if data_samples is None:
            raise ValueError('RefEncoderDecoder needs data samples carrying text_ids and '
                             'text_mask (the pipeline must run TokenizeText then '
                             'PackRefSegInputs).')
        ids, masks = [], []
        for i, s in enumerate(data_samples):
            if 'text_ids' not in s or 'text_mask' not in s:
                raise ValueError(
                    f'data sample {i} has no text_ids/text_mask (keys: {list(s.keys())}); '
                    'the pipeline must run TokenizeText then PackRefSegInputs.')
            ids.append(torch.as_tensor(s.text_ids).reshape(-1))
            masks.append(torch.as_tensor(s.text_mask).reshape(-1))
        if len({len(t) for t in ids}) != 1:
            raise ValueError(f'text_ids of different lengths in one batch: '
                             f'{[len(t) for t in ids]}; tokenize with a fixed max_length.')
        return (torch.stack(ids).long().to(device), torch.stack(masks).long().to(device))

    def extract_feat(self, inputs: Tensor, data_samples: OptSampleList = None) -> tuple:
        """Text and image features: ``(F_1, F_2, F_3, F_4, Q)`` (B×C_i×H_i×W_i, B×K×C_q)."""
        ids, mask = self._stack_text(data_samples, inputs.device)  # B×Nt
        if inputs.shape[0] != ids.shape[0]:
            raise ValueError(f'{inputs.shape[0]} images but {ids.shape[0]} sentences; pass one '
                             'data sample per image, or one image with several sentences '
                             '(predict / tensor mode).')
        text_feats, word_mask = self.text_encoder(ids, mask)  # L: B×Nt×C_t, B×Nt
        x = self.backbone(inputs, text_feats, word_mask)
        if self.with_neck:
            x = tuple(self.neck(x[:-1])) + (x[-1], )
        return x

    @staticmethod
    def _broadcast_image(inputs: Tensor, data_samples: OptSampleList) -> Tensor:
        """One image, several sentences: repeat the image once per data sample."""
        if data_samples is not None and inputs.shape[0] == 1 and len(data_samples) > 1:
            return inputs.expand(len(data_samples), *inputs.shape[1:])
        return inputs

    # ------------------------------------------------------------------ modes
    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        x = self.extract_feat(inputs, data_samples)
        losses = dict()
        losses.update(self._decode_head_forward_train(x, data_samples))
        if self.with_auxiliary_head:
            losses.update(self._auxiliary_head_forward_train(x, data_samples))
        return losses

    def _forward(self, inputs: Tensor, data_samples: OptSampleList = None):
        inputs = self._broadcast_image(inputs, data_samples)
        return self.decode_head.forward(self.extract_feat(inputs, data_samples))

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict],
                      data_samples: OptSampleList = None) -> Tensor:
        """Logits at the input (padded) size; needs the data samples for the text."""
        x = self.extract_feat(inputs, data_samples)
        return self.decode_head.predict(x, batch_img_metas, self.test_cfg)

    def predict(self,
                inputs: Tensor,
                data_samples: OptSampleList = None,
                return_logits: Optional[bool] = None,
                return_priors: Optional[bool] = None) -> SampleList:
        """Predict masks; see the class docstring for what each sample carries.

        Args:
            inputs (Tensor): B×3×H×W (or 1×3×H×W with several data samples).
            data_samples (list[SegDataSample]): one per sentence.
            return_logits (bool, optional): also store ``seg_logits`` (C×H×W at the
                original size). Defaults to ``test_cfg.return_logits`` (True).
            return_priors (bool, optional): also compute ``mask_priors`` (N_l×H×W at the
                original size). Defaults to ``test_cfg.return_priors`` (False).
        """
        test_cfg = self.test_cfg or {}
        if return_logits is None:
            return_logits = test_cfg.get('return_logits', True)
        if return_priors is None:
            return_priors = test_cfg.get('return_priors', False)
        inputs = self._broadcast_image(inputs, data_samples)
        if data_samples is None:
            self._stack_text(None, inputs.device)  # raises the explanatory error
        batch_img_metas = [s.metainfo for s in data_samples]
        for meta in batch_img_metas:  # a bare sample (API use) gets mmseg's defaults
            meta.setdefault('ori_shape', tuple(inputs.shape[2:]))
            meta.setdefault('img_shape', tuple(inputs.shape[2:]))
        x = self.extract_feat(inputs, data_samples)
        priors = None
        if return_priors and hasattr(self.decode_head, 'predict_with_priors'):
            seg_logits, priors = self.decode_head.predict_with_priors(x, batch_img_metas)
        else:
            seg_logits = self.decode_head.predict(x, batch_img_metas, self.test_cfg)
        for s, meta in zip(data_samples, batch_img_metas):
            s.set_metainfo(dict(ori_shape=meta['ori_shape'], img_shape=meta['img_shape']))
        data_samples = self.postprocess_result(seg_logits, data_samples, return_logits)
        if priors is not None:
            for i, s in enumerate(data_samples):
                s.set_data(dict(mask_priors=PixelData(data=resize(
                    self._to_input_size(priors[i:i + 1], s.metainfo),
                    size=s.metainfo['ori_shape'], mode='bilinear',
                    align_corners=self.align_corners, warning=False).squeeze(0))))
        return data_samples

    def postprocess_result(self,
                           seg_logits: Tensor,
                           data_samples: OptSampleList = None,
                           return_logits: bool = True) -> SampleList:
        """Logits at the padded input size → what each sample needs, as mmseg's
        ``postprocess_result`` (padding removed, flip undone, bilinear resize to
        ``ori_shape``), plus the prediction at the input size.

        Args:
            seg_logits (Tensor): B×C×H_pad×W_pad.
            data_samples (list[SegDataSample], optional): with the metainfo.
            return_logits (bool): store ``seg_logits`` (C×H×W at the original size).
                Defaults to True (mmseg's behaviour).

        Returns:
            list[SegDataSample]: ``pred_sem_seg`` (1×H×W uint8 at ``ori_shape``),
            ``input_pred_sem_seg`` (1×h×w uint8 at ``img_shape``: the argmax of the
            logits at the network input, what ``RefSegMetric``'s resized protocol scores)
            and, with ``return_logits``, ``seg_logits``.
        """
        if data_samples is None:
            return super().postprocess_result(seg_logits, None)
        for i, sample in enumerate(data_samples):
            meta = sample.metainfo
            logits = self._to_input_size(seg_logits[i:i + 1], meta)  # 1×C×h×w
            sample.set_data(dict(input_pred_sem_seg=PixelData(data=self._labels(logits)[0])))
            logits = resize(logits, size=meta['ori_shape'], mode='bilinear',
                            align_corners=self.align_corners, warning=False)
            if logits.shape[1] == 1:
                logits = logits.sigmoid()  # mmseg stores probabilities for one channel
            sample.set_data(dict(pred_sem_seg=PixelData(data=self._labels(logits, True)[0])))
            if return_logits:
                sample.set_data(dict(seg_logits=PixelData(data=logits[0])))
            del logits
        return data_samples

    def _labels(self, logits: Tensor, probs: bool = False) -> Tensor:
        """1×C×h×w logits (``probs``: sigmoid probabilities when C = 1) → 1×1×h×w uint8.

        For C = 2, ``logits[1] > logits[0]`` is the argmax (ties → 0) without its int64
        intermediate (8 bytes per pixel: 0.4 GB on an 8000×6000 image)."""
        c = logits.shape[1]
        if c == 1:
            p = logits if probs else logits.sigmoid()
            return (p > self.decode_head.threshold).to(torch.uint8)
        if c == 2:
            return (logits[:, 1:2] > logits[:, :1]).to(torch.uint8)
        pred = logits.argmax(dim=1, keepdim=True)
        return pred.to(torch.uint8) if c <= 256 else pred

    @staticmethod
    def _to_input_size(maps: Tensor, img_meta: dict) -> Tensor:
        """1×N×H_pad×W_pad → 1×N×h×w at ``img_shape``: padding removed and flip undone,
        as :meth:`mmseg.models.BaseSegmentor.postprocess_result` does."""
        h, w = maps.shape[2:]
        left, right, top, bottom = img_meta.get('img_padding_size',
                                                img_meta.get('padding_size', [0] * 4))
        maps = maps[:, :, top:h - bottom, left:w - right]
        if img_meta.get('flip', None):
            maps = maps.flip(dims=(3, ) if img_meta.get('flip_direction') == 'horizontal'
                             else (2, ))
        return maps
