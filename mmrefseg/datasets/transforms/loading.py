# Copyright (c) mmrefseg contributors. All rights reserved.
"""Referred-object mask loading: COCO segmentation (polygons / RLE) → binary mask.

The mask is the **union** of every part of the annotation (every polygon, or the RLE).
Annotations (like the refer API and LAVT, which read images with PIL) refer to the pixels
**as stored**: a JPEG's EXIF orientation tag is not applied, so the datasets load images with
``LoadImageFromFile(color_type='color_ignore_orientation')``.
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
            orientation = exif_orientation(results.get('img_path'))
            if orientation in TRANSPOSING_ORIENTATIONS and tuple(ori[:2]) == (w, h):
                raise ValueError(
                    f'{where}: the image was loaded {ori[0]}×{ori[1]}, rotated by its EXIF '
                    f'orientation tag ({orientation}), but the annotation ({h}×{w}) refers to '
                    'the pixels as stored. Load images with LoadImageFromFile('
                    "color_type='color_ignore_orientation') (docs/dataset_prepare.md).")
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


#: EXIF orientations that swap height and width (rotations by ±90°, transpositions)
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def exif_orientation(path) -> int:
    """The EXIF orientation tag (1-8) of an image file; 1 (as stored) when it has none.

    Reads the header only (PIL opens lazily). Unreadable files and non-files give 1: this
    only explains a size mismatch, the loader reports unreadable files itself.
    """
    if not isinstance(path, str):
        return 1
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            value = im.getexif().get(0x0112, 1)  # 0x0112 = Orientation
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def check_pixels_as_stored(pipeline, owner: str) -> None:
    """Raise unless every ``LoadImageFromFile`` of ``pipeline`` reads pixels as stored.

    mmcv's default ``color_type='color'`` (and ``'grayscale'``) applies a JPEG's EXIF
    orientation tag (OpenCV and Pillow alike); the annotations refer to the stored pixels,
    so the mask would be misaligned (rotated or flipped) on every tagged image.
    """
    for t in pipeline:
        if isinstance(t, dict):
            kind = t.get('type', '')
            name = getattr(kind, '__name__', str(kind))
            color = t.get('color_type', 'color')
        else:
            name, color = type(t).__name__, getattr(t, 'color_type', None)
        if name.split('.')[-1] == 'LoadImageFromFile' and color in ('color', 'grayscale'):
            raise ValueError(
                f"{owner}: the pipeline's LoadImageFromFile has color_type={color!r}, which "
                'applies a JPEG\'s EXIF orientation tag, but the annotations refer to the '
                'pixels as stored (the refer API, LAVT): the mask would be rotated against '
                "the image. Use dict(type='LoadImageFromFile', "
                f"color_type='{color}_ignore_orientation').")


def _where(results: dict) -> str:
    keys = [k for k in ('img_path', 'ref_id', 'ann_id') if k in results]
    return ', '.join(f'{k} {results[k]}' for k in keys) or 'sample'
