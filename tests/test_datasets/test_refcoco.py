# Copyright (c) mmrefseg contributors. All rights reserved.
"""RefCOCODataset on the tiny refer fixture: splits, items, sentence modes, bad input."""
import os
import os.path as osp
import pickle
import random
import re
import struct

import numpy as np
import pytest

from mmrefseg.datasets import EpochIndex, EpochTaggedSampler, RefCOCODataset
from mmrefseg.datasets.refcoco import load_refs_pickle

from .conftest import drop_annotation, edit_instances

TEST_PIPELINE = [
    dict(type='LoadImageFromFile', color_type='color_ignore_orientation'),
    dict(type='Resize', scale=(64, 48), keep_ratio=False),
    dict(type='LoadRefAnnotations'),
    dict(type='TokenizeText', max_length=12),
    dict(type='PackRefSegInputs'),
]
# refs / sentences of the fixture per split (tests/data/README.md)
COUNTS = {'train': (4, 6), 'val': (3, 4), 'testA': (3, 3), 'testB': (3, 4), 'test': (6, 7)}
ITEM_KEYS = {'img_path', 'segmentation', 'height', 'width', 'text', 'ref_id', 'sent_id',
             'ann_id', 'image_id', 'category_id', 'seg_fields', 'reduce_zero_label',
             'sample_idx'}


def _refs_path(root):
    return osp.join(root, 'refcoco', 'refs(unc).p')


def _load_refs(root):
    with open(_refs_path(root), 'rb') as f:
        return pickle.load(f)


def _save_refs(root, refs):
    with open(_refs_path(root), 'wb') as f:
        pickle.dump(refs, f, protocol=2)


@pytest.mark.parametrize('split', list(COUNTS))
def test_counts_per_split(tiny_root, split):
    n_refs, n_sents = COUNTS[split]
    train_like = RefCOCODataset(data_root=tiny_root, split=split)
    test_like = RefCOCODataset(data_root=tiny_root, split=split, test_mode=True)
    assert len(train_like) == n_refs  # one item per ref
    assert len(test_like) == n_sents  # one item per sentence
    sent_ids = [test_like.get_data_info(i)['sent_id'] for i in range(len(test_like))]
    assert len(set(sent_ids)) == n_sents  # every sentence exactly once


def test_split_semantics_follow_refer_api(tiny_copy):
    # a ref with split 'testAB' belongs to testA, testB and test, not to train / val
    refs = _load_refs(tiny_copy)
    refs[0]['split'] = 'testAB'
    _save_refs(tiny_copy, refs)
    n = {s: len(RefCOCODataset(data_root=tiny_copy, split=s)) for s in COUNTS}
    assert n == {'train': 3, 'val': 3, 'testA': 4, 'testB': 4, 'test': 7}


def test_item_fields_and_file_name_quirk(tiny_root):
    ds = RefCOCODataset(data_root=tiny_root, split='train', test_mode=True)
    info = ds.get_data_info(1)
    assert set(info) == ITEM_KEYS
    assert (info['ref_id'], info['sent_id'], info['ann_id'], info['image_id']) == \
        (0, 1, 2190839, 39769)
    assert info['text'] == 'Striped cat lying on its side, left'  # the raw sentence
    assert info['category_id'] == 17
    # image name from instances.json, not the ref's file_name '000000039769_0.jpg'
    assert info['img_path'].endswith(
        osp.join('images', 'mscoco', 'images', 'train2014', '000000039769.jpg'))
    assert (info['height'], info['width']) == (480, 640)
    assert isinstance(info['segmentation'], list)  # raw polygons, decoded in the pipeline
    assert info['seg_fields'] == [] and info['reduce_zero_label'] is False
    sent = RefCOCODataset(data_root=tiny_root, split='train', test_mode=True, text_key='sent')
    assert sent.get_data_info(1)['text'] == 'striped cat lying on its side left'


