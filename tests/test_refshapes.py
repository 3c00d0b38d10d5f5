# Copyright (c) mmrefseg contributors. All rights reserved.
"""RefShapes generator: determinism, unique reference, masks, template mix, splits.

The uniqueness check does not reuse the generator's logic: it parses every sentence with
its own grammar (below) and evaluates the plain meaning of the words over the scene's
objects ("on the left" = smallest centre x among the matching objects, "above" = smaller
centre y than the anchor, "biggest" = most visible pixels, ...).
"""
import re
from collections import Counter

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mmrefseg.datasets.refshapes import (COLOURS, HELD_OUT, SHAPES, SPATIAL_TEMPLATES,
                                         TEMPLATES, RefShapesDataset, render_scene)

_DESC = (r'(?:(?P<{p}size>big|small) )?(?:(?P<{p}colour>' + '|'.join(COLOURS) +
         r') )?(?P<{p}noun>object|' + '|'.join(SHAPES) + ')')
GRAMMAR = re.compile(
    r'^the (?:(?P<sup>biggest|smallest) )?' + _DESC.format(p='t') +
    r'(?: (?P<pos>on the left|on the right|at the top|at the bottom)'
    r'| (?P<rel>to the left of|to the right of|above|below) the ' + _DESC.format(p='a') +
    r')?$')


def _matching(m, prefix, objs):
    out = []
    for i, o in enumerate(objs):
        if m.group(prefix + 'size') and o['size'] != m.group(prefix + 'size'):
            continue
        if m.group(prefix + 'colour') and o['colour'] != m.group(prefix + 'colour'):
            continue
        if m.group(prefix + 'noun') != 'object' and o['shape'] != m.group(prefix + 'noun'):
            continue
        out.append(i)
    return out


def _argbest(cands, key):
    """The index with the strictly smallest key, or None on a tie."""
    vals = sorted((key(i), i) for i in cands)
    if len(vals) > 1 and vals[0][0] == vals[1][0]:
        return None
    return vals[0][1]


def referents(sentence, objs):
    """Indices of the objects that ``sentence`` picks out by its plain meaning."""
    m = GRAMMAR.match(sentence)
    assert m, f'sentence outside the grammar: {sentence!r}'
    cands = _matching(m, 't', objs)
    if m.group('sup'):
        sign = -1 if m.group('sup') == 'biggest' else 1
        return [_argbest(cands, lambda i: sign * objs[i]['area'])]
    if m.group('pos'):
        axis, sign = {'on the left': ('cx', 1), 'on the right': ('cx', -1),
                      'at the top': ('cy', 1), 'at the bottom': ('cy', -1)}[m.group('pos')]
        return [_argbest(cands, lambda i: sign * objs[i][axis])]
    if m.group('rel'):
        anchors = _matching(m, 'a', objs)
        assert len(anchors) == 1, f'{sentence!r}: the anchor is not unique ({anchors})'
        a = objs[anchors[0]]
        axis, sign = {'to the left of': ('cx', 1), 'to the right of': ('cx', -1),
                      'above': ('cy', 1), 'below': ('cy', -1)}[m.group('rel')]
        return [i for i in cands if i != anchors[0] and sign * (objs[i][axis] - a[axis]) < 0]
    return cands


@pytest.fixture(scope='module')
def train_set(tmp_path_factory):
    return RefShapesDataset(split='train', num_images=150, seed=3,
                            data_root=str(tmp_path_factory.mktemp('rs')))


def _items(ds):
    return [ds.get_data_info(i) for i in range(len(ds))]


def _obj_index(item):
    return item['ann_id'] % 16


def test_item_format(train_set):
    item = train_set.get_data_info(0)
    for k in ('img_path', 'segmentation', 'height', 'width', 'text', 'ref_id', 'sent_id',
              'ann_id', 'image_id', 'category_id', 'seg_fields', 'reduce_zero_label',
              'template'):
        assert k in item, k
    assert item['img_path'].endswith('.png') and item['height'] == item['width'] == 128
    assert isinstance(item['segmentation']['counts'], str)
    assert item['template'] in TEMPLATES
    assert len({d['ref_id'] for d in _items(train_set)}) == len(train_set)


