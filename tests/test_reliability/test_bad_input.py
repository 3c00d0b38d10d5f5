"""Bad input, end to end: the dataset built from the tiny config, batches drawn through
the Runner's dataloader, the model and the inference API. Each case's chosen behaviour is
listed in docs/reliability.md. (Unit-level checks of the same messages live in
tests/test_datasets; here the errors must survive the config → dataloader path.)"""
import copy
import os
import os.path as osp
import pickle
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.runner import Runner, load_checkpoint
from mmseg.registry import DATASETS, MODELS

from mmrefseg.engine import SkipBadSamplesDataset

from test_datasets.conftest import edit_instances  # tests/ is on sys.path (rootdir)

from .conftest import IMG_DIR, REPO, TINY_CONFIG

VAL_IMAGE = '2011_000003.jpg'     # the val split's only image (338×500)
TRAIN_IMAGE = '000000039769.jpg'  # the train split's only image (480×640)


def _dataset_cfg(tiny_cfg, root, loader='train', **dataset_overrides):
    """The tiny config's train (or val) dataloader config on ``root``, 0 workers."""
    cfg = copy.deepcopy(tiny_cfg[f'{loader}_dataloader'])
    cfg.dataset.update(data_root=root, **dataset_overrides)
    cfg.update(num_workers=0, persistent_workers=False)
    return cfg


def _first_batch(loader_cfg):
    """Build dataset + dataloader exactly as the Runner does, and draw one batch."""
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    return next(iter(loader))


def _edit_refs(root, edit):
    path = osp.join(root, 'refcoco', 'refs(unc).p')
    with open(path, 'rb') as f:
        refs = pickle.load(f)
    edit(refs)
    with open(path, 'wb') as f:
        pickle.dump(refs, f, protocol=2)


def _drop_ann(inst):
    inst['annotations'] = [a for a in inst['annotations'] if a['id'] != _ann_of_ref0(inst)]


def _ann_of_ref0(inst):
    with open(osp.join(REPO, 'tests/data/tiny_refer/refcoco/refs(unc).p'), 'rb') as f:
        return pickle.load(f)[0]['ann_id']


def _set_sentence(text):
    def edit(refs):
        for s in refs[0]['sentences']:
            s['raw'] = s['sent'] = text
    return edit


def _head(path, fraction):
    with open(path, 'rb') as f:
        data = f.read()
    return data[:int(len(data) * fraction)]


def _write(path, data):
    with open(path, 'wb') as f:
        f.write(data)


# (id, break the copy, split, overrides, exception, regex the message must match)
CASES = [
    ('corrupt image',
     lambda r: _write(osp.join(r, IMG_DIR, TRAIN_IMAGE), b'\xff\xd8\xff\xe0 garbage'),
     'train', {}, OSError, rf'{TRAIN_IMAGE} .*cannot be decoded.*Re-download'),
    ('truncated image',  # an interrupted download: the last 5% of the JPEG missing
     lambda r: _write(osp.join(r, IMG_DIR, TRAIN_IMAGE), _head(osp.join(r, IMG_DIR,
                                                                        TRAIN_IMAGE), 0.95)),
     'train', {}, OSError, rf'{TRAIN_IMAGE} .*cannot be decoded'),
    ('missing image', lambda r: os.remove(osp.join(r, IMG_DIR, TRAIN_IMAGE)),
     'train', {}, FileNotFoundError, rf'{TRAIN_IMAGE} .*is missing.*check_refer_data'),
    ('missing refs pickle', lambda r: os.remove(osp.join(r, 'refcoco', 'refs(unc).p')),
     'train', {}, FileNotFoundError, r'refs\(unc\)\.p not found.*dataset_prepare'),
    ('garbled refs pickle', lambda r: _write(osp.join(r, 'refcoco', 'refs(unc).p'),
                                             b'\x80\x02garbage'),
     'train', {}, ValueError, r'refs\(unc\)\.p is not a readable refs pickle'),
    ('missing instances.json', lambda r: os.remove(osp.join(r, 'refcoco', 'instances.json')),
     'train', {}, FileNotFoundError, r'instances\.json not found'),
    ('garbled instances.json', lambda r: _write(osp.join(r, 'refcoco', 'instances.json'),
                                                b'{"images": [1, 2'),
     'train', {}, ValueError, r'instances\.json is not valid JSON'),
    ('unknown dataset', None, 'train', dict(dataset='refclef'), ValueError,
     r"unknown dataset='refclef'; valid values are 'refcoco', 'refcoco\+', 'refcocog'"),
    ('unknown split_by', None, 'train', dict(split_by='berkeley'), ValueError,
     r"unknown split_by='berkeley'.*'unc', 'umd', 'google'"),
    ('unknown split', None, 'train', dict(split='training'), ValueError,
     r"unknown split='training'.*'train', 'val', 'testA', 'testB', 'test'"),
    ('annotation id missing', lambda r: edit_instances(r, _drop_ann), 'train', {}, KeyError,
     r'names ann_id \d+, which .*instances\.json lacks.*same refcoco archive'),
    ('empty sentence', lambda r: _edit_refs(r, _set_sentence('')), 'train', {}, ValueError,
     r'ref_id 0 has an empty sentence.*skip_empty_sentences=True'),
    ('whitespace sentence', lambda r: _edit_refs(r, _set_sentence(' \t ')), 'train', {},
     ValueError, r'ref_id 0 has an empty sentence'),
]


