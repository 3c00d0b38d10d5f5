# Copyright (c) mmrefseg contributors. All rights reserved.
"""LoadRefAnnotations / decode_segmentation, TokenizeText, PackRefSegInputs."""
import json
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmseg.structures import SegDataSample
from pycocotools import mask as mask_utils

from mmrefseg.datasets import (REF_META_KEYS, LoadRefAnnotations, PackRefSegInputs,
                               RefCOCODataset, TokenizeText, decode_segmentation)

from .conftest import TEST_DATA, TINY_ROOT, VOCAB

LADY = [101, 1996, 3203, 2007, 1996, 2630, 3797, 102]  # "the lady with the blue shirt"
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _instances():
    with open(osp.join(TINY_ROOT, 'refcoco', 'instances.json')) as f:
        inst = json.load(f)
    sizes = {im['id']: (im['height'], im['width']) for im in inst['images']}
    return {a['id']: (a, *sizes[a['image_id']]) for a in inst['annotations']}


def _reference(seg, h, w):
    """Direct pycocotools decode: frPyObjects → merge (union) → decode."""
    rles = mask_utils.frPyObjects(seg, h, w)
    rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
    return mask_utils.decode(rle)


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize('ann_id', [2190839, 9000001, 9000011])  # 1, 2 and 4 polygons
def test_polygons_equal_pycocotools(ann_id):
    ann, h, w = _instances()[ann_id]
    mask = decode_segmentation(ann['segmentation'], h, w)
    assert mask.dtype == np.uint8 and mask.shape == (h, w)
    assert set(np.unique(mask)) <= {0, 1} and mask.sum() > 0
    np.testing.assert_array_equal(mask, _reference(ann['segmentation'], h, w))


def test_rle_compressed_and_uncompressed_equal_pycocotools():
    ann, h, w = _instances()[9000011]
    truth = _reference(ann['segmentation'], h, w)
    compressed = mask_utils.encode(np.asfortranarray(truth))  # counts: bytes
    as_str = dict(size=compressed['size'], counts=compressed['counts'].decode('ascii'))
    uncompressed = dict(size=[h, w], counts=_uncompressed_counts(truth))
    for seg in (compressed, as_str, uncompressed):
        np.testing.assert_array_equal(decode_segmentation(seg, h, w), truth)
    # uncompressed RLE straight through pycocotools, as COCO's iscrowd annotations are read
    np.testing.assert_array_equal(
        mask_utils.decode(mask_utils.frPyObjects(uncompressed, h, w)), truth)


def test_parts_are_merged_as_a_union():
    # two overlapping squares: the refer API sums parts (overlap = 2, LAVT then drops it)
    polys = [[1, 1, 6, 1, 6, 6, 1, 6], [4, 4, 9, 4, 9, 9, 4, 9]]
    mask = decode_segmentation(polys, 10, 10)
    summed = mask_utils.decode(mask_utils.frPyObjects(polys, 10, 10)).sum(axis=2)
    assert summed.max() == 2
    np.testing.assert_array_equal(mask, (summed > 0).astype(np.uint8))
    # a flat polygon and a 4-number polygon (a bbox to frPyObjects) are polygons here
    np.testing.assert_array_equal(decode_segmentation(polys[0], 10, 10),
                                  decode_segmentation(polys[:1], 10, 10))
    assert decode_segmentation([[1, 1, 8, 8]], 10, 10).sum() == 0


def test_bad_segmentation_errors():
    with pytest.raises(ValueError, match=r'RLE size \[5, 5\] does not match .*\[10, 10\]'):
        decode_segmentation(dict(size=[5, 5], counts=[25]), 10, 10)
    with pytest.raises(ValueError, match='unsupported COCO segmentation'):
        decode_segmentation([], 10, 10)
    t = LoadRefAnnotations()
    with pytest.raises(ValueError, match=r'ref_id 7, ann_id 3: RLE needs|ref_id 7.*RLE '):
        t(dict(segmentation=dict(counts='abc'), height=4, width=4, ref_id=7, ann_id=3))


