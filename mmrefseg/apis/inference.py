# Copyright (c) mmrefseg contributors. All rights reserved.
"""Python API: build a referring segmentor and run it on an image + sentences.

    >>> from mmrefseg.apis import init_model, inference_model
    >>> model = init_model('configs/mpg_lqgnet_tiny_refer.py', 'iter_20.pth', device='cpu')
    >>> results = inference_model(model, 'demo.jpg', ['the cat on the left', 'the remote'],
    ...                           return_priors=True)
    >>> results[0].pred_sem_seg.data.shape     # 1×H×W, {0, 1}, original resolution
    >>> results[0].seg_logits.data.shape       # 2×H×W logits (softmax[1] = score map)
    >>> results[0].mask_priors.data.shape      # N_l×H×W prior foreground probabilities
    ...                                        # (only with return_priors=True)

The test pipeline is the config's ``test_dataloader.dataset.pipeline`` without the
annotation loading, fed with the image in memory. MPG-LQGNet fuses language into every
Swin stage (BSAM), so the image encoder runs once **per sentence**; the sentences of one
call go through the model together in batches of ``batch_size``.
"""
import copy
import os.path as osp
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Union

import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.model.utils import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

from ..utils.compat import runner_checkpoint_loading

__all__ = ['init_model', 'inference_model', 'build_inference_pipeline']

#: transforms that read ground truth; dropped from the test pipeline for inference
ANNOTATION_TRANSFORMS = ('LoadRefAnnotations', 'LoadAnnotations', 'mmseg.LoadAnnotations')
#: metainfo the packer may expect from a dataset item (-1 = not from a dataset)
_DEFAULT_META = dict(ref_id=-1, ann_id=-1, image_id=-1, category_id=-1)
_DEFAULT_DATASET_META = dict(classes=('background', 'object'),
                             palette=[[0, 0, 0], [230, 40, 40]])


def _strip_init_cfg(cfg_model) -> None:
    """No pretrained-weight loading for inference: the checkpoint holds every weight."""
    cfg_model.pretrained = None
    for key, value in cfg_model.items():
        if isinstance(value, dict) and 'init_cfg' in value:
            value.init_cfg = None


def init_model(config: Union[str, Path, Config],
               checkpoint: Optional[str] = None,
               device: str = 'cpu',
               cfg_options: Optional[dict] = None):
    """Build a referring segmentor from a config and (optionally) load a checkpoint.

    Args:
        config (str | Path | Config): config file or object.
        checkpoint (str, optional): checkpoint file/URL. Without it the weights are the
            freshly initialised ones (pretrained-weight ``init_cfg`` entries are dropped,
            as mmseg's ``init_model`` does).
        device (str): ``'cpu'``, ``'cuda'``, ``'cuda:1'`` ... Defaults to ``'cpu'``.
        cfg_options (dict, optional): overrides merged into the config.

    Returns:
        nn.Module: the segmentor in eval mode on ``device``, with ``model.cfg`` and
        ``model.dataset_meta`` set.
    """
    if isinstance(config, (str, Path)):
        if not osp.isfile(str(config)):
            raise FileNotFoundError(f'init_model: config file {str(config)!r} not found.')
        config = Config.fromfile(str(config))
    elif not isinstance(config, Config):
        raise TypeError(f'init_model: config must be a file name or a Config, got '
                        f'{type(config).__name__}.')
    config = copy.deepcopy(config)
    if cfg_options is not None:
        config.merge_from_dict(cfg_options)
    if 'model' not in config:
        raise KeyError(f'init_model: the config {getattr(config, "filename", "")} has no '
                       '`model` entry.')
    _strip_init_cfg(config.model)
    config.model.train_cfg = None
    init_default_scope(config.get('default_scope', 'mmseg'))
    if config.get('custom_imports', None):
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**config.custom_imports)
    else:
        import mmrefseg  # noqa: F401  (register the components)

    from mmseg.registry import MODELS
    model = MODELS.build(config.model)
    dataset_meta = None
    if checkpoint is not None:
        with runner_checkpoint_loading(checkpoint):  # torch >= 2.6: allow-list, clear errors
            ckpt = load_checkpoint(model, checkpoint, map_location='cpu')
        dataset_meta = ckpt.get('meta', {}).get('dataset_meta', None)
    if dataset_meta is None:
        dataset_meta = _dataset_meta_from_config(config)
    model.dataset_meta = dataset_meta
    model.cfg = config
    if not str(device).startswith('cuda'):
        model = revert_sync_batchnorm(model)  # SyncBN only runs on CUDA
    model.to(device)
    model.eval()
    return model


def _dataset_meta_from_config(config) -> dict:
    try:
        from mmseg.registry import DATASETS
        dataset_cls = DATASETS.get(config.test_dataloader.dataset.type)
        meta = dict(getattr(dataset_cls, 'METAINFO', {}))
        if 'classes' in meta and 'palette' in meta:
            return meta
    except (AttributeError, KeyError, TypeError):
        pass
    return dict(_DEFAULT_DATASET_META)


