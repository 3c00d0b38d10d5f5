# Copyright (c) mmrefseg contributors. All rights reserved.
"""RefEncoderDecoder + RefSegDataPreProcessor: loss / predict / tensor modes, gradients,
post-processing at the original size, several sentences for one image, mixing with stock
mmseg heads and with other backbones."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmrefseg  # noqa: F401  (registers everything)
from mmrefseg.models.data_preprocessors import RefSegDataPreProcessor  # noqa: F401
from mmrefseg.models.segmentors import RefEncoderDecoder  # noqa: F401

init_default_scope('mmseg')  # as configs do (default_scope='mmseg')

IN_CH = (8, 16, 32, 64)
CQ = 16
NT = 6
S = 64  # network input size


@MODELS.register_module(name='_TestTextEncoder', force=True)
class _TestTextEncoder(nn.Module):
    """Stand-in language encoder: embedding → (B×Nt×C_t, B×Nt)."""

    def __init__(self, vocab=50, dims=12):
        super().__init__()
        self.emb = nn.Embedding(vocab, dims)

    def forward(self, ids, mask):
        return self.emb(ids), mask


@MODELS.register_module(name='_TestQueryBackbone', force=True)
class _TestQueryBackbone(nn.Module):
    """Stand-in for 'another backbone': four strided conv maps modulated by the sentence
    vector, plus K language queries → (F_1, F_2, F_3, F_4, Q)."""

    def __init__(self, text_dims=12, channels=IN_CH, num_queries=4, query_dims=CQ):
        super().__init__()
        self.stem = nn.Conv2d(3, channels[0], 4, stride=4)
        self.downs = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], 2, stride=2) for i in range(3))
        self.text_proj = nn.ModuleList(nn.Linear(text_dims, c) for c in channels)
        self.query = nn.Linear(text_dims, num_queries * query_dims)
        self.num_queries, self.query_dims = num_queries, query_dims

    def forward(self, img, text, mask):
        m = mask.unsqueeze(-1).float()
        sent = (text * m).sum(1) / m.sum(1).clamp(min=1)
        x, outs = self.stem(img), []
        for i in range(4):
            if i:
                x = self.downs[i - 1](x)
            x = x * torch.sigmoid(self.text_proj[i](sent))[:, :, None, None]
            outs.append(x)
        q = self.query(sent).view(-1, self.num_queries, self.query_dims)
        return tuple(outs) + (q, )


def model_cfg(**head_kw):
    head = dict(type='LQPGHead', in_channels=IN_CH, channels=CQ, decoder_channels=24,
                num_layers=2, num_heads=2, ffn_channels=32, prior_channels=8,
                proj_norm_cfg=dict(type='GN', num_groups=4), norm_cfg=dict(type='BN'))
    head.update(head_kw)
    return dict(
        type='RefEncoderDecoder',
        data_preprocessor=dict(type='RefSegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, size=(S, S)),
        text_encoder=dict(type='_TestTextEncoder'),
        backbone=dict(type='_TestQueryBackbone'),
        decode_head=head,
        test_cfg=dict(mode='whole'))


def sample(ids, ori_shape=(S, S), flip=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = SegDataSample()
    ids = torch.tensor(ids + [0] * (NT - len(ids)))
    s.set_data(dict(text_ids=ids, text_mask=(ids > 0).long()))
    s.gt_sem_seg = PixelData(data=torch.randint(0, 2, (1, S, S), generator=g))
    s.set_metainfo(dict(img_shape=(S, S), ori_shape=ori_shape, flip=flip,
                        flip_direction='horizontal' if flip else None))
    return s


def batch(n=2, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return dict(inputs=[torch.randint(0, 256, (3, S, S), generator=g, dtype=torch.uint8)
                        for _ in range(n)],
                data_samples=[sample([5 + i, 7, 9][:2 + i % 2], seed=i, **kw) for i in range(n)])


def build(**head_kw):
    torch.manual_seed(0)
    return MODELS.build(model_cfg(**head_kw))


def test_train_step_loss_keys_and_every_parameter_gets_gradient():
    model = build()
    data = model.data_preprocessor(batch(), training=True)
    losses = model(**data, mode='loss')
    assert set(losses) == {'decode.loss_mask', 'decode.loss_prior_l0', 'decode.loss_prior_l1',
                           'decode.acc_seg'}
    total, _ = model.parse_losses(losses)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    # one optimizer step through mmengine changes the weights
    model.zero_grad()
    optim = build_optim_wrapper(model, dict(optimizer=dict(type='AdamW', lr=1e-3)))
    before = copy.deepcopy(model.decode_head.conv_seg.weight.data)
    log = model.train_step(batch(), optim)
    assert 'loss' in log and torch.isfinite(log['loss'])
    assert not torch.equal(before, model.decode_head.conv_seg.weight.data)


def test_predict_original_size_flip_and_priors():
    model = build().eval()
    model.test_cfg['return_priors'] = True
    with torch.no_grad():
        data = model.data_preprocessor(batch(ori_shape=(100, 80)), training=False)
        out = model(**data, mode='predict')
        flipped = model.data_preprocessor(batch(ori_shape=(100, 80), flip=True))
        out_f = model(**flipped, mode='predict')
    for s in out:
        assert s.seg_logits.shape == (100, 80) and s.seg_logits.data.shape[0] == 2
        assert s.pred_sem_seg.data.shape == (1, 100, 80)
        assert s.pred_sem_seg.data.dtype == torch.uint8
        assert set(s.pred_sem_seg.data.unique().tolist()) <= {0, 1}
        assert torch.equal(s.pred_sem_seg.data[0], s.seg_logits.data.argmax(0).byte())
        assert s.input_pred_sem_seg.data.shape == (1, S, S)
        assert s.mask_priors.data.shape == (2, 100, 80)  # N_l × H × W
        assert 0 <= s.mask_priors.data.min() and s.mask_priors.data.max() <= 1
    # flip is undone (the network saw the same image, so logits come out mirrored)
    assert torch.allclose(out_f[0].seg_logits.data, out[0].seg_logits.data.flip(-1), atol=1e-6)
    assert torch.allclose(out_f[0].mask_priors.data, out[0].mask_priors.data.flip(-1),
                          atol=1e-6)
    assert torch.equal(out_f[0].input_pred_sem_seg.data, out[0].input_pred_sem_seg.data.flip(-1))


def test_priors_only_on_request_and_equal_to_the_heads():
    """No priors (and no intermediate prior computed) unless asked; when asked, every
    layer's softmax foreground probability, resized like the logits."""
    model = build().eval()

    def data():  # predict writes into the samples: fresh ones for every call
        return model.data_preprocessor(batch(ori_shape=(100, 80)), training=False)

    calls = []
    for head in model.decode_head.lqpg.prior_heads.values():
        head.register_forward_hook(lambda m, i, o: calls.append(m))
    with torch.no_grad():
        plain = model.predict(**data())
        assert len(calls) == 1  # the last layer's prior only: the mask head reads it
        calls.clear()
        asked = model.predict(**data(), return_priors=True)
        assert len(calls) == 2
        y, priors = model(mode='tensor', **data())
    for p, a in zip(plain, asked):
        assert 'mask_priors' not in p
        torch.testing.assert_close(p.seg_logits.data, a.seg_logits.data)  # same Y
        assert torch.equal(p.pred_sem_seg.data, a.pred_sem_seg.data)
    for i, a in enumerate(asked):
        for layer, prior in enumerate(priors):
            prob = prior[i:i + 1].softmax(1)[:, 1:]
            expect = F.interpolate(F.interpolate(prob, size=(S, S), mode='bilinear'),
                                   size=(100, 80), mode='bilinear')[0, 0]
            torch.testing.assert_close(a.mask_priors.data[layer], expect)
    # test_cfg asks too (tools/test.py --show-dir sets it)
    model.test_cfg['return_priors'] = True
    with torch.no_grad():
        assert all('mask_priors' in s for s in model.predict(**data()))