def test_load_ref_annotations():
    ann, h, w = _instances()[9000001]
    results = LoadRefAnnotations()(dict(segmentation=ann['segmentation'], height=h, width=w,
                                        seg_fields=[], ori_shape=(h, w)))
    assert results['seg_fields'] == ['gt_seg_map']
    np.testing.assert_array_equal(results['gt_seg_map'], _reference(ann['segmentation'], h, w))
    # without the annotation's size, the loaded image's is used
    again = LoadRefAnnotations()(dict(segmentation=ann['segmentation'], ori_shape=(h, w)))
    np.testing.assert_array_equal(again['gt_seg_map'], results['gt_seg_map'])
    with pytest.raises(KeyError, match='needs "height" and "width"'):
        LoadRefAnnotations()(dict(segmentation=ann['segmentation']))


# ---------------------------------------------------------------- text
def test_tokenize_matches_bert_base_uncased():
    out = TokenizeText(max_length=30)(dict(text='THE LADY WITH THE BLUE SHIRT'))
    assert out['text_ids'].dtype == np.int64 and out['text_mask'].dtype == np.int64
    assert out['text_ids'].tolist() == LADY + [0] * 22
    assert out['text_mask'].tolist() == [1] * 8 + [0] * 22


@pytest.mark.parametrize('spec', [VOCAB, osp.join(TEST_DATA, 'bert-base-uncased')])
def test_tokenizer_from_vocab_file_or_directory(spec):
    out = TokenizeText(tokenizer=spec, max_length=10)(dict(text='the lady with the blue shirt'))
    assert out['text_ids'].tolist() == LADY + [0, 0]


def test_truncation_keeps_sep():
    out = TokenizeText(max_length=6)(dict(text='the lady with the blue shirt'))
    assert out['text_ids'].tolist() == [101, 1996, 3203, 2007, 1996, 102]
    assert out['text_mask'].tolist() == [1] * 6


def test_truncation_is_counted_and_logged_once(mm_log):
    t = TokenizeText(max_length=6)
    for i in range(3):
        t(dict(text='the lady with the blue shirt', ref_id=i))
    t(dict(text='the lady with', ref_id=9))  # fits: 5 tokens
    assert t.num_truncated == 3
    reports = [m for m in mm_log if 'truncated' in m]  # mmengine's logger, any handler
    assert len(reports) == 1, mm_log
    assert 'max_length=6 tokens was truncated (ref_id 0' in reports[0]


@pytest.mark.parametrize('source', ['bert-base-uncased', 'vocab file', 'directory'])
def test_do_lower_case_applies_to_bundled_vocab_file_and_directory(source):
    tokenizer = {'vocab file': VOCAB, 'directory': osp.dirname(VOCAB)}.get(source, source)
    text = dict(text='The Cat')

    def ids(**kw):
        return TokenizeText(tokenizer=tokenizer, max_length=6, **kw)(text)['text_ids'][:4]

    assert ids().tolist() == [101, 1996, 4937, 102]  # default: lower-cased (uncased BERT)
    assert ids(do_lower_case=True).tolist() == [101, 1996, 4937, 102]
    # not lower-cased: 'The' / 'Cat' are not in the uncased vocabulary → [UNK]
    assert ids(do_lower_case=False).tolist() == [101, 100, 100, 102]


def test_tokenizer_errors():
    with pytest.raises(ValueError, match=r"cannot load tokenizer 'no-such-bert'.*local "
                                         r'vocab\.txt'):
        TokenizeText(tokenizer='no-such-bert')
    with pytest.raises(ValueError, match='max_length must be an int >= 2'):
        TokenizeText(max_length=1)
    with pytest.raises(ValueError, match=r"empty or missing sentence ' '.*ref_id 3"):
        TokenizeText()(dict(text=' ', ref_id=3))


def test_tokenizer_pickles():  # dataloader workers started with spawn
    t = pickle.loads(pickle.dumps(TokenizeText(max_length=10)))
    assert t(dict(text='the lady with the blue shirt'))['text_ids'].tolist() == LADY + [0, 0]


