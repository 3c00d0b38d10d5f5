# Copyright (c) mmrefseg contributors. All rights reserved.
"""``RefSegDataPreProcessor``: mmseg's ``SegDataPreProcessor`` for image + text batches.

Images are normalised and stacked exactly as mmseg does; the text (``text_ids``,
``text_mask``: LongTensor ``(Nt,)`` data fields of every ``SegDataSample``) moves to the
device with the samples and is stacked to B×Nt by the segmentor. Differences from mmseg:

* every sample is checked for its text fields (a clear error names the missing step);
* in training without ``size``/``size_divisor`` equal-sized images are simply stacked
  (mmseg asserts instead), since the RIS pipelines resize to a fixed 448×448.
"""
from typing import Any, Dict

import torch
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.registry import MODELS

__all__ = ['RefSegDataPreProcessor']


@MODELS.register_module()
class RefSegDataPreProcessor(SegDataPreProcessor):
    """Args: as :class:`mmseg.models.SegDataPreProcessor`; ``text_keys`` = the data fields
    every sample must carry (``('text_ids', 'text_mask')``).

    Shapes: ``inputs`` list of 3×H×W → B×3×H×W float; samples keep ``text_ids``/``text_mask``
    of shape ``(Nt,)`` on the device.
    """

    def __init__(self, *args, text_keys=('text_ids', 'text_mask'), **kwargs):
        super().__init__(*args, **kwargs)
        self.text_keys = tuple(text_keys)

    def forward(self, data: dict, training: bool = False) -> Dict[str, Any]:
        samples = data.get('data_samples', None)
        if samples is None:
            raise ValueError('RefSegDataPreProcessor: the batch has no data_samples; the '
                             'pipeline must end with PackRefSegInputs.')
        for i, s in enumerate(samples):
            missing = [k for k in self.text_keys if k not in s]
            if missing:
                raise ValueError(
                    f'RefSegDataPreProcessor: data sample {i} has no {missing} '
                    f'(img_path={s.metainfo.get("img_path")}); add TokenizeText before '
                    f'PackRefSegInputs in the pipeline.')
        if training and self.size is None and self.size_divisor is None:
            return self._stack_same_size(data)
        return super().forward(data, training)

    def _stack_same_size(self, data: dict) -> Dict[str, Any]:
        data = self.cast_data(data)
        inputs, samples = data['inputs'], data['data_samples']
        if self.channel_conversion and inputs[0].size(0) == 3:
            inputs = [x[[2, 1, 0], ...] for x in inputs]
        inputs = [x.float() for x in inputs]
        if self._enable_normalize:
            inputs = [(x - self.mean) / self.std for x in inputs]
        shapes = {tuple(x.shape) for x in inputs}
        if len(shapes) != 1:
            raise ValueError(f'RefSegDataPreProcessor: training images of different sizes '
                             f'{sorted(shapes)}; resize them to one size in the pipeline or set '
                             f'size=(H, W) / size_divisor to pad.')
        inputs = torch.stack(inputs)
        for s in samples:
            s.set_metainfo(dict(pad_shape=tuple(inputs.shape[2:])))
        if self.batch_augments is not None:
            inputs, samples = self.batch_augments(inputs, samples)
        return dict(inputs=inputs, data_samples=samples)