def test_random_mode_draws_every_sentence(tiny_root):
    ds = RefCOCODataset(data_root=tiny_root, split='train')
    assert ds.sentence_mode == 'random'
    random.seed(0)
    drawn = {ds.get_data_info(0)['sent_id'] for _ in range(40)}
    assert drawn == {0, 1}  # ref 0 has sentences 0 and 1
    info = ds.get_data_info(0)
    assert set(info) == ITEM_KEYS
    assert info['text'] == {0: 'cat on the left', 1: 'Striped cat lying on its side, left'}[
        info['sent_id']]


def _epoch_draws(ds, epoch, seed=0):
    """{index: sent_id} of one epoch as EpochTaggedSampler feeds the dataset."""
    sampler = EpochTaggedSampler(ds, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return {int(i): ds.get_data_info(i)['sent_id'] for i in sampler}


@pytest.mark.parametrize('sentence_seed', [3, None])
def test_sentence_draw_is_a_function_of_seed_epoch_and_index(refer_root, sentence_seed):
    root = refer_root(n_refs=12, n_sents=5)

    def dataset():
        return RefCOCODataset(data_root=root, split='train', sentence_seed=sentence_seed)

    ds = dataset()
    epochs = [_epoch_draws(ds, e) for e in range(6)]
    assert epochs[0] == _epoch_draws(dataset(), 0)  # deterministic (another instance)
    assert epochs[1] == _epoch_draws(ds, 1)  # the same again (a resume)
    # a fresh draw every epoch: over two epochs most refs change sentence (1/5 stay)
    assert sum(epochs[0][i] != epochs[1][i] for i in range(12)) >= 6, epochs[:2]
    seen = {i: {e[i] for e in epochs} for i in range(12)}
    assert min(len(v) for v in seen.values()) >= 2, seen  # more than one sentence per ref
    # the seed is sentence_seed when set, else the sampler's (the run's randomness.seed)
    assert (_epoch_draws(ds, 0, seed=1) == epochs[0]) == (sentence_seed is not None)
    if sentence_seed is not None:
        ds.sentence_seed = 4
        assert _epoch_draws(ds, 0) != epochs[0]


def test_epoch_reaches_persistent_workers(refer_root):
    """The epoch travels with the index: right in persistent workers (which hold their own
    copy of the dataset, so a dataset attribute set in the main process would not reach
    them)."""
    from torch.utils.data import DataLoader
    ds = RefCOCODataset(data_root=refer_root(n_refs=12, n_sents=5), split='train')
    sampler = EpochTaggedSampler(ds, shuffle=True, seed=7)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2,
                        persistent_workers=True, collate_fn=list)
    per_epoch = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        got = {info['sample_idx']: info['sent_id'] for batch in loader for info in batch}
        assert got == {int(i): ds.get_data_info(i)['sent_id'] for i in sampler}, epoch
        per_epoch.append(got)
    assert per_epoch[0] != per_epoch[1]
    assert all(isinstance(k, int) and type(k) is int for k in per_epoch[0])


def test_untagged_index_with_a_sentence_seed_warns_once(refer_root, mm_log):
    ds = RefCOCODataset(data_root=refer_root(n_refs=3, n_sents=2), split='train',
                        sentence_seed=1)
    for i in (0, 1, 2, 0):
        ds.get_data_info(i)
    warned = [m for m in mm_log if 'carries no epoch' in m]
    assert len(warned) == 1 and 'EpochTaggedSampler' in warned[0], mm_log


def test_epoch_index_pickles_with_its_tags():
    idx = EpochIndex(5, epoch=3, seed=11, alternates=(7, 9))
    back = pickle.loads(pickle.dumps(idx))
    assert (int(back), back.epoch, back.seed, back.alternates) == (5, 3, 11, (7, 9))
    assert type(back + 1) is int and EpochIndex.retag(8, idx).epoch == 3
    assert type(EpochIndex.retag(8, 4)) is int


def test_all_mode_for_training(tiny_root):
    ds = RefCOCODataset(data_root=tiny_root, split='train', sentence_mode='all')
    assert len(ds) == 6 and not ds.test_mode