# ---------------------------------------------------------------- packing
def test_pack_ref_seg_inputs():
    results = dict(img=np.zeros((6, 8, 3), np.uint8), gt_seg_map=np.eye(6, 8, dtype=np.uint8),
                   text_ids=np.arange(5), text_mask=np.ones(5, np.int64), img_shape=(6, 8),
                   ori_shape=(6, 8), ref_id=1, sent_id=2, ann_id=3, image_id=4,
                   category_id=5, text='a', img_path='x.jpg', extra='dropped')
    packed = PackRefSegInputs()(results)
    sample = packed['data_samples']
    assert isinstance(sample, SegDataSample) and packed['inputs'].shape == (3, 6, 8)
    assert sample.gt_sem_seg.data.shape == (1, 6, 8)
    for key in ('text_ids', 'text_mask'):
        assert key in sample.keys()  # data fields, not metainfo
        assert sample.get(key).dtype == torch.long and sample.get(key).shape == (5,)
    moved = sample.to('cpu')
    assert torch.equal(moved.text_ids, torch.arange(5))
    meta = sample.metainfo
    assert {k: meta[k] for k in ('ref_id', 'sent_id', 'ann_id', 'image_id', 'category_id',
                                 'text')} == dict(ref_id=1, sent_id=2, ann_id=3, image_id=4,
                                                  category_id=5, text='a')
    assert 'extra' not in meta and set(meta) <= set(REF_META_KEYS)


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize('name,dataset,split_by', [
    ('refcoco_unc', 'refcoco', 'unc'), ('refcoco+_unc', 'refcoco+', 'unc'),
    ('refcocog_umd', 'refcocog', 'umd'), ('refcocog_google', 'refcocog', 'google')])
def test_dataset_configs(name, dataset, split_by):
    cfg = Config.fromfile(osp.join(REPO, 'configs', '_base_', 'datasets', f'{name}.py'))
    for loader, split in ((cfg.train_dataloader, 'train'), (cfg.val_dataloader, 'val'),
                          (cfg.test_dataloader, 'val')):
        d = loader.dataset
        assert (d.type, d.dataset, d.split_by, d.split) == ('RefCOCODataset', dataset,
                                                            split_by, split)
        assert d.data_root == 'data/refer'
    assert cfg.train_dataloader.dataset.sentence_mode == 'random'
    assert cfg.test_dataloader.dataset.test_mode
    assert cfg.val_evaluator == cfg.test_evaluator == dict(type='RefSegMetric')
    assert [t.type for t in cfg.train_dataloader.dataset.pipeline] == [
        'LoadImageFromFile', 'LoadRefAnnotations', 'Resize', 'TokenizeText', 'PackRefSegInputs']
    assert [t.type for t in cfg.test_dataloader.dataset.pipeline] == [
        'LoadImageFromFile', 'Resize', 'LoadRefAnnotations', 'TokenizeText', 'PackRefSegInputs']


def test_tiny_config_pipelines_run():
    cfg = Config.fromfile(osp.join(REPO, 'configs', '_base_', 'datasets', 'tiny_refer.py'))
    assert cfg.train_dataloader.dataset.data_root == 'tests/data/tiny_refer'  # repo-relative
    for loader in (cfg.train_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = TINY_ROOT
    kwargs = {k: v for k, v in cfg.train_dataloader.dataset.items() if k != 'type'}
    train = RefCOCODataset(**kwargs)[0]
    assert train['inputs'].shape == (3, 448, 448)
    assert train['data_samples'].gt_sem_seg.data.shape == (1, 448, 448)  # resized with the image
    assert train['data_samples'].text_ids.shape == (30,)
    kwargs = {k: v for k, v in cfg.test_dataloader.dataset.items() if k != 'type'}
    test = RefCOCODataset(**kwargs)
    assert len(test) == 4
    sample = test[0]['data_samples']
    assert sample.gt_sem_seg.data.shape == (1, 338, 500) and sample.img_shape == (448, 448)


def test_train_pipeline_resizes_mask_with_image(tiny_root):
    pipeline = Compose([dict(type='LoadImageFromFile'), dict(type='LoadRefAnnotations'),
                        dict(type='Resize', scale=(250, 169), keep_ratio=False)])
    ds = RefCOCODataset(data_root=tiny_root, split='val', test_mode=True)
    info = ds.get_data_info(0)
    out = pipeline(dict(info))
    full = decode_segmentation(info['segmentation'], info['height'], info['width'])
    assert out['gt_seg_map'].shape == (169, 250)
    np.testing.assert_array_equal(out['gt_seg_map'], full[::2, ::2])  # cv2 nearest, ×0.5


def _uncompressed_counts(mask):
    flat = np.asfortranarray(mask).reshape(-1, order='F')
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return counts
