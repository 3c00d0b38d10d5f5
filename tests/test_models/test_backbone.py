# Copyright (c) mmrefseg contributors. All rights reserved.
"""BSAMSwinTransformer: shapes for every option, masking, gradients, module graph, errors."""
import pytest
import torch

import mmrefseg  # noqa: F401
from mmrefseg.models.layers import BSAM, CAFG, LanguageGate, TileConcatFusion
from mmseg.models.backbones.swin import SwinTransformer
from mmseg.registry import MODELS

CT, CQ = 16, 8
TINY = dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7,
            text_dims=CT, query_dims=CQ, drop_path_rate=0.)
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


def build(init=True, **kwargs):
    torch.manual_seed(0)
    model = MODELS.build(dict(type='BSAMSwinTransformer', **dict(TINY, **kwargs)))
    if init:
        model.init_weights()
    return model


def text(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 5, CT, generator=g), MASK.clone()


def map_shapes(out):
    return [tuple(o.shape) for o in out[:4]]


@pytest.mark.parametrize('size,hw', [((64, 64), [(16, 16), (8, 8), (4, 4), (2, 2)]),
                                     ((70, 90), [(18, 23), (9, 12), (5, 6), (3, 3)])])
def test_shapes_default(size, hw):
    model = build()
    out = model(torch.randn(2, 3, *size), *text())
    assert len(out) == 5
    assert map_shapes(out) == [(2, 32 * 2**i, *hw[i]) for i in range(4)]
    assert out[4].shape == (2, 4, CQ) and model.num_queries == 4


@pytest.mark.parametrize('kwargs,k', [
    (dict(gate='single'), 4),
    (dict(gate='spatial_channel'), 4),
    (dict(gate='spatial_spatial'), 4),
    (dict(gate='language_gate'), 4),
    (dict(gate='none'), 4),
    (dict(query_stages=(0, 1)), 2),
    (dict(query_stages=(1, )), 1),
    (dict(query_stages=()), 0),
    (dict(decoder_feats='gated', gate_stages=(0, 1, 2, 3)), 4),
    (dict(fusion='tile', gate='none'), 0),
    (dict(fusion='tile'), 0),
    (dict(bsam_norm=None, norm_cfg=dict(type='GN', num_groups=4)), 4),
])
def test_every_option_shapes_and_gradients(kwargs, k):
    """Shapes at a non-multiple size, and one backward reaches every built parameter of the
    backbone (so DDP needs no find_unused_parameters)."""
    model = build(**kwargs)
    feats, mask = text()
    feats.requires_grad_(True)
    out = model(torch.randn(2, 3, 38, 50), feats, mask)
    assert map_shapes(out) == [(2, 32, 10, 13), (2, 64, 5, 7), (2, 128, 3, 4), (2, 256, 2, 2)]
    assert out[4].shape == (2, k, CQ)
    loss = sum(o.square().mean() for o in out[:4]) + out[4].square().sum()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    assert feats.grad[1].abs().sum() > 0


def test_padding_words_do_not_change_outputs():
    model = build().eval()
    img = torch.randn(2, 3, 64, 64)
    feats, mask = text()
    out = model(img, feats, mask)
    feats2 = feats.clone()
    feats2[0, 3:] = 10 * torch.randn(2, CT)  # the padded words of sample 0
    out2 = model(img, feats2, mask)
    for a, b in zip(out, out2):
        torch.testing.assert_close(a, b)


def test_fusion_changes_the_swin_path():
    """The fused V'_i = F_Gi + V_i (not V_i) enters stage i+1: text changes every map."""
    model = build().eval()
    img = torch.randn(2, 3, 64, 64)
    feats, mask = text()
    out = model(img, feats, mask)
    out2 = model(img, feats + 1, mask)
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(out, out2))


def test_module_graph_per_option():
    model = build(False)
    assert isinstance(model, SwinTransformer)
    assert all(isinstance(f, BSAM) for f in model.fusions) and len(model.fusions) == 4
    assert sorted(model.gates) == ['0', '1', '2']  # no gate on stage 4
    assert all(isinstance(g, CAFG) and g.paths == ('channel', 'channel')
               for g in model.gates.values())
    # Table 3: query projections only where a query is returned
    model = build(False, query_stages=(0, 1))
    assert [f.with_query for f in model.fusions] == [True, True, False, False]
    assert not hasattr(model.fusions[3], 'text_out')
    # Table 4
    assert isinstance(build(False, gate='language_gate').gates['0'], LanguageGate)
    assert build(False, gate='single').gates['1'].shift_path is None
    assert build(False, gate='spatial_channel').gates['2'].scale_path.pooled is False
    assert len(build(False, gate='none').gates) == 0
    # Table 2 baseline: tile-and-concat, no queries at all
    tile = build(False, fusion='tile', gate='none')
    assert all(isinstance(f, TileConcatFusion) for f in tile.fusions)
    assert tile.num_queries == 0