def test_return_logits_off_keeps_the_same_masks():
    """The evaluation configs drop seg_logits (384 MB at 8000×6000); the masks stay."""
    model = build().eval()

    def data():
        return model.data_preprocessor(batch(ori_shape=(100, 80)), training=False)

    with torch.no_grad():
        full = model.predict(**data())
        lean = model.predict(**data(), return_logits=False)
        model.test_cfg['return_logits'] = False
        lean_cfg = model.predict(**data())
    for f, a, b in zip(full, lean, lean_cfg):
        assert 'seg_logits' not in a and 'seg_logits' not in b and 'mask_priors' not in a
        assert set(a.keys()) == {'text_ids', 'text_mask', 'gt_sem_seg', 'pred_sem_seg',
                                 'input_pred_sem_seg'}
        for key in ('pred_sem_seg', 'input_pred_sem_seg'):
            assert torch.equal(f.get(key).data, a.get(key).data)
            assert torch.equal(f.get(key).data, b.get(key).data)


def test_input_size_prediction_is_the_argmax_at_the_input():
    """input_pred_sem_seg = argmax of the logits upsampled to img_shape (not resized from
    the original size), padding removed."""
    model = build().eval()
    model.data_preprocessor.test_cfg = dict(size=(S + 16, S + 16))  # pad right/bottom
    with torch.no_grad():
        data = model.data_preprocessor(batch(ori_shape=(100, 80)))
        y, _ = model(data['inputs'], data['data_samples'], mode='tensor')
        out = model.predict(**data)
    for i, s in enumerate(out):
        logits = F.interpolate(y[i:i + 1], size=(S + 16, S + 16), mode='bilinear')
        expect = logits[0, :, :S, :S].argmax(0).byte()
        assert torch.equal(s.input_pred_sem_seg.data[0], expect)


