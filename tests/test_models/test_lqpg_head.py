# Copyright (c) mmrefseg contributors. All rights reserved.
"""LQPGHead and its parts: shapes at every step, gradients, Eq 17, ablation switches."""
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from mmrefseg.models.decode_heads import (LQPG, LQPGHead, LQPGLayer, PixelDecoder, coord_map,
                                          sine_position_embedding)

IN_CH = (8, 16, 32, 64)
CQ = 16
H = W = 64  # input image size; maps at 16, 8, 4, 2


def _feats(b=2, k=4, cq=CQ, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(b, c, H // s, W // s, generator=g) for c, s in zip(IN_CH, (4, 8, 16, 32))]
    return tuple(maps) + (torch.randn(b, k, cq, generator=g), )


def _head(**kw):
    cfg = dict(in_channels=IN_CH, channels=CQ, decoder_channels=24, num_layers=3, num_heads=2,
               ffn_channels=32, prior_channels=8, proj_norm_cfg=dict(type='GN', num_groups=4),
               norm_cfg=dict(type='BN'))
    cfg.update(kw)
    torch.manual_seed(0)
    return LQPGHead(**cfg)


def _samples(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(b):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 2, (1, H, W), generator=g))
        out.append(s)
    return out


def test_pixel_decoder_shapes():
    dec = PixelDecoder(IN_CH, channels=24, out_channels=CQ,
                       proj_norm_cfg=dict(type='GN', num_groups=4))
    raw, proj = dec(_feats()[:4])
    assert [tuple(r.shape) for r in raw] == [(2, 24, 16, 16), (2, 24, 8, 8), (2, 24, 4, 4),
                                             (2, 64, 2, 2)]  # F'_D4 = F_4
    assert [tuple(p.shape) for p in proj] == [(2, CQ, s, s) for s in (16, 8, 4, 2)]
    assert torch.equal(raw[3], _feats()[3])
    # odd sizes: Up resizes to F_i's size
    odd = [torch.randn(1, c, s, s) for c, s in zip(IN_CH, (15, 8, 4, 2))]
    assert dec(odd)[0][0].shape[2:] == (15, 15)
    # without projection (LQPG off)
    assert len(PixelDecoder(IN_CH, 24, None)(_feats()[:4])[1]) == 0


def test_pixel_decoder_errors():
    with pytest.raises(ValueError, match='four maps'):
        PixelDecoder((8, 16, 32))
    with pytest.raises(ValueError, match='num_groups'):
        PixelDecoder(IN_CH, 24, 18, proj_norm_cfg=dict(type='GN', num_groups=4))
    dec = PixelDecoder(IN_CH, 24, None)
    with pytest.raises(ValueError, match=r'F_2 has shape'):
        dec([torch.randn(1, 8, 16, 16), torch.randn(1, 17, 8, 8), torch.randn(1, 32, 4, 4),
             torch.randn(1, 64, 2, 2)])


def test_sine_position_embedding_values():
    pe = sine_position_embedding(2, 3, 8)
    assert pe.shape == (6, 8)
    # position (row 1, col 2) = flat index 5; y = 2/2·2π, x = 3/3·2π; dim_t = [1, 1, 100, 100]
    y = x = 2 * math.pi
    expect = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100),
              math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    assert torch.allclose(pe[5], torch.tensor(expect), atol=1e-5)
    # row 0, col 0: y = π, x = 2π/3
    assert torch.allclose(pe[0, 0], torch.tensor(math.sin(math.pi)), atol=1e-5)
    assert torch.allclose(pe[0, 4], torch.tensor(math.sin(2 * math.pi / 3)), atol=1e-5)
    with pytest.raises(ValueError, match='divisible by 4'):
        sine_position_embedding(2, 2, 6)


def test_lqpg_layer_matches_reference_attention():
    torch.manual_seed(0)
    layer = LQPGLayer(16, 4, 32).eval()
    q, k, v = torch.randn(2, 3, 16), torch.randn(2, 10, 16), torch.randn(2, 10, 16)
    q2, amap = layer(q, k, v)
    assert q2.shape == (2, 3, 16) and amap.shape == (2, 3, 4, 10)  # B×K×h×N
    assert torch.allclose(amap.sum(-1), torch.ones(2, 3, 4))
    # same numbers as torch's fused attention
    heads = lambda x: x.view(2, -1, 4, 4).transpose(1, 2)  # noqa: E731
    ref = F.scaled_dot_product_attention(heads(layer.q_proj(q)), heads(layer.k_proj(k)),
                                         heads(layer.v_proj(v))).transpose(1, 2).flatten(2)
    q1 = layer.norm1(q + layer.out_proj(ref))
    assert torch.allclose(q2, layer.norm2(q1 + layer.ffn(q1)), atol=1e-5)
    # pre-softmax maps are the logits of the same attention
    layer.attn_maps = 'pre_softmax'
    _, logits = layer(q, k, v)
    assert torch.allclose(logits.softmax(-1), amap, atol=1e-6)
    # the last layer builds no query update
    last = LQPGLayer(16, 4, 32, update_query=False)
    assert not hasattr(last, 'ffn') and not hasattr(last, 'v_proj')
    assert last(q, k, v)[0] is None