def test_decoder_feats_option():
    fused, gated = build(), build(decoder_feats='gated')
    gated.load_state_dict(fused.state_dict())
    img = torch.randn(2, 3, 64, 64)
    a = fused.eval()(img, *text())
    b = gated.eval()(img, *text())
    assert (a[0] - b[0]).abs().max() > 1e-4  # F_1 vs F_G1
    torch.testing.assert_close(a[3], b[3])  # no gate on stage 4: same map


def test_errors_are_clear():
    with pytest.raises(ValueError, match='swin_norm_cfg'):
        build(False, norm_cfg=dict(type='LN'))
    with pytest.raises(ValueError, match='Table 4'):
        build(False, gate='se')
    with pytest.raises(ValueError, match="'bsam' or 'tile'"):
        build(False, fusion='concat')
    with pytest.raises(ValueError, match='no gradient'):
        build(gate_stages=(0, 1, 2, 3))
    with pytest.raises(ValueError, match='query_stages'):
        build(False, query_stages=(0, 4))
    with pytest.raises(ValueError, match='out_indices'):
        build(False, out_indices=(1, 2, 3))
    model = build(False)
    img = torch.randn(2, 3, 32, 32)
    feats, mask = text()
    with pytest.raises(ValueError, match='text_dims'):
        model(img, torch.randn(2, 5, CT + 1), mask)
    with pytest.raises(ValueError, match='text_mask'):
        model(img, feats, mask[:, :4])
    with pytest.raises(ValueError, match='at least one valid token'):
        model(img, feats, torch.zeros_like(mask))
    with pytest.raises(ValueError, match='2 images but 1 sentences'):
        model(img, feats[:1], mask[:1])
    with pytest.raises(ValueError, match='Pretrained'):
        build(init_cfg=dict(type='Normal'))


def test_fusion_init_is_explicit():
    model = build()
    bsam = model.fusions[0]
    assert bsam.vis_query.bias.abs().sum() == 0  # xavier weights, zero bias
    bound = (6 / (32 + 32))**0.5
    assert bsam.vis_query.weight.abs().max() <= bound
    gate = model.gates['0']
    assert (gate.scale_path.expand.bn.weight == 1).all()


def test_frozen_stages_and_train_returns_self():
    model = build(False, frozen_stages=1)
    assert model.train() is model
    assert not model.stages[0].blocks[0].attn.w_msa.qkv.weight.requires_grad
    assert model.fusions[0].vis_query.weight.requires_grad  # fusion stays trainable


def test_parameter_counts_swin_b_widths():
    """BSAM for Swin-B widths (128/256/512/1024, C_t 768, C_q 256) ≈ 9.9 M (DESIGN ≈ 9.8 M);
    CAFG on stages 1-3 ≈ 0.35 M."""
    bsam = sum(p.numel() for c in (128, 256, 512, 1024) for p in BSAM(c, 768, 256).parameters())
    assert bsam == 9_808_256
    cafg = sum(p.numel() for c in (128, 256, 512) for p in CAFG(c).parameters())
    assert cafg == 2 * sum(2 * c * c // 4 + 2 * c // 4 + 2 * c for c in (128, 256, 512))


def test_under_a_stock_mmseg_head():
    """Mixing: a stock mmseg head with in_index=(0, 1, 2, 3) reads the four maps and ignores
    Q. With query_stages=() nothing is left without a gradient (DDP-safe)."""
    model = build(query_stages=())
    head = MODELS.build(dict(type='UPerHead', in_channels=[32, 64, 128, 256],
                             in_index=[0, 1, 2, 3], pool_scales=(1, 2), channels=16,
                             num_classes=2, norm_cfg=dict(type='BN'), align_corners=False))
    out = model(torch.randn(2, 3, 64, 64), *text())
    logits = head(out)
    assert logits.shape == (2, 2, 16, 16)
    logits.square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