@pytest.mark.parametrize('name,breaker,split,overrides,exc,pattern', CASES,
                         ids=[c[0] for c in CASES])
def test_bad_dataset_input_fails_with_cause_and_fix(tiny_cfg, tiny_copy, name, breaker,
                                                     split, overrides, exc, pattern):
    if breaker is not None:
        breaker(tiny_copy)
    with pytest.raises(exc) as e:
        _first_batch(_dataset_cfg(tiny_cfg, tiny_copy, split, **overrides))  # split = loader
    assert re.search(pattern, str(e.value), re.S), str(e.value)


def test_error_names_the_file_across_a_dataloader_worker(tiny_cfg, tiny_copy):
    os.remove(osp.join(tiny_copy, IMG_DIR, TRAIN_IMAGE))
    cfg = _dataset_cfg(tiny_cfg, tiny_copy)
    cfg.update(num_workers=1, persistent_workers=False)
    with pytest.raises(FileNotFoundError, match=rf'{TRAIN_IMAGE} .*is missing'):
        _first_batch(cfg)


def test_evaluation_does_not_skip_a_bad_image(tiny_cfg, tiny_copy):
    _write(osp.join(tiny_copy, IMG_DIR, VAL_IMAGE), b'not an image')
    with pytest.raises(OSError, match=rf'{VAL_IMAGE} .*cannot be decoded'):
        _first_batch(_dataset_cfg(tiny_cfg, tiny_copy, 'val'))
    # and the skipping wrapper refuses evaluation datasets
    cfg = _dataset_cfg(tiny_cfg, tiny_copy, 'val')
    cfg.dataset = dict(type='SkipBadSamplesDataset', dataset=cfg.dataset)
    with pytest.raises(ValueError, match='training datasets only.*Evaluation must score'):
        _first_batch(cfg)


# --------------------------------------------------------------- opt-in skipping (train)
def _two_image_train_copy(root):
    """Give ref 2 and 3 their own image (a copy of the train image) so one can break."""
    src = osp.join(root, IMG_DIR, TRAIN_IMAGE)
    dst_name = 'copy_000000039769.jpg'
    _write(osp.join(root, IMG_DIR, dst_name), open(src, 'rb').read())

    def edit(inst):
        im = dict(next(i for i in inst['images'] if i['file_name'] == TRAIN_IMAGE))
        im.update(id=777, file_name=dst_name)
        inst['images'].append(im)
        for a in inst['annotations']:
            if a['id'] in ann_ids:
                a['image_id'] = 777

    with open(osp.join(root, 'refcoco', 'refs(unc).p'), 'rb') as f:
        refs = pickle.load(f)
    ann_ids = {r['ann_id'] for r in refs if r['ref_id'] in (2, 3)}
    edit_instances(root, edit)
    return dst_name


