# Copyright (c) mmrefseg contributors. All rights reserved.
"""mmrefseg.apis: init_model / inference_model on the tiny config and the fixture image."""
import os.path as osp

import mmcv
import numpy as np
import pytest
import torch
from mmengine.runner import save_checkpoint

import mmrefseg  # noqa: F401
from mmrefseg.apis import build_inference_pipeline, inference_model, init_model

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs/mpg_lqgnet_tiny_refer.py')
IMAGE = osp.join(REPO, 'tests/data/tiny_refer/images/mscoco/images/train2014/'
                 '000000039769.jpg')
TEXTS = ['the cat on the left', 'the remote control', 'a cat']


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return init_model(CONFIG, device='cpu')


@pytest.fixture(scope='module')
def results(model):
    return inference_model(model, IMAGE, TEXTS, return_priors=True)


def test_one_result_per_sentence_at_original_resolution(model, results):
    h, w = mmcv.imread(IMAGE).shape[:2]
    n_layers = model.cfg.model.decode_head.num_layers
    assert len(results) == len(TEXTS)
    for i, (text, r) in enumerate(zip(TEXTS, results)):
        assert r.text == text and r.sent_id == i
        assert r.pred_sem_seg.data.shape == (1, h, w)
        assert set(r.pred_sem_seg.data.unique().tolist()) <= {0, 1}
        assert r.seg_logits.data.shape == (2, h, w)
        assert r.mask_priors.data.shape == (n_layers, h, w)
        p = r.mask_priors.data
        assert float(p.min()) >= 0 and float(p.max()) <= 1  # foreground probabilities
        # the mask is the argmax of the score map
        assert torch.equal(r.pred_sem_seg.data[0],
                           r.seg_logits.data.argmax(0).to(r.pred_sem_seg.data.dtype))
        assert r.img_path == IMAGE


def test_priors_only_with_return_priors(model, results):
    """Without return_priors nothing computes the N_l×H×W priors; the masks and logits are
    the same either way (h6's web UI and the demo ask for them)."""
    plain = inference_model(model, IMAGE, TEXTS)
    for p, r in zip(plain, results):
        assert 'mask_priors' not in p and 'mask_priors' in r
        assert torch.equal(p.pred_sem_seg.data, r.pred_sem_seg.data)
        torch.testing.assert_close(p.seg_logits.data, r.seg_logits.data)
        assert p.input_pred_sem_seg.data.shape[-2:] == tuple(p.img_shape)


def test_sentences_change_the_prediction(results):
    assert not torch.equal(results[0].seg_logits.data, results[1].seg_logits.data)


def test_single_string_batching_and_array_input_agree(model, results):
    one = inference_model(model, IMAGE, TEXTS[1])
    assert len(one) == 1
    torch.testing.assert_close(one[0].seg_logits.data, results[1].seg_logits.data,
                               atol=1e-4, rtol=1e-4)
    by_one = inference_model(model, IMAGE, TEXTS[:2], batch_size=1)
    for a, b in zip(by_one, results[:2]):
        torch.testing.assert_close(a.seg_logits.data, b.seg_logits.data, atol=1e-4,
                                   rtol=1e-4)
    from_array = inference_model(model, mmcv.imread(IMAGE), TEXTS[:1])  # BGR array
    torch.testing.assert_close(from_array[0].seg_logits.data, results[0].seg_logits.data,
                               atol=1e-4, rtol=1e-4)


def test_checkpoint_is_loaded(model, tmp_path):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k in state if k.startswith('decode_head') and state[k].is_floating_point())
    state[key] = torch.full_like(state[key], 0.125)
    path = str(tmp_path / 'ckpt.pth')
    save_checkpoint(dict(state_dict=state, meta=dict(
        dataset_meta=dict(classes=('background', 'object'), palette=[[0, 0, 0], [1, 2, 3]]))),
        path)
    loaded = init_model(CONFIG, path, device='cpu')
    assert torch.equal(loaded.state_dict()[key], state[key])
    assert loaded.dataset_meta['palette'] == [[0, 0, 0], [1, 2, 3]]
    assert not loaded.training


def test_pipeline_drops_annotation_loading(model):
    pipeline = build_inference_pipeline(model.cfg)
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names[0] == 'LoadImageFromNDArray' and 'LoadRefAnnotations' not in names
    assert 'TokenizeText' in names and names[-1] == 'PackRefSegInputs'


@pytest.mark.parametrize('image,texts,err,match', [
    (IMAGE, [], ValueError, 'texts is empty'),
    (IMAGE, ['ok', ''], ValueError, 'non-empty string'),
    ('missing.jpg', 'a cat', FileNotFoundError, 'missing.jpg'),
    (np.zeros((4, 4, 2), np.uint8), 'a cat', ValueError, 'H×W×3'),
    (3, 'a cat', TypeError, 'path or a numpy array'),
])
def test_bad_inputs_are_named(model, image, texts, err, match):
    with pytest.raises(err, match=match):
        inference_model(model, image, texts)


def test_init_model_errors():
    with pytest.raises(FileNotFoundError, match='nope.py'):
        init_model('nope.py')
    with pytest.raises(TypeError, match='Config'):
        init_model(42)


# ------------------------------------------------- a user's photo with an EXIF orientation
@pytest.mark.parametrize('orientation,turn', [(6, -1), (8, 1)])
def test_a_tagged_photo_is_segmented_upright(model, tmp_path, orientation, turn):
    """The demo and inference_model apply the tag: the masks are in the upright frame the
    user sees (and describes); an array is used as it is."""
    from PIL import Image
    stored = np.zeros((40, 64, 3), np.uint8)
    stored[:, :16] = 255  # white stripe on the stored left
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = str(tmp_path / f'photo_{orientation}.jpg')
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    (res, ) = inference_model(model, path, ['the white stripe'])
    assert res.pred_sem_seg.data.shape == (1, 64, 40)  # upright: 64 high, 40 wide
    assert res.ori_shape == (64, 40)
    upright = np.rot90(stored, k=turn)  # 6: rotate 90° clockwise to show, 8: anticlockwise
    seen = mmcv.imread(path, flag='color')
    assert np.abs(seen.astype(int) - upright.astype(int)).mean() < 8
    (arr, ) = inference_model(model, stored[..., ::-1].copy(), ['the white stripe'])
    assert arr.pred_sem_seg.data.shape == (1, 40, 64)  # an array: as it is

    import importlib.util
    spec = importlib.util.spec_from_file_location('demo', osp.join(REPO, 'tools', 'demo.py'))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out_file = str(tmp_path / 'demo.png')
    demo.main([path, CONFIG, '--texts', 'the white stripe', '--out-file', out_file])
    n_layers = model.cfg.model.decode_head.num_layers
    assert mmcv.imread(out_file).shape[:2] == (64, (1 + n_layers) * 40)