def test_lqpg_priors_and_scale():
    torch.manual_seed(0)
    lq = LQPG(CQ, num_queries=2, num_layers=2, num_heads=2, ffn_channels=32, prior_channels=4)
    feats = [torch.randn(1, CQ, s, s) for s in (8, 4, 2)]
    priors = lq(feats, torch.randn(1, 2, CQ), out_size=(16, 16))
    assert [tuple(p.shape) for p in priors] == [(1, 2, 16, 16)] * 2
    # 'num_keys' scaling is N_p × the literal maps: the prior's first linear sees N_p·A
    lq2 = LQPG(CQ, 2, 2, 2, 32, prior_channels=4, attn_scale='none')
    lq2.load_state_dict(lq.state_dict())
    n_p = 64 + 16 + 4
    for head in lq2.prior_heads.values():
        for lin in head.level_linears:
            lin.weight.data *= n_p
    q = torch.randn(1, 2, CQ)
    for a, b in zip(lq(feats, q, (16, 16)), lq2(feats, q, (16, 16))):
        assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match='num_queries'):
        lq(feats, torch.randn(1, 3, CQ), (16, 16))


@pytest.mark.parametrize('num_queries', [1, 2, 4])
def test_head_shapes_and_every_parameter_gets_gradient(num_queries):
    head = _head(num_queries=num_queries)
    y, priors = head(_feats(k=num_queries))
    assert y.shape == (2, 2, H // 4, W // 4)
    assert len(priors) == 3 and all(p.shape == (2, 2, H // 4, W // 4) for p in priors)
    losses = head.loss_by_feat((y, priors), _samples())
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    missing = [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    # only N_l - 1 query updates are built
    assert [hasattr(l, 'ffn') for l in head.lqpg.layers] == [True, True, False]


def test_loss_dict_is_eq17():
    head = _head()
    samples = _samples()
    y, priors = head(_feats())
    losses = head.loss_by_feat((y, priors), samples)
    assert set(losses) == {'loss_mask', 'loss_prior_l0', 'loss_prior_l1', 'loss_prior_l2',
                           'acc_seg'}
    label = torch.stack([s.gt_sem_seg.data for s in samples]).squeeze(1)

    def ce(logits):
        return F.cross_entropy(F.interpolate(logits, (H, W), mode='bilinear'), label)

    assert torch.allclose(losses['loss_mask'], ce(y), atol=1e-6)
    for i, p in enumerate(priors):
        assert torch.allclose(losses[f'loss_prior_l{i}'], 0.1 / 3 * ce(p), atol=1e-6)
    # mmengine's parse_losses sums every key containing 'loss' = Eq 17
    from mmengine.model import BaseModel
    total, _ = BaseModel.parse_losses(None, losses)
    eq17 = ce(y) + 0.1 * sum(ce(p) for p in priors) / 3
    assert torch.allclose(total, eq17, atol=1e-6)


# ------------------------------------------- every loss term under its own key (issue 14 §4)
CE = dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True)
DICE = dict(type='DiceLoss', use_sigmoid=False, ignore_index=0, loss_weight=1.0,
            loss_name='loss_dice')


def _dice(logits, label):
    """mmseg 1.2.2's DiceLoss(use_sigmoid=False, ignore_index=0), written out: V-Net dice of
    the softmax's class-1 channel (class 0 is the ignored index), eps 1e-3, batch mean."""
    prob = F.interpolate(logits, (H, W), mode='bilinear').softmax(dim=1)[:, 1].flatten(1)
    target = (label == 1).float().flatten(1)
    inter = (prob * target).sum(1)
    dice = 2 * inter / ((prob * prob).sum(1) + 1e-3 + (target * target).sum(1) + 1e-3)
    return (1 - dice).mean()


@pytest.mark.parametrize('prior_losses,prior_terms', [('first', ('ce', )),
                                                      ('all', ('ce', 'dice')),
                                                      (['loss_dice'], ('dice', )),
                                                      (['loss_ce', 'loss_dice'], ('ce', 'dice'))])
def test_each_loss_term_has_its_own_key_and_the_total_is_eq17_plus_extras(
        prior_losses, prior_terms):
    head = _head(loss_decode=[CE, DICE], prior_losses=prior_losses)
    samples = _samples()
    y, priors = head(_feats())
    losses = head.loss_by_feat((y, priors), samples)
    label = torch.stack([s.gt_sem_seg.data for s in samples]).squeeze(1)

    def ce(logits):
        return F.cross_entropy(F.interpolate(logits, (H, W), mode='bilinear'), label)

    fn = dict(ce=ce, dice=lambda x: _dice(x, label))
    expected = dict(loss_mask=ce(y), loss_dice=_dice(y, label))
    for i, p in enumerate(priors):
        for t in prior_terms:
            key = f'loss_prior_l{i}' if t == 'ce' else f'loss_dice_prior_l{i}'
            expected[key] = 0.1 / 3 * fn[t](p)
    assert set(losses) == set(expected) | {'acc_seg'}
    for k, v in expected.items():
        torch.testing.assert_close(losses[k], v, atol=1e-5, rtol=1e-5, msg=k)
    from mmengine.model import BaseModel
    total, log_vars = BaseModel.parse_losses(None, losses)
    hand = ce(y) + _dice(y, label) + 0.1 / 3 * sum(fn[t](p) for p in priors
                                                    for t in prior_terms)  # Eq 17 + extras
    torch.testing.assert_close(total, hand, atol=1e-5, rtol=1e-5)
    assert {'loss_mask', 'loss_dice'} <= set(log_vars)  # each term logged by mmengine


def test_loss_keys_and_prior_losses_errors():
    with pytest.raises(ValueError, match='own loss_name'):
        _head(loss_decode=[CE, dict(CE, loss_name='loss_mask')])
    with pytest.raises(ValueError, match='own loss_name'):
        _head(loss_decode=[CE, dict(DICE, loss_name='loss_ce'), DICE])
    with pytest.raises(ValueError, match=r"prior_losses names \['loss_focal'\]"):
        _head(loss_decode=[CE, DICE], prior_losses=['loss_focal'])
    with pytest.raises(ValueError, match="'first', 'all' or a list"):
        _head(prior_losses='some')
    # one loss: the keys of Eq 17 whatever the option
    assert _head(prior_losses='all').prior_loss_terms == (0, )


def test_lambda_zero_builds_only_last_prior_head():
    head = _head(prior_loss_weight=0.0)
    assert list(head.lqpg.prior_heads) == ['2']
    y, priors = head(_feats())
    assert len(priors) == 1
    losses = head.loss_by_feat((y, priors), _samples())
    assert set(losses) == {'loss_mask', 'acc_seg'}
    losses['loss_mask'].backward()
    assert not [n for n, p in head.named_parameters() if p.grad is None]


def test_ablation_switches_change_the_graph():
    full = _head()
    names = lambda m: {n for n, _ in m.named_parameters()}  # noqa: E731
    # Table 6: CoordConv off → W_m has 2 input channels fewer
    nocoord = _head(use_coord=False)
    assert full.conv_seg.in_channels == CQ + 2 + 2 and nocoord.conv_seg.in_channels == CQ + 2
    # Table 2: LQPG off → LAVT's plain head, no projections / LQPG / priors
    plain = _head(use_lqpg=False, use_coord=False)
    assert plain.lqpg is None and len(plain.pixel_decoder.projs) == 0
    assert plain.conv_seg.in_channels == 24
    y, priors = plain(_feats()[:4] + (None, ))  # no queries needed
    assert y.shape == (2, 2, 16, 16) and priors == []
    assert set(plain.loss_by_feat((y, priors), _samples())) == {'loss_mask', 'acc_seg'}
    # Table 5: N_l
    assert len(_head(num_layers=1).lqpg.layers) == 1
    assert len(_head(num_layers=5).lqpg.prior_heads) == 5
    # Table 3: query selection changes the prior heads' input width (K·h)
    sel = _head(query_source=(0, 1))
    assert sel.lqpg.prior_heads['0'].level_linears[0].in_channels == 2 * 2
    assert full.lqpg.prior_heads['0'].level_linears[0].in_channels == 4 * 2
    assert sel(_feats())[0].shape == (2, 2, 16, 16)
    # attention-map options keep the graph
    assert names(_head(attn_maps='pre_softmax')) == names(full)


def test_head_errors():
    with pytest.raises(ValueError, match='use_coord=False'):
        _head(use_lqpg=False)
    with pytest.raises(ValueError, match='query_source'):
        _head(query_source=(0, 4))
    with pytest.raises(ValueError, match='four maps'):
        _head(in_channels=(8, 16, 32), in_index=(0, 1, 2))
    head = _head()
    with pytest.raises(ValueError, match=r'inputs\[-1\]'):
        head(_feats()[:4])
    with pytest.raises(ValueError, match='num_queries'):
        head(_feats(k=3))


def test_coord_map_and_predict_with_priors():
    c = coord_map(1, 3, 5)
    assert c.shape == (1, 2, 3, 5)
    assert torch.equal(c[0, 0, 0], torch.linspace(-1, 1, 5))  # x along width
    assert torch.equal(c[0, 1, :, 0], torch.linspace(-1, 1, 3))  # y along height
    head = _head().eval()
    metas = [dict(img_shape=(H, W), pad_shape=(H, W))] * 2
    with torch.no_grad():
        logits, priors = head.predict_with_priors(_feats(), metas)
        assert torch.equal(head.predict(_feats(), metas, None), logits)
    assert logits.shape == (2, 2, H, W) and priors.shape == (2, 3, H, W)
    assert priors.min() >= 0 and priors.max() <= 1
