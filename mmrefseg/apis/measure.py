# Copyright (c) mmrefseg contributors. All rights reserved.
"""Helpers of ``tools/analysis_tools/get_flops.py`` and ``benchmark.py``: a synthetic
referring batch (random image, full-length sentence, box mask), a model built without
pretrained downloads - counting and timing need neither a dataset nor real weights - and
the FLOP counter both tools use.

This module imports only torch and mmengine at the top: ``benchmark.py`` loads it by file
path to count the FLOPs of another commit's model with the same rules.
"""
import logging
from typing import Optional, Tuple

import torch
from mmengine.logging import print_log

__all__ = [
    'dummy_data_batch', 'text_max_length', 'build_model_for_measurement', 'flop_counter',
    'FLOP_RULES'
]


def _sdpa_rules() -> dict:
    """FLOP formulas for torch's CPU SDPA kernels (torch counts only the CUDA ones): the
    same formulas as those (2 FLOPs per multiply-add; backward = 2× forward)."""
    from torch.utils import flop_counter as fc
    aten = torch.ops.aten
    rules = {}
    fwd = getattr(aten, '_scaled_dot_product_flash_attention_for_cpu', None)
    bwd = getattr(aten, '_scaled_dot_product_flash_attention_for_cpu_backward', None)
    if fwd is not None:
        def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

        rules[fwd] = _fwd
    if bwd is not None and hasattr(fc, 'sdpa_backward_flop_count'):
        def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args,
                 out_shape=None, **kwargs):
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape,
                                               value_shape)

        rules[bwd] = _bwd
    return rules


#: extra FlopCounterMode rules (CPU SDPA forward and backward)
FLOP_RULES = _sdpa_rules()


def flop_counter(display: bool = False):
    """``torch.utils.flop_counter.FlopCounterMode`` with :data:`FLOP_RULES`: it counts
    matmuls, convolutions and attention (2 FLOPs per multiply-add), forward and backward,
    and ignores element-wise ops, norms, softmax and resizing."""
    from torch.utils.flop_counter import FlopCounterMode
    return FlopCounterMode(display=display, custom_mapping=FLOP_RULES)


def build_model_for_measurement(cfg, checkpoint: Optional[str] = None, device: str = 'cpu'):
    """The config's model with random weights (no Swin / BERT download), BN for SyncBN.

    - every ``init_cfg`` (pretrained Swin) is dropped;
    - ``init_weights`` is not called, so a ``BertTextEncoder`` keeps random weights (its
      architecture: ``config``, a local folder, or bert-base-uncased's built-in config;
      other hub names need their config.json from the HF cache);
    - ``checkpoint`` (optional) is loaded afterwards.
    """
    from mmengine.model.utils import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    from mmseg.registry import MODELS
    from .inference import _strip_init_cfg
    cfg.model.train_cfg = cfg.model.get('train_cfg', None) or dict()
    _strip_init_cfg(cfg.model)
    # BertTextEncoder loads pretrained weights only in init_weights (not called here), and
    # builds bert-base-uncased's architecture offline; other hub names need their config.
    print_log('measurement model: random weights (pretrained Swin/BERT not loaded)',
              logger='current', level=logging.INFO)
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        from mmengine.runner import load_checkpoint

        from ..utils.compat import runner_checkpoint_loading
        with runner_checkpoint_loading(checkpoint):
            load_checkpoint(model, checkpoint, map_location='cpu')
    return revert_sync_batchnorm(model).to(device)

#: bert-base-uncased ids of [CLS] / [SEP]; words are drawn from the ordinary word range
CLS_ID, SEP_ID, WORD_RANGE = 101, 102, (1996, 29611)


def text_max_length(cfg, default: int = 30) -> int:
    """``max_length`` of the config's ``TokenizeText`` (else ``default``)."""
    try:
        for t in cfg.test_dataloader.dataset.pipeline:
            if t.get('type') == 'TokenizeText':
                return int(t.get('max_length', default))
    except AttributeError:
        pass
    return default


def dummy_data_batch(batch_size: int = 1,
                     shape: Tuple[int, int] = (448, 448),
                     text_len: int = 30,
                     max_length: int = 30,
                     with_gt: bool = True,
                     seed: int = 0) -> dict:
    """A batch as the dataloader gives it (before the data preprocessor).

    Args:
        batch_size (int): images (= sentences) in the batch.
        shape (tuple[int, int]): image H, W.
        text_len (int): real tokens per sentence incl. [CLS]/[SEP] (≤ ``max_length``).
        max_length (int): padded text length Nt.
        with_gt (bool): add a random ``gt_sem_seg`` (for a training step).
        seed (int): random seed (the batch is deterministic).

    Returns:
        dict: ``inputs`` (list of 3×H×W uint8 tensors) and ``data_samples`` (list of
        SegDataSample with ``text_ids``/``text_mask`` (Nt,) data fields and the metainfo
        the segmentor needs).
    """
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    if not 2 <= text_len <= max_length:
        raise ValueError(f'dummy_data_batch: text_len={text_len} must be in [2, max_length='
                         f'{max_length}].')
    h, w = shape
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen))
        ids = torch.zeros(max_length, dtype=torch.long)
        ids[1:text_len - 1] = torch.randint(*WORD_RANGE, (text_len - 2, ), generator=gen)
        ids[0], ids[text_len - 1] = CLS_ID, SEP_ID
        mask = torch.zeros(max_length, dtype=torch.long)
        mask[:text_len] = 1
        sample = SegDataSample(metainfo=dict(
            img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0),
            flip=False, flip_direction=None, text='dummy', ref_id=-1, sent_id=-1, ann_id=-1,
            image_id=-1, category_id=-1))
        sample.set_data(dict(text_ids=ids, text_mask=mask))
        if with_gt:
            gt = torch.zeros(1, h, w, dtype=torch.long)
            gt[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1
            sample.gt_sem_seg = PixelData(data=gt)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)