def test_skip_bad_samples_is_opt_in_counted_and_logged(tiny_cfg, tiny_copy, mm_log):
    bad = _two_image_train_copy(tiny_copy)
    _write(osp.join(tiny_copy, IMG_DIR, bad), b'\xff\xd8 corrupt')
    cfg = _dataset_cfg(tiny_cfg, tiny_copy)
    # default: the bad image stops the run
    with pytest.raises(OSError, match=rf'{bad} .*cannot be decoded'):
        ds = DATASETS.build(cfg.dataset)
        [ds[i] for i in range(len(ds))]
    # opt in
    wrapped = DATASETS.build(dict(type='SkipBadSamplesDataset', dataset=cfg.dataset,
                                  max_skips=5))
    assert len(wrapped) == 4
    items = [wrapped[i] for i in range(len(wrapped))]
    assert all(it['inputs'].shape[0] == 3 for it in items)
    # refs 2 and 3 share the bad image; a failed index i is replaced by i + 1
    # (deterministic), wrapping around: 2 -> 3 (bad) -> 0, 3 -> 0. Every failed load counts.
    ref_ids = [it['data_samples'].metainfo['ref_id'] for it in items]
    assert ref_ids == [0, 1, 0, 0]
    assert wrapped.num_skipped == 3
    assert [(i, p.endswith(bad)) for i, p, _ in wrapped.skipped] == [(2, True), (3, True),
                                                                      (3, True)]
    out = '\n'.join(mm_log)
    assert out.count('SkipBadSamplesDataset: skipped sample') == 3
    assert bad in out and 'cannot be decoded' in out and '3 skipped so far' in out
    # the limit
    strict = SkipBadSamplesDataset(DATASETS.build(cfg.dataset), max_skips=1)
    with pytest.raises(RuntimeError, match='More than max_skips=1'):
        [strict[i] for i in range(len(strict))]


def test_skip_bad_samples_raises_on_a_broken_pipeline(tiny_cfg, tiny_copy):
    cfg = _dataset_cfg(tiny_cfg, tiny_copy, img_dir='no/such/dir')  # every image missing
    ds = DATASETS.build(cfg.dataset)
    wrapped = SkipBadSamplesDataset(ds, max_consecutive=3, max_skips=100)
    with pytest.raises(RuntimeError, match='3 consecutive samples .* failed to load'):
        wrapped[0]


class _FailsAt:
    """A training dataset of ``n`` items whose indices in ``bad`` raise; an item is the
    index it was asked for (with its tags)."""

    def __init__(self, n, bad):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        if int(idx) in self.bad:
            raise OSError(f'cannot decode item {int(idx)}')
        return idx


def _shard(monkeypatch, dataset, rank, world_size=2, epoch=1):
    import mmengine.dataset.sampler as sampler_module

    from mmrefseg.datasets import EpochTaggedSampler
    monkeypatch.setattr(sampler_module, 'get_dist_info', lambda: (rank, world_size))
    sampler = EpochTaggedSampler(dataset, shuffle=True, seed=0)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_skipped_sample_is_replaced_from_the_same_ranks_shard(monkeypatch):
    n, bad = 20, {3, 4, 11}
    ds = _FailsAt(n, bad)
    crossed = 0  # bad indices whose idx + 1 (the old substitute) is on the other rank
    for rank in (0, 1):
        shard = _shard(monkeypatch, ds, rank)
        ints = [int(i) for i in shard]
        wrapped = SkipBadSamplesDataset(ds, max_skips=10)
        for pos, idx in enumerate(shard):
            got = wrapped[idx]
            if int(idx) not in bad:
                assert got is idx
                continue
            crossed += (int(idx) + 1) % n not in ints
            # the next readable index of THIS rank's shard, same epoch
            following = [j for j in ints[pos + 1:] + ints[:pos] if j not in bad]
            assert int(got) == following[0] and got.epoch == 1, (rank, idx, got)
    assert crossed >= 1  # the test covers the case the old idx + 1 got wrong


def test_untagged_indices_fall_back_to_the_next_index_with_a_warning(monkeypatch, mm_log):
    import mmrefseg.engine.skip_bad_samples as skip_module
    monkeypatch.setattr(skip_module, 'get_dist_info', lambda: (0, 2))
    wrapped = SkipBadSamplesDataset(_FailsAt(6, {2}))
    assert [wrapped[i] for i in (2, 2)] == [3, 3]
    warned = [m for m in mm_log if 'carry no same-rank alternates' in m]
    assert len(warned) == 1 and 'EpochTaggedSampler' in warned[0]


# --------------------------------------------------------------- text
def test_long_sentence_is_truncated_keeping_sep(tiny_cfg):
    from mmrefseg.datasets.transforms import TokenizeText
    tok = TokenizeText(max_length=8)
    out = tok(dict(text='the very tall man standing on the far left of the picture'))
    assert out['text_mask'].sum() == 8 and out['text_ids'][7] == 102  # [SEP] kept


