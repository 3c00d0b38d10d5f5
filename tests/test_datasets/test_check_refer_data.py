# Copyright (c) mmrefseg contributors. All rights reserved.
"""tools/dataset_converters/check_refer_data.py on the fixture and on broken copies."""
import importlib.util
import os
import os.path as osp
import re

import pytest

from .conftest import drop_annotation

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    'check_refer_data', osp.join(ROOT, 'tools', 'dataset_converters', 'check_refer_data.py'))
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def test_fixture_counts_and_ok(tiny_root, capsys):
    assert check.main([tiny_root, '--no-size-check', '--decode-images']) == 0
    out = capsys.readouterr().out
    for row in (r'refcoco/unc \| train \|  4   \|     6     \|   1 ',
                r'refcoco/unc \| testB \|  3   \|     4 ', r'total \|  13  \|     17    \|   4 '):
        assert re.search(row, out), row
    assert 'OK: layout' in out


def test_published_sizes_are_compared(tiny_root, capsys):
    assert check.main([tiny_root]) == 1
    err = capsys.readouterr().err
    assert 'split train has 6 sentences, the published size is 120624' in err
    assert '17 sentences / 13 refs / 4 images; published: 142210 / 50000 / 19994' in err


def test_missing_image_and_annotation(tiny_copy, capsys):
    os.remove(osp.join(tiny_copy, 'images', 'mscoco', 'images', 'train2014',
                       '2011_000025.jpg'))
    drop_annotation(tiny_copy, 9000002)
    assert check.main([tiny_copy, '--no-size-check']) == 1
    err = capsys.readouterr().err
    assert '1 of 4 images missing from' in err and '2011_000025.jpg' in err
    assert 'ref_id 6 names ann_id 9000002, which' in err


@pytest.mark.parametrize('argv,message', [
    (['{root}/nowhere'], 'is not a directory'),
    (['{root}', '--datasets', 'refcoco/berkeley'], "unknown --datasets entry 'refcoco/berkel"),
    (['{root}/refcoco'], r'no refer dataset under'),
    (['{root}', '--datasets', 'refcocog/umd'], r'refs(umd).p not found'),
])
def test_bad_layout(tiny_root, capsys, argv, message):
    assert check.main([a.format(root=tiny_root) for a in argv]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('orientation', [6, 8])
def test_exif_tagged_images_are_counted_not_reported(tiny_copy, capsys, orientation):
    """The annotations refer to the stored pixels: a tag is a note (and --decode-images
    checks the stored size), not a size mismatch."""
    from PIL import Image
    path = osp.join(tiny_copy, 'images', 'mscoco', 'images', 'train2014', '2011_000025.jpg')
    with Image.open(path) as im:
        pixels = im.copy()
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels.save(path, quality=95, exif=exif)  # same stored pixels, now tagged
    assert check.main([tiny_copy, '--no-size-check', '--decode-images']) == 0
    out = capsys.readouterr().out
    assert (f'1 of 4 images carry an EXIF orientation tag other than 1 (tag: count '
            f'{orientation}: 1; e.g. 2011_000025.jpg)') in out, out
    assert 'OK: layout' in out
