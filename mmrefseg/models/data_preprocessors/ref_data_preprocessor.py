# Copyright (c) mmrefseg contributors. All rights reserved.
"""``RefSegDataPreProcessor``: mmseg's ``SegDataPreProcessor`` for image + text batches.

Images are normalised and stacked exactly as mmseg does; the text (``text_ids``,
``text_mask``: LongTensor ``(Nt,)`` data fields of every ``SegDataSample``) moves to the
device with the samples and is stacked to B×Nt by the segmentor. Differences from mmseg:

* every sample is checked for its text fields (a clear error names the missing step),
  and their VALUES (token ids in ``[0, vocab_size)``, at least one valid token) are checked
  on the dataloader's CPU tensors **before** they move to the device, where reading them
  costs nothing (on the device it would be a host–device sync: see
  :mod:`mmrefseg.models.utils.text_checks`). ``vocab_size`` is set by the segmentor from
  its text encoder;
* the BGR→RGB swap is a ``flip`` before the move (mmseg indexes the device tensor with a
  Python list, which copies an index tensor to the device and waits for it), and the move
  to the device is ``non_blocking`` by default: the training step does not wait for the
  device before its first kernel;
* in training without ``size``/``size_divisor`` equal-sized images are simply stacked
  (mmseg asserts instead), since the RIS pipelines resize to a fixed 448×448.
"""
from typing import Any, Dict, Optional

import torch
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.registry import MODELS

from ..utils import check_text_values

__all__ = ['RefSegDataPreProcessor']


@MODELS.register_module()
class RefSegDataPreProcessor(SegDataPreProcessor):
    """mmseg's ``SegDataPreProcessor`` for image + text batches.

    Args:
        text_keys (tuple[str]): the data fields every sample must carry, ids then mask.
            Default ``('text_ids', 'text_mask')``.
        vocab_size (int | None): token ids must be below it. Default None: set by
            ``RefEncoderDecoder`` from its text encoder.
        non_blocking (bool): asynchronous host-to-device copies. Default True.
        *args, **kwargs: as :class:`mmseg.models.SegDataPreProcessor`.

    Shapes: ``inputs`` list of 3×H×W → B×3×H×W float; samples keep ``text_ids``/``text_mask``
    of shape ``(Nt,)`` on the device.
    """

    def __init__(self, *args, text_keys=('text_ids', 'text_mask'),
                 vocab_size: Optional[int] = None, non_blocking: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.text_keys = tuple(text_keys)
        self.vocab_size = vocab_size
        self._non_blocking = non_blocking
        # the swap is done here, on the host (see the module docstring), never by mmseg
        self.swap_channels, self.channel_conversion = self.channel_conversion, False

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
            ids, mask = (s.get(k) for k in self.text_keys[:2])
            check_text_values(
                ids, mask, self.vocab_size, 'RefSegDataPreProcessor',
                f'data sample {i} (img_path={s.metainfo.get("img_path")}, '
                f'text={s.metainfo.get("text")!r})')
        if self.swap_channels:
            data = dict(data, inputs=[self._swap(x) for x in data['inputs']])
        if training and self.size is None and self.size_divisor is None:
            return self._stack_same_size(data)
        return super().forward(data, training)

    @staticmethod
    def _swap(x):
        """BGR↔RGB of a 3×H×W image: ``flip`` of the channels (mmseg's ``x[[2, 1, 0]]``
        builds an index tensor from a list, a blocking copy when ``x`` is on a GPU)."""
        if not isinstance(x, torch.Tensor) or x.dim() < 3 or x.size(0) != 3:
            return x
        return x.flip(0)

    def _stack_same_size(self, data: dict) -> Dict[str, Any]:
        data = self.cast_data(data)
        inputs, samples = data['inputs'], data['data_samples']
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