def test_long_sentence_truncation_is_counted_and_reported_once(mm_log):
    from mmrefseg.datasets.transforms import TokenizeText
    tok = TokenizeText(max_length=8)
    long = 'the very tall man standing on the far left of the picture'
    for i in range(3):
        tok(dict(text=long, ref_id=i, sent_id=i))
    tok(dict(text='a cat'))
    assert tok.num_truncated == 3
    reports = [m for m in mm_log if 'truncated' in m]  # one WARNING, mmengine's logger
    assert len(reports) == 1 and 'max_length=8' in reports[0], mm_log


@pytest.mark.parametrize('text,expect', [
    ('the café on the left', 'the cafe on the left'),     # accents stripped (uncased BERT)
    ('the 🐱 on the right', 'the [UNK] on the right'),      # emoji → [UNK]
    ('左边的猫', '[UNK] [UNK] 的 [UNK]'),  # CJK: one token per character ([UNK] if not in vocab)
    ('ＴＨＥ　ＣＡＴ', 'the cat'),                             # full-width: NFKC-folded
    ('the ﬁrst cup…', 'the first cup . . .'),               # ligature, ellipsis: NFKC
])
def test_non_ascii_and_emoji_text_tokenizes(text, expect):
    from mmrefseg.datasets.transforms import TokenizeText
    from mmrefseg.datasets.transforms.text import build_tokenizer
    tok = TokenizeText(max_length=16)
    ids = tok(dict(text=text))['text_ids']
    words = build_tokenizer().convert_ids_to_tokens([int(i) for i in ids if i not in (0, 101,
                                                                                      102)])
    assert ' '.join(words).replace(' ##', '') == expect


def test_non_ascii_and_emoji_text_through_the_model(tiny_model):
    from mmrefseg.apis import inference_model
    img = cv2.imread(osp.join(REPO, 'tests/data/tiny_refer', IMG_DIR, VAL_IMAGE))
    res = inference_model(tiny_model, img, ['the café 🐱 on the left', '左边的猫', '🐱🐱🐱'])
    assert [r.pred_sem_seg.data.shape[-2:] for r in res] == [img.shape[:2]] * 3
    assert all(torch.isfinite(r.seg_logits.data).all() for r in res)


# --------------------------------------------------------------- image formats
def _variants(bgr):
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 128
    return dict(gray=(gray, '.png'), rgba=(rgba, '.png'),
                uint16=(bgr.astype(np.uint16) * 257, '.png'),
                gray_jpeg=(gray, '.jpg'))


def _palette_png(bgr, path):
    from PIL import Image
    Image.fromarray(bgr[..., ::-1]).convert('P', palette=Image.ADAPTIVE, colors=64).save(path)


@pytest.mark.parametrize('kind', ['gray', 'rgba', 'palette', 'uint16', 'gray_jpeg'])
def test_image_formats_through_pipeline_and_model(tiny_cfg, tiny_copy, tiny_model, kind):
    """Every format decodes to 3-channel 8-bit BGR at the annotated size and runs."""
    path = osp.join(tiny_copy, IMG_DIR, VAL_IMAGE)
    bgr = cv2.imread(path)
    # the file keeps its name (and .jpg extension): decoders sniff the content
    if kind == 'palette':
        tmp = path + '.png'
        _palette_png(bgr, tmp)
        os.replace(tmp, path)
    else:
        arr, ext = _variants(bgr)[kind]
        ok, buf = cv2.imencode(ext, arr)
        assert ok
        _write(path, buf.tobytes())
    batch = _first_batch(_dataset_cfg(tiny_cfg, tiny_copy, 'val'))
    inputs = batch['inputs'][0]
    assert inputs.dtype == torch.uint8 and inputs.shape[0] == 3
    sample = batch['data_samples'][0]
    assert sample.ori_shape == bgr.shape[:2]
    if kind == 'uint16':  # 16 → 8 bit by the decoder (value >> 8): the original image
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        assert np.abs(img.astype(int) - bgr.astype(int)).max() <= 1
    with torch.no_grad():
        out = tiny_model.test_step(batch)
    assert out[0].pred_sem_seg.data.shape[-2:] == bgr.shape[:2]


