# Copyright (c) mmrefseg contributors. All rights reserved.
"""Referred-object mask loading: COCO segmentation (polygons / RLE) → binary mask.

The mask is the **union** of every part of the annotation (every polygon, or the RLE).
The refer API instead *sums* the decoded parts and LAVT keeps the pixels ``== 1``, which
drops the (rare) pixels where two polygons of one object overlap; see docs/metrics.md.
"""
import numbers

import numpy as np
from mmcv.transforms import BaseTransform
from pycocotools import _mask
from pycocotools import mask as mask_utils

from mmseg.registry import TRANSFORMS


def _to_rles(segmentation, h: int, w: int) -> list:
    """COCO segmentation → list of compressed RLE dicts (pycocotools' own conversion)."""
    if isinstance(segmentation, dict):  # RLE, compressed (str/bytes) or not (list)
        if 'counts' not in segmentation or 'size' not in segmentation:
            raise ValueError(f'RLE segmentation needs "counts" and "size", got keys '
                             f'{sorted(segmentation)}.')
        size = [int(s) for s in segmentation['size']]
        if size != [h, w]:
            raise ValueError(f'RLE size {size} does not match the image size {[h, w]} '
                             '(height, width from instances.json).')
        counts = segmentation['counts']
        if isinstance(counts, list):  # uncompressed
            return [mask_utils.frPyObjects(segmentation, h, w)]
        if isinstance(counts, str):
            counts = counts.encode('ascii')
        return [dict(size=size, counts=counts)]
    if isinstance(segmentation, (list, tuple)) and segmentation:
        if isinstance(segmentation[0], numbers.Number):  # one flat polygon
            segmentation = [segmentation]
        polys = [[float(x) for x in p] for p in segmentation]
        # ``frPyObjects`` takes a 4-number first polygon for a bbox; ``frPoly`` (what it
        # calls for polygon lists) does not.
        return _mask.frPoly(polys, h, w)
    raise ValueError(f'unsupported COCO segmentation {type(segmentation).__name__} '
                     f'{str(segmentation)[:80]}: expected a non-empty polygon list or an '
                     'RLE dict with "counts" and "size".')


def decode_segmentation(segmentation, h: int, w: int) -> np.ndarray:
    """Decode a COCO segmentation into one binary mask.

    Args:
        segmentation: a polygon list (``[[x1, y1, ...], ...]``), an uncompressed RLE
            (``counts`` a list) or a compressed RLE (``counts`` str / bytes).
        h, w (int): image height and width.

    Returns:
        np.ndarray: ``h×w`` uint8 in {0, 1}, the union of all parts.
    """
    rles = _to_rles(segmentation, int(h), int(w))
    masks = mask_utils.decode(rles)  # h×w×n (or h×w for one RLE dict)
    if masks.ndim == 3:
        masks = masks.max(axis=2)
    return np.ascontiguousarray(masks.astype(np.uint8))


@TRANSFORMS.register_module()
class LoadRefAnnotations(BaseTransform):
    """Decode the referred object's mask.

    Required keys: ``segmentation`` and ``height``, ``width`` (the annotation's image size;
    when absent, ``ori_shape`` of the loaded image is used). ``ori_shape``, when present, is
    checked against ``height``/``width``.

    Added keys: ``gt_seg_map`` (uint8 ``H×W`` in {0, 1}, at the annotation's (= original)
    size); ``'gt_seg_map'`` is appended to ``seg_fields``. Put it before ``Resize`` for
    training (the mask is resized with the image) and after it for testing (the ground
    truth stays at the original size).
    """

    def transform(self, results: dict) -> dict:
        where = _where(results)
        ori = results.get('ori_shape')
        if 'height' in results and 'width' in results:
            h, w = int(results['height']), int(results['width'])
        elif ori is not None:  # no annotation size: use the loaded image's
            h, w = int(ori[0]), int(ori[1])
        else:
            raise KeyError(f'{where}: LoadRefAnnotations needs "height" and "width" (from the '
                           'annotation file) or a loaded image ("ori_shape").')
        if ori is not None and tuple(ori[:2]) != (h, w):
            raise ValueError(
                f'{where}: the image file is {ori[0]}×{ori[1]} but instances.json says '
                f'{h}×{w}. The image does not belong to this annotation: check img_dir and '
                'that the images are the original COCO train2014 files.')
        try:
            results['gt_seg_map'] = decode_segmentation(results['segmentation'], h, w)
        except ValueError as e:
            raise ValueError(f'{where}: {e}') from e
        seg_fields = results.setdefault('seg_fields', [])
        if 'gt_seg_map' not in seg_fields:
            seg_fields.append('gt_seg_map')
        return results


def _where(results: dict) -> str:
    keys = [k for k in ('img_path', 'ref_id', 'ann_id') if k in results]
    return ', '.join(f'{k} {results[k]}' for k in keys) or 'sample'