def test_determinism(train_set, tmp_path):
    again = RefShapesDataset(split='train', num_images=20, seed=3, data_root=str(tmp_path))
    for i in range(len(again)):
        a, b = again.get_data_info(i), train_set.get_data_info(i)
        assert (a['text'], a['template'], a['segmentation'], a['image_id']) == \
            (b['text'], b['template'], b['segmentation'], b['image_id'])
        assert np.array_equal(cv2.imread(a['img_path']), cv2.imread(b['img_path']))
    # image i does not depend on the split size; another seed gives other images
    assert np.array_equal(render_scene(3, 'train', 5)['image'],
                          cv2.imread(again.get_data_info(0)['img_path'].replace(
                              '000000', '000005'))[..., ::-1])
    assert not np.array_equal(render_scene(3, 'train', 0)['image'],
                              render_scene(4, 'train', 0)['image'])
    # a second instance reuses the cache instead of regenerating
    cached = RefShapesDataset(split='train', num_images=20, seed=3, data_root=str(tmp_path))
    assert cached.cache_dir == again.cache_dir and len(cached) == len(again)


def test_every_sentence_refers_to_exactly_its_object(train_set):
    assert len(train_set) >= 250
    for item in _items(train_set):
        objs = train_set.scenes[item['image_id']]['objects']
        assert referents(item['text'], objs) == [_obj_index(item)], \
            (item['text'], item['template'], objs)


def test_masks_match_drawn_objects(train_set):
    palette = np.array(list(COLOURS.values()), np.float32)
    for image_id in range(12):
        scene = render_scene(3, 'train', image_id)
        img = scene['image'].astype(np.float32)
        # every pixel within reach of a palette colour belongs to an object of that colour
        dist = np.linalg.norm(img[:, :, None, :] - palette[None, None], axis=-1)
        label = np.where(dist.min(-1) < 60, dist.argmin(-1), -1)
        for c, name in enumerate(COLOURS):
            union = np.zeros(img.shape[:2], bool)
            for o in scene['objects']:
                if o['colour'] == name:
                    union |= o['mask']
            assert np.array_equal(label == c, union), (image_id, name)
        for k, o in enumerate(scene['objects']):
            assert o['mask'].sum() == o['area'] >= 0.75 * o['full_area']
            assert o['area'] >= 0.75 * 0.5 * 24 ** 2  # no object below ~24 px
            for j in range(k):  # visible masks are disjoint
                assert not (o['mask'] & scene['objects'][j]['mask']).any()
    for item in _items(train_set)[:40]:  # the stored RLE is the drawn object
        o = render_scene(3, 'train', item['image_id'])['objects'][_obj_index(item)]
        rle = dict(item['segmentation'], counts=item['segmentation']['counts'].encode())
        m = mask_utils.decode(rle).astype(bool)
        assert np.array_equal(m, o['mask']) and m.sum() == o['area']


def test_template_mix(train_set):
    counts = Counter(d['template'] for d in _items(train_set))
    assert set(counts) == set(TEMPLATES), counts
    spatial = sum(counts[t] for t in SPATIAL_TEMPLATES) / len(train_set)
    assert spatial >= 0.30, counts
    assert max(len(d['text'].split()) for d in _items(train_set)) <= 12


def test_splits_hold_out_combinations(train_set, tmp_path):
    val = RefShapesDataset(split='val', num_images=60, data_root=str(tmp_path))
    test = RefShapesDataset(split='test', num_images=60, data_root=str(tmp_path))
    for ds in (train_set, val):
        pairs = {(o['colour'], o['shape']) for s in ds.scenes for o in s['objects']}
        assert not pairs & set(HELD_OUT), pairs & set(HELD_OUT)
    assert len(test) >= 60
    for item in _items(test):
        o = test.scenes[item['image_id']]['objects'][_obj_index(item)]
        assert (o['colour'], o['shape']) in HELD_OUT
        assert referents(item['text'], test.scenes[item['image_id']]['objects']) == \
            [_obj_index(item)]
    assert val.get_data_info(0)['text'] != train_set.get_data_info(0)['text'] or \
        val.get_data_info(0)['segmentation'] != train_set.get_data_info(0)['segmentation']