def test_image_smaller_than_the_stride(tiny_model):
    from mmrefseg.apis import inference_model
    img = np.full((5, 7, 3), 127, np.uint8)
    res = inference_model(tiny_model, img, 'the thing')[0]
    assert res.pred_sem_seg.data.shape == (1, 5, 7)
    assert res.seg_logits.data.shape == (2, 5, 7)


BIG_SCRIPT = r'''
import resource, sys
import numpy as np
from mmrefseg.apis import init_model, inference_model
model = init_model(sys.argv[1], device='cpu')
img = np.zeros((6000, 8000, 3), np.uint8)
img[1000:3000, 2000:5000] = 200
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = inference_model(model, img, ['the box'])[0]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print('SHAPE', tuple(res.pred_sem_seg.data.shape), 'BASE_MB', base // 1024,
      'PEAK_MB', peak // 1024)
'''


def test_very_large_image_at_inference_keeps_memory_bounded():
    """8000×6000 through inference_model on the tiny config: the network sees the
    config's input size; only the outputs are full size (logits 2×H×W fp32, uint8 mask;
    no priors unless asked) — measured: 0.50 GB above the model's footprint for one
    sentence (1.14 GB when every prior was resized to full size and the mask was int64)."""
    proc = subprocess.run([sys.executable, '-c', BIG_SCRIPT, TINY_CONFIG], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r'SHAPE \(1, 6000, 8000\) BASE_MB (\d+) PEAK_MB (\d+)', proc.stdout)
    assert m, proc.stdout[-2000:]
    base, peak = int(m.group(1)), int(m.group(2))
    assert peak - base < 800, (base, peak)


# --------------------------------------------------------------- checkpoints
@pytest.fixture(scope='module')
def tiny_state(tiny_model):
    return {k: v.clone() for k, v in tiny_model.state_dict().items()}


def _fresh_model(tiny_cfg):
    return MODELS.build(tiny_cfg.model)


def test_partial_and_mismatched_checkpoint(tiny_cfg, tiny_state, tmp_path, capsys):
    state = dict(tiny_state)
    dropped = [k for k in state if k.startswith('decode_head.')]
    for k in dropped:
        del state[k]
    shaped = next(k for k in state if k.endswith('weight') and state[k].dim() == 4)
    state[shaped] = torch.zeros(3, *state[shaped].shape[1:])
    state['extra.from_another_model'] = torch.zeros(1)
    path = str(tmp_path / 'partial.pth')
    torch.save(dict(state_dict=state, meta={}), path)

    model = _fresh_model(tiny_cfg)
    with pytest.raises(RuntimeError) as e:
        load_checkpoint(model, path, strict=True)
    msg = str(e.value)
    assert f'size mismatch for {shaped}' in msg
    assert 'unexpected key in source state_dict: extra.from_another_model' in msg
    assert 'missing keys in source state_dict: ' in msg and dropped[0] in msg

    model = _fresh_model(tiny_cfg)
    load_checkpoint(model, path, strict=False)  # loads what matches, warns with the lists
    out = capsys.readouterr().out
    assert f'size mismatch for {shaped}' in out and dropped[-1] in out
    loaded = model.state_dict()
    same = next(k for k in state if k.startswith('backbone.') and k != shaped
                and state[k].dtype.is_floating_point)
    assert torch.equal(loaded[same], tiny_state[same])


def test_checkpoint_from_another_model(tiny_cfg, tmp_path, capsys):
    from .toy import ToyModel
    path = str(tmp_path / 'other.pth')
    torch.save(dict(state_dict=ToyModel().state_dict(), meta={}), path)
    with pytest.raises(RuntimeError, match=r'unexpected key in source state_dict: '
                                           r'linear\.weight'):
        load_checkpoint(_fresh_model(tiny_cfg), path, strict=True)
    load_checkpoint(_fresh_model(tiny_cfg), path, strict=False)
    out = capsys.readouterr().out
    assert 'missing keys in source state_dict' in out and 'backbone.' in out


def test_unknown_type_in_config_names_it(tiny_cfg):
    cfg = copy.deepcopy(tiny_cfg.model)
    cfg.backbone.type = 'BSAMSwinTransformr'
    with pytest.raises(KeyError, match=r'BSAMSwinTransformr is not in the mmseg::model '
                                       r'registry.*registered'):
        MODELS.build(cfg)