def test_pipeline_output(tiny_root):
    ds = RefCOCODataset(data_root=tiny_root, split='val', test_mode=True,
                        pipeline=TEST_PIPELINE)
    out = ds[0]
    sample = out['data_samples']
    assert tuple(out['inputs'].shape) == (3, 48, 64)
    assert tuple(sample.gt_sem_seg.data.shape) == (1, 338, 500)  # original size
    assert sample.text_ids.shape == (12,) and sample.text_ids[0] == 101
    assert sample.ref_id == 4 and sample.sent_id == 6 and sample.text == 'man with the black hat'


def test_python2_pickle_with_utf8_bytes(tiny_copy):
    """refer ships Python-2 pickles: str fields are byte strings (SHORT_BINSTRING)."""
    refs = _load_refs(tiny_copy)
    refs[0]['sentences'][0]['raw'] = 'café on the left'
    with open(_refs_path(tiny_copy), 'wb') as f:
        f.write(_py2_dumps(refs))
    assert load_refs_pickle(_refs_path(tiny_copy)) == refs
    ds = RefCOCODataset(data_root=tiny_copy, split='train', test_mode=True)
    assert ds.get_data_info(0)['text'] == 'café on the left'


def test_python2_pickle_with_latin1_bytes(tiny_copy):
    refs = _load_refs(tiny_copy)
    with open(_refs_path(tiny_copy), 'wb') as f:
        f.write(_py2_dumps(refs, {'cat on the left': b'caf\xe9 on the left'}))
    loaded = load_refs_pickle(_refs_path(tiny_copy))
    assert loaded[0]['sentences'][0]['raw'] == 'café on the left'


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize('kwargs,valid', [
    (dict(dataset='refclef'), "'refcoco', 'refcoco+', 'refcocog'"),
    (dict(split_by='berkeley'), "'unc', 'umd', 'google'"),
    (dict(split='testC'), "'train', 'val', 'testA', 'testB', 'test'"),
    (dict(sentence_mode='first'), "'random', 'all'"),
])
def test_unknown_choice_lists_valid_ones(tiny_root, kwargs, valid):
    with pytest.raises(ValueError, match=f'unknown {list(kwargs)[0]}=.*{re.escape(valid)}'):
        RefCOCODataset(data_root=tiny_root, **kwargs)


def test_missing_files(tiny_copy, tiny_root):
    with pytest.raises(FileNotFoundError, match=r'refs\(umd\)\.p not found.*refcocog/umd'):
        RefCOCODataset(data_root=tiny_root, split_by='umd')
    os.remove(osp.join(tiny_copy, 'refcoco', 'instances.json'))
    with pytest.raises(FileNotFoundError, match=r'instances\.json not found.*data_root'):
        RefCOCODataset(data_root=tiny_copy)


def test_corrupt_annotation_files(tiny_copy):
    with open(osp.join(tiny_copy, 'refcoco', 'instances.json'), 'w') as f:
        f.write('{"images": [')
    with pytest.raises(ValueError, match=r'instances\.json is not valid JSON.*Re-download'):
        RefCOCODataset(data_root=tiny_copy)
    with open(_refs_path(tiny_copy), 'wb') as f:
        f.write(b'\x80\x02]q\x00')
    with pytest.raises(ValueError, match=r'refs\(unc\)\.p is not a readable refs pickle'):
        RefCOCODataset(data_root=tiny_copy)


def test_split_without_refs(tiny_copy):
    _save_refs(tiny_copy, [r for r in _load_refs(tiny_copy) if r['split'] in ('train', 'val')])
    with pytest.raises(ValueError, match=r"split 'test' selects no refs.*\['train', 'val'\]"):
        RefCOCODataset(data_root=tiny_copy, split='test')