def build_inference_pipeline(cfg) -> Compose:
    """The config's test pipeline, minus annotation loading, reading an in-memory image.

    The first transform (``LoadImageFromFile``) is replaced by mmseg's
    ``LoadImageFromNDArray``; every other transform is kept as configured.
    """
    try:
        pipeline = copy.deepcopy(list(cfg.test_dataloader.dataset.pipeline))
    except AttributeError:
        pipeline = copy.deepcopy(list(cfg.get('test_pipeline', []) or []))
    if not pipeline:
        raise KeyError(f'{getattr(cfg, "filename", "config")}: no test pipeline found '
                       '(test_dataloader.dataset.pipeline or test_pipeline).')
    pipeline = [t for t in pipeline if t.get('type') not in ANNOTATION_TRANSFORMS]
    if 'LoadImage' not in pipeline[0].get('type', ''):
        raise ValueError(f'the test pipeline must start with an image loader, got '
                         f'{pipeline[0].get("type")!r}.')
    pipeline[0] = dict(type='LoadImageFromNDArray')
    return Compose(pipeline)


def _read_image(image) -> (np.ndarray, Optional[str]):
    """→ (H×W×3 uint8 BGR array, path or None).

    A file is read UPRIGHT: its EXIF orientation tag is applied (mmcv's ``'color'``), since
    the upright view is what a person describes ("the cup on the left"). Datasets instead
    read pixels as stored, because their annotations refer to those.
    """
    if isinstance(image, (str, Path)):
        path = str(image)
        if not osp.isfile(path):
            raise FileNotFoundError(f'inference_model: image {path!r} not found.')
        img = mmcv.imread(path, flag='color')  # BGR, EXIF orientation applied
        if img is None:
            raise ValueError(f'inference_model: {path!r} is not a readable image.')
        return img, path
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError('inference_model: an image array must be H×W×3 (BGR, as '
                             f'mmcv.imread/cv2.imread give), got shape {image.shape}.')
        return image, None
    raise TypeError(f'inference_model: image must be a path or a numpy array, got '
                    f'{type(image).__name__}.')


def inference_model(model,
                    image: Union[str, np.ndarray],
                    texts: Union[str, Sequence[str]],
                    batch_size: int = 8,
                    return_priors: bool = False) -> List:
    """Segment what each sentence refers to in ``image``.

    Args:
        model (nn.Module): a segmentor from :func:`init_model` (needs ``model.cfg``).
        image (str | np.ndarray): image file (read upright: its EXIF orientation tag
            is applied, so the masks are in the frame a person sees), or an H×W×3 BGR
            uint8 array (used as it is).
        texts (str | Sequence[str]): one sentence or several.
        batch_size (int): sentences per forward. Defaults to 8.
        return_priors (bool): also compute the LQPG mask priors (``mask_priors``).
            Defaults to False (they cost N_l×H×W×4 bytes per sentence: 1.15 GB for
            N_l = 6 on an 8000×6000 image).

    Returns:
        list[SegDataSample]: one per sentence, in order, each with ``pred_sem_seg``
        (1×H×W uint8 in {0, 1}), ``seg_logits`` (2×H×W) and, with ``return_priors`` and a
        head that makes them, ``mask_priors`` (N_l×H×W foreground probabilities), all at
        the original H×W; ``input_pred_sem_seg`` (the mask at the network input size);
        ``text`` and ``sent_id`` (index in ``texts``) in the metainfo.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError('inference_model: texts is empty; give one sentence or a list.')
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f'inference_model: every text must be a non-empty string, got '
                             f'{t!r}.')
    if batch_size < 1:
        raise ValueError(f'inference_model: batch_size must be >= 1, got {batch_size}.')
    cfg = getattr(model, 'cfg', None)
    if cfg is None:
        raise AttributeError('inference_model: the model has no `cfg`; build it with '
                             'mmrefseg.apis.init_model.')
    img, path = _read_image(image)
    pipeline = build_inference_pipeline(cfg)

    items = []
    for i, text in enumerate(texts):
        results = dict(img=img.copy(), text=text, sent_id=i, **_DEFAULT_META)
        out = pipeline(results)
        if path is not None:
            out['data_samples'].set_metainfo(dict(img_path=path))
        items.append(out)

    outputs = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            data = model.data_preprocessor(
                dict(inputs=[it['inputs'] for it in chunk],
                     data_samples=[it['data_samples'] for it in chunk]), False)
            outputs.extend(model.predict(data['inputs'], data['data_samples'],
                                         return_logits=True, return_priors=return_priors))
    model.train(was_training)
    for i, sample in enumerate(outputs):
        if 'text' not in sample.metainfo:
            sample.set_metainfo(dict(text=texts[i]))
        if 'sent_id' not in sample.metainfo:
            sample.set_metainfo(dict(sent_id=i))
    if return_priors and outputs and 'mask_priors' not in outputs[0]:
        warnings.warn('inference_model: the model returned no `mask_priors` (its head makes '
                      'no priors); only the mask and the score map are available.')
    return outputs
