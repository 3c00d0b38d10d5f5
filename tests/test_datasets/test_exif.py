# Copyright (c) mmrefseg contributors. All rights reserved.
"""Images with an EXIF orientation tag (6, 8: rotated by ±90° for display).

The refer annotations refer to the pixels as stored, so the datasets read them as stored
and image and mask align; an orientation-applying loader is refused with the fix, and a
rotated load is explained as such (never "the image does not belong to this annotation").
"""
import numpy as np
import pytest
from mmcv.transforms import Compose

from mmrefseg.datasets import RefCOCODataset
from mmrefseg.datasets.transforms import LoadRefAnnotations
from mmrefseg.datasets.transforms.loading import exif_orientation
from mmseg.registry import TRANSFORMS

H, W = 40, 64  # as stored: landscape; shown upright (tags 6, 8) as 64×40 portrait
BOX = (8, 4, 40, 20)  # x0, y0, x1, y1 of the object, in stored pixels
AS_STORED = [dict(type='LoadImageFromFile', color_type='color_ignore_orientation'),
             dict(type='LoadRefAnnotations')]


def stored_image():
    img = np.full((H, W, 3), 20, np.uint8)
    x0, y0, x1, y1 = BOX
    img[y0:y1, x0:x1] = 230  # the referred object is where the annotation says
    return img


@pytest.mark.parametrize('orientation', [6, 8])
def test_dataset_reads_tagged_images_as_stored_and_the_mask_aligns(refer_root, orientation):
    root = refer_root(n_refs=1, n_sents=1, image=stored_image(), orientation=orientation,
                      box=BOX)
    ds = RefCOCODataset(data_root=root, split='train', pipeline=AS_STORED)
    out = ds[0]
    assert exif_orientation(out['img_path']) == orientation
    img, gt = out['img'], out['gt_seg_map']
    assert img.shape[:2] == gt.shape == (H, W)
    assert img[gt == 1].mean() > 200 and img[gt == 0].mean() < 60  # aligned


@pytest.mark.parametrize('color_type', [None, 'color', 'grayscale'])
def test_dataset_refuses_a_loader_that_applies_the_tag(refer_root, color_type):
    load = dict(type='LoadImageFromFile')
    if color_type:
        load['color_type'] = color_type
    with pytest.raises(ValueError, match=r"applies a JPEG's EXIF orientation.*"
                                         r"_ignore_orientation"):
        RefCOCODataset(data_root=refer_root(n_refs=1, n_sents=1), split='train',
                       pipeline=[load, dict(type='LoadRefAnnotations')])
    built = TRANSFORMS.build(load)  # a built transform is checked too
    with pytest.raises(ValueError, match='EXIF orientation'):
        RefCOCODataset(data_root=refer_root(n_refs=1, n_sents=1), split='train',
                       pipeline=[built])


@pytest.mark.parametrize('orientation', [6, 8])
def test_a_rotated_load_is_explained_not_blamed_on_the_annotation(refer_root, orientation):
    root = refer_root(n_refs=1, n_sents=1, image=stored_image(), orientation=orientation,
                      box=BOX)
    info = RefCOCODataset(data_root=root, split='train', pipeline=AS_STORED).get_data_info(0)
    rotating = Compose([TRANSFORMS.build(dict(type='LoadImageFromFile')),  # 'color'
                        LoadRefAnnotations()])
    with pytest.raises(ValueError) as err:
        rotating(info)
    msg = str(err.value)
    assert f'rotated by its EXIF orientation tag ({orientation})' in msg, msg
    assert "color_type='color_ignore_orientation'" in msg
    assert 'does not belong' not in msg


def test_exif_orientation_of_untagged_missing_and_non_images(refer_root, tmp_path):
    root = refer_root(n_refs=1, n_sents=1, image=stored_image())
    assert exif_orientation(f'{root}/images/mscoco/images/train2014/img.jpg') == 1
    assert exif_orientation(str(tmp_path / 'nothing.jpg')) == 1
    (tmp_path / 'text.jpg').write_text('not an image')
    assert exif_orientation(str(tmp_path / 'text.jpg')) == 1
    assert exif_orientation(None) == 1