def test_annotation_missing_from_instances(tiny_copy):
    drop_annotation(tiny_copy, 2190842)
    with pytest.raises(KeyError, match=r'ref_id 1 names ann_id 2190842, which .*instances'
                                       r'\.json lacks.*same refcoco archive'):
        RefCOCODataset(data_root=tiny_copy)


def test_empty_sentence(tiny_copy):
    refs = _load_refs(tiny_copy)
    refs[2]['sentences'][0]['raw'] = '   '
    _save_refs(tiny_copy, refs)
    with pytest.raises(ValueError, match=r'refs\(unc\)\.p: ref_id 2 has an empty sentence '
                                         r'\(sent_id 4\).*skip_empty_sentences=True'):
        RefCOCODataset(data_root=tiny_copy, test_mode=True)
    ds = RefCOCODataset(data_root=tiny_copy, test_mode=True, skip_empty_sentences=True)
    assert len(ds) == 5 and 2 not in {ds.get_data_info(i)['ref_id'] for i in range(5)}


def test_missing_and_corrupt_image(tiny_copy):
    img_dir = osp.join(tiny_copy, 'images', 'mscoco', 'images', 'train2014')
    ds = RefCOCODataset(data_root=tiny_copy, split='val', test_mode=True,
                        pipeline=TEST_PIPELINE)
    os.remove(osp.join(img_dir, '2011_000003.jpg'))
    with pytest.raises(FileNotFoundError,
                       match=r'2011_000003\.jpg \(ref_id 4, image_id 9000000\) is missing.*'
                             r'check_refer_data\.py'):
        ds[0]
    with open(osp.join(img_dir, '2011_000003.jpg'), 'wb') as f:
        f.write(b'\xff\xd8\xff\xe0 not really a jpeg')
    with pytest.raises(OSError, match=r'2011_000003\.jpg .* cannot be decoded.*Re-download'):
        ds[0]


def test_image_size_must_match_annotation(tiny_copy):
    def shrink(inst):
        next(im for im in inst['images'] if im['id'] == 9000000)['height'] = 300

    edit_instances(tiny_copy, shrink)
    ds = RefCOCODataset(data_root=tiny_copy, split='val', test_mode=True,
                        pipeline=TEST_PIPELINE)
    with pytest.raises(ValueError, match=r'2011_000003\.jpg.*image file is 338×500 but '
                                         r'instances\.json says 300×500'):
        ds[0]


# ---------------------------------------------------------------- helpers
def _py2_dumps(obj, raw_bytes=None) -> bytes:
    """Protocol-2 pickle as Python 2 writes it: ``str`` → SHORT_BINSTRING / BINSTRING.

    ``raw_bytes`` maps a string to the exact bytes to store for it (e.g. latin-1).
    """
    raw_bytes = raw_bytes or {}
    out = [b'\x80\x02']

    def emit(o):
        if isinstance(o, bool):
            out.append(b'\x88' if o else b'\x89')
        elif isinstance(o, int):
            out.append(b'J' + struct.pack('<i', o))
        elif isinstance(o, float):
            out.append(b'G' + struct.pack('>d', o))
        elif isinstance(o, str):
            b = raw_bytes.get(o, o.encode('utf-8'))
            out.append(b'U' + bytes([len(b)]) + b if len(b) < 256 else
                       b'T' + struct.pack('<i', len(b)) + b)
        elif isinstance(o, list):
            out.append(b']')
            if o:
                out.append(b'(')
                for x in o:
                    emit(x)
                out.append(b'e')
        elif isinstance(o, dict):
            out.append(b'}')
            if o:
                out.append(b'(')
                for k, v in o.items():
                    emit(k)
                    emit(v)
                out.append(b'u')
        else:
            raise TypeError(type(o))

    emit(obj)
    out.append(b'.')
    return b''.join(out)


def test_py2_helper_round_trip():
    obj = [{'a': [1, 2.5, 'x' * 300], 'b': True}]
    assert pickle.loads(_py2_dumps(obj), encoding='utf-8') == obj
    assert np.frombuffer(_py2_dumps(['x']), np.uint8)[2] == ord(']')
