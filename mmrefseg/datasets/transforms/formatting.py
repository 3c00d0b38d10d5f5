# Copyright (c) mmrefseg contributors. All rights reserved.
"""Pack a referring-segmentation sample: image, mask, token ids and trace-back metainfo."""
import numpy as np
import torch

from mmseg.datasets.transforms import PackSegInputs
from mmseg.registry import TRANSFORMS

#: mmseg's default meta keys + what traces a result back to the refer data.
REF_META_KEYS = ('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape',
                 'scale_factor', 'flip', 'flip_direction', 'reduce_zero_label', 'ref_id',
                 'sent_id', 'ann_id', 'image_id', 'category_id', 'text')


@TRANSFORMS.register_module()
class PackRefSegInputs(PackSegInputs):
    """:class:`mmseg.datasets.transforms.PackSegInputs` plus the sentence.

    Returns ``dict(inputs=C×H×W uint8 tensor, data_samples=SegDataSample)``; the sample
    has ``gt_sem_seg`` (``1×H×W``) when a mask was loaded, and the **data fields**
    ``text_ids`` / ``text_mask`` (LongTensor ``(max_length,)``, moved by ``.to(device)``)
    when :class:`TokenizeText` ran. Metainfo: ``meta_keys`` (default
    :data:`REF_META_KEYS`).
    """

    def __init__(self, meta_keys=REF_META_KEYS) -> None:
        super().__init__(meta_keys=tuple(meta_keys))

    def transform(self, results: dict) -> dict:
        packed = super().transform(results)
        sample = packed['data_samples']
        for key in ('text_ids', 'text_mask'):
            if key in results:
                value = results[key]
                if isinstance(value, np.ndarray):
                    value = torch.from_numpy(value.astype(np.int64))
                sample.set_data({key: torch.as_tensor(value, dtype=torch.long)})
        return packed