def test_shuffle_text_takes_sentences_from_other_images(train_set):
    shuffled = RefShapesDataset(split='train', num_images=150, seed=3, shuffle_text=True,
                                data_root=train_set.cache_dir.rsplit('/', 1)[0])
    assert len(shuffled) == len(train_set)
    own = {}
    for d in _items(train_set):
        own.setdefault(d['image_id'], set()).add(d['text'])
    all_texts = {d['text'] for d in _items(train_set)}
    same = 0
    for a, b in zip(_items(shuffled), _items(train_set)):
        assert a['segmentation'] == b['segmentation'] and a['img_path'] == b['img_path']
        assert a['text'] in all_texts
        same += a['text'] in own[a['image_id']]
    assert same / len(shuffled) < 0.1  # only generic coincidences ("the circle")


def test_bad_arguments_name_the_value_and_fix(tmp_path):
    with pytest.raises(ValueError, match="split='tarin'"):
        RefShapesDataset(split='tarin', data_root=str(tmp_path))
    with pytest.raises(ValueError, match='unknown template'):
        RefShapesDataset(template_weights=dict(colours=1.0), data_root=str(tmp_path))
    with pytest.raises(ValueError, match='img_size=32'):
        RefShapesDataset(img_size=32, data_root=str(tmp_path))


def test_template_weights_select_templates(tmp_path):
    only = RefShapesDataset(num_images=30, data_root=str(tmp_path),
                            template_weights={t: 0 for t in TEMPLATES if t != 'relation'})
    assert {d['template'] for d in _items(only)} == {'relation'}


def test_runs_through_the_refcoco_pipeline(train_set):
    from mmseg.registry import TRANSFORMS
    import os.path as osp
    names = ('LoadRefAnnotations', 'TokenizeText', 'PackRefSegInputs')
    assert {n: TRANSFORMS.get(n) is not None for n in names} == dict.fromkeys(names, True)
    from mmcv.transforms import Compose
    vocab = osp.join(osp.dirname(osp.abspath(__file__)), 'data', 'bert-base-uncased',
                     'vocab.txt')
    pipe = Compose([TRANSFORMS.build(t) for t in (
        dict(type='LoadImageFromFile'), dict(type='LoadRefAnnotations'),
        dict(type='Resize', scale=(96, 96), keep_ratio=False),
        dict(type='TokenizeText', tokenizer=vocab, max_length=16),
        dict(type='PackRefSegInputs'))])
    out = pipe(train_set.get_data_info(0))
    sample = out['data_samples']
    assert out['inputs'].shape == (3, 96, 96)
    assert sample.gt_sem_seg.data.shape == (1, 96, 96)
    assert sample.text_ids.shape == (16,) and int(sample.text_mask.sum()) >= 4


def _report_module():
    import importlib.util
    import os.path as osp
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools',
                    'analysis_tools', 'refshapes_report.py')
    spec = importlib.util.spec_from_file_location('refshapes_report', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_report_per_template_and_curve(tmp_path):
    report = _report_module()
    items = {0: dict(template='colour', text='a'), 1: dict(template='colour', text='b'),
             2: dict(template='shape', text='c')}
    samples = [dict(ref_id=0, text='a', I=5, U=10), dict(ref_id=1, text='b', I=0, U=0),
               dict(ref_id=2, text='c', I=3, U=6)]
    out = report.per_template(samples, items)
    assert list(out) == ['colour', 'shape', 'all']
    assert out['colour'] == dict(n=2, oIoU=50.0, mIoU=25.0)  # IoU = 0 when U = 0
    assert out['all']['oIoU'] == pytest.approx(50.0)
    assert out['all']['mIoU'] == pytest.approx(100 / 3)
    with pytest.raises(KeyError, match='--cfg-options'):  # dump of another split
        report.per_template([dict(ref_id=0, text='the red circle', I=1, U=1)], items)
    run = tmp_path / '20260101_000000'
    run.mkdir()
    (run / '20260101_000000.log').write_text(
        '2026/01/01 00:00:00 - mmengine - INFO - start\n'
        '2026/01/01 00:01:40 - mmengine - INFO - Iter(train) [ 500/4000]  loss: 0.5\n'
        '2026/01/01 00:01:50 - mmengine - INFO - Iter(val) [19/19]    oIoU: 38.5735  '
        'mIoU: 41.1612  P@0.5: 34.3333\n')
    assert report.read_curve(str(tmp_path)) == [
        (500, 110.0, dict(oIoU=38.5735, mIoU=41.1612, **{'P@0.5': 34.3333}))]