def test_predict_removes_padding():
    model = build().eval()
    model.data_preprocessor.test_cfg = dict(size=(S + 16, S + 16))  # pad right/bottom
    with torch.no_grad():
        data = model.data_preprocessor(batch(ori_shape=(S, S)))
        assert data['inputs'].shape[2:] == (S + 16, S + 16)
        y, _ = model(data['inputs'], data['data_samples'], mode='tensor')
        padded = model(**data, mode='predict')
        with_priors = model.predict(**data, return_priors=True)
    assert padded[0].seg_logits.shape == (S, S) and with_priors[0].mask_priors.shape == (S, S)
    # logits resized to the padded input, then the top-left S×S kept (padding is right/bottom)
    expect = F.interpolate(y[:1], size=(S + 16, S + 16), mode='bilinear')[0, :, :S, :S]
    assert torch.allclose(padded[0].seg_logits.data, expect, atol=1e-5)
    assert tuple(padded[0].metainfo['img_padding_size']) == (0, 16, 0, 16)


def test_several_sentences_for_one_image_and_tensor_mode():
    model = build().eval()
    data = batch(n=1)
    img = model.data_preprocessor(data)['inputs']
    sents = [[5, 7], [6, 9, 11], [8]]
    with torch.no_grad():
        joint = model.predict(img, [sample(t) for t in sents])
        single = [model.predict(img, [sample(t)])[0] for t in sents]
        y, priors = model(img, [sample(t) for t in sents], mode='tensor')
    assert len(joint) == 3 and y.shape == (3, 2, S // 4, S // 4) and len(priors) == 2
    for a, b in zip(joint, single):
        assert torch.allclose(a.seg_logits.data, b.seg_logits.data, atol=1e-5)
    # different sentences → different outputs (the text is used)
    assert not torch.allclose(joint[0].seg_logits.data, joint[1].seg_logits.data)


def test_clear_errors():
    model = build()
    bad = batch()
    del bad['data_samples'][1].text_ids
    with pytest.raises(ValueError, match='TokenizeText'):
        model.data_preprocessor(bad, training=True)
    img = torch.zeros(2, 3, S, S)
    with pytest.raises(ValueError, match='text_ids'):
        model.predict(img, None)
    with pytest.raises(ValueError, match='2 images but 3 sentences'):
        model.loss(img, [sample([5])] * 3)
    cfg = model_cfg()
    cfg['test_cfg'] = dict(mode='slide', crop_size=(S, S), stride=(S, S))
    with pytest.raises(ValueError, match='whole'):
        MODELS.build(cfg)


def test_preprocessor_stacks_without_size_and_normalises():
    pre = MODELS.build(dict(type='RefSegDataPreProcessor', mean=[0, 0, 0], std=[2, 2, 2]))
    out = pre(batch(), training=True)
    assert out['inputs'].shape == (2, 3, S, S) and out['inputs'].dtype == torch.float32
    assert torch.allclose(out['inputs'][0], batch()['inputs'][0].float() / 2)
    assert out['data_samples'][0].text_ids.dtype == torch.long
    mixed = batch()
    mixed['inputs'][1] = torch.zeros(3, S, S + 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match='different sizes'):
        pre(mixed, training=True)


def test_stock_mmseg_head_under_a_query_backbone_trains_one_step():
    """FPNHead with in_index=(0, 1, 2, 3) ignores Q (the last element)."""
    cfg = model_cfg()
    cfg['decode_head'] = dict(type='FPNHead', in_channels=list(IN_CH), in_index=[0, 1, 2, 3],
                              feature_strides=[4, 8, 16, 32], channels=16, num_classes=2,
                              out_channels=2, norm_cfg=dict(type='BN'), dropout_ratio=0.0)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    optim = build_optim_wrapper(model, dict(optimizer=dict(type='AdamW', lr=1e-3)))
    log = model.train_step(batch(), optim)
    assert torch.isfinite(log['loss'])
    with torch.no_grad():
        out = model.eval().predict(model.data_preprocessor(batch())['inputs'],
                                   batch()['data_samples'])
    assert out[0].pred_sem_seg.shape == (S, S) and 'mask_priors' not in out[0]


# --------------------------------------------------------------------------- real tiny model
def _tiny_cfg():
    import os.path as osp

    from mmengine.config import Config
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    cfg = Config.fromfile(osp.join(root, 'configs/_base_/models/mpg_lqgnet_tiny.py'))
    cfg.model.data_preprocessor.size = None
    return cfg


def _bert_batch(n=2):
    data = batch(n)
    for s, ids in zip(data['data_samples'], ([101, 1996, 4937, 102], [101, 2157, 102])):
        ids = torch.tensor(ids + [0] * (NT - len(ids)))
        s.set_data(dict(text_ids=ids, text_mask=(ids > 0).long()))
    return data


def test_tiny_mpg_lqgnet_one_backward_reaches_every_parameter():
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    data = model.data_preprocessor(_bert_batch(), training=True)
    x = model.extract_feat(data['inputs'], data['data_samples'])
    assert [tuple(t.shape) for t in x] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4),
                                           (2, 256, 2, 2), (2, 4, 64)]
    losses = model(**data, mode='loss')
    assert {k for k in losses if 'loss' in k} == {'decode.loss_mask', 'decode.loss_prior_l0',
                                                  'decode.loss_prior_l1'}
    model.parse_losses(losses)[0].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_stock_fpn_head_under_the_bsam_backbone_trains_one_step_from_a_config():
    cfg = _tiny_cfg()
    cfg.model.decode_head = dict(
        type='FPNHead', in_channels=[32, 64, 128, 256], in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32], channels=16, num_classes=2, out_channels=2,
        dropout_ratio=0.0, norm_cfg=dict(type='BN'))
    # a stock head reads no queries: build none, so every parameter gets a gradient (DDP)
    cfg.model.backbone.query_stages = ()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    losses = model(**model.data_preprocessor(_bert_batch(), True), mode='loss')
    model.parse_losses(losses)[0].backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad()
    optim = build_optim_wrapper(model, dict(optimizer=dict(type='AdamW', lr=1e-4)))
    log = model.train_step(_bert_batch(), optim)
    assert torch.isfinite(log['loss'])
