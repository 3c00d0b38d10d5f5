# Copyright (c) mmrefseg contributors. All rights reserved.
"""CAFG (Eq 10-11) and the Table-4 gate variants."""
import pytest
import torch
import torch.nn.functional as F

import mmrefseg  # noqa: F401
from mmrefseg.models.layers import (CAFG, GATE_TYPES, PER_SAMPLE_NORM, LanguageGate,
                                    build_gate, map_to_tokens, tokens_to_map)

B, C, H, W = 3, 8, 3, 4


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H * W, C, generator=g), torch.randn(B, H * W, C, generator=g)


def ca_reference(path, x):
    """Eq 10 with BN in training mode (batch statistics), written out."""
    if path.pooled:
        x = x.mean((2, 3), keepdim=True)  # GAP
    conv1, bn1 = path.reduce.conv, path.reduce.bn
    conv2, bn2 = path.expand.conv, path.expand.bn

    def bn(m, y):
        return F.batch_norm(y, None, None, m.weight, m.bias, training=True, eps=m.eps)

    return bn(bn2, conv2(F.relu(bn(bn1, conv1(x)))))


def test_cafg_matches_eq_10_11():
    torch.manual_seed(0)
    gate = CAFG(C)
    gate.init_weights()
    with torch.no_grad():  # non-trivial norm affine parameters
        for m in gate.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    fused, vis = inputs()
    out = gate(fused, vis, (H, W))
    f, v = tokens_to_map(fused, (H, W)), tokens_to_map(vis, (H, W))
    x = f + v  # X = F_i + V_i
    expected = f * torch.sigmoid(ca_reference(gate.scale_path, x)) + ca_reference(
        gate.shift_path, x)  # Eq 11
    torch.testing.assert_close(out, map_to_tokens(expected), atol=1e-5, rtol=1e-5)
    # channel gate: one weight per channel and sample (constant over pixels)
    w = gate.scale_path(x)
    assert w.shape == (B, C, 1, 1)


def test_token_map_round_trip():
    fused, _ = inputs()
    assert tokens_to_map(fused, (H, W)).shape == (B, C, H, W)
    torch.testing.assert_close(map_to_tokens(tokens_to_map(fused, (H, W))), fused)
    # row-major: token 1 is pixel (0, 1)
    torch.testing.assert_close(tokens_to_map(fused, (H, W))[:, :, 0, 1], fused[:, 1])


@pytest.mark.parametrize('name,paths,shapes', [
    ('cafg', ('channel', 'channel'), [(B, C, 1, 1), (B, C, 1, 1)]),
    ('single', ('channel', ), [(B, C, 1, 1)]),
    ('spatial_channel', ('spatial', 'channel'), [(B, C, H, W), (B, C, 1, 1)]),
    ('spatial_spatial', ('spatial', 'spatial'), [(B, C, H, W), (B, C, H, W)]),
])
def test_table4_cafg_variants_change_the_graph(name, paths, shapes):
    gate = build_gate(name, C)
    assert isinstance(gate, CAFG) and gate.paths == paths
    assert (gate.shift_path is None) == (len(paths) == 1)
    fused, vis = inputs()
    x = tokens_to_map(fused + vis, (H, W))
    got = [tuple(gate.scale_path(x).shape)]
    if gate.shift_path is not None:
        got.append(tuple(gate.shift_path(x).shape))
    assert got == shapes
    out = gate(fused, vis, (H, W))
    assert out.shape == fused.shape
    out.square().sum().backward()
    for n, p in gate.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_single_path_is_pure_scaling():
    gate = build_gate('single', C).eval()
    fused, vis = inputs()
    out = gate(fused, vis, (H, W))
    ratio = out / fused  # σ(CA_1(X)) per sample and channel, the same at every pixel
    assert ((ratio > 0) & (ratio < 1)).all()
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))


def test_language_gate_is_lavt_formula():
    torch.manual_seed(0)
    gate = build_gate('language_gate', C)
    assert isinstance(gate, LanguageGate)
    assert [type(m).__name__ for m in gate.gate] == ['Linear', 'ReLU', 'Linear', 'Tanh']
    assert all(m.bias is None for m in gate.gate if isinstance(m, torch.nn.Linear))
    fused, vis = inputs()
    l1, l2 = gate.gate[0], gate.gate[2]
    expected = fused * torch.tanh(l2(F.relu(l1(fused))))
    torch.testing.assert_close(gate(fused, vis, (H, W)), expected)
    # element-wise (spatial) weights: does not look at V at all
    torch.testing.assert_close(gate(fused, vis * 0, (H, W)), expected)


def test_none_and_errors():
    assert build_gate('none', C) is None
    assert set(GATE_TYPES) == {'cafg', 'single', 'spatial_channel', 'spatial_spatial',
                               'language_gate', 'none'}
    with pytest.raises(ValueError, match='Table 4'):
        build_gate('se', C)
    with pytest.raises(ValueError, match='paths'):
        CAFG(C, paths=('channel', 'pixel'))
    with pytest.raises(ValueError, match='reduction'):
        CAFG(2, reduction=4)


def test_gate_from_config_dict_and_norm_cfg():
    gate = build_gate(dict(type='CAFG', reduction=2, norm_cfg=dict(type='GN', num_groups=2)),
                      C)
    assert isinstance(gate.scale_path.reduce.gn, torch.nn.GroupNorm)
    assert gate.scale_path.reduce.conv.out_channels == C // 2
    fused, vis = inputs()
    # GN works with a single sample (BN after GAP needs >= 2 in training)
    assert gate(fused[:1], vis[:1], (H, W)).shape == (1, H * W, C)


# ------------------------------------------------------------- small batch (issue 14 §3)
def _pooled_gate_of_sample0(gate, x1, seed=0):
    """Gate outputs of sample 0 in a batch of 2 whose sample 1 is ``x1``."""
    g = torch.Generator().manual_seed(seed)
    fused0 = torch.randn(1, H * W, C, generator=g)
    vis0 = torch.randn(1, H * W, C, generator=g)
    fused = torch.cat([fused0, x1[0]])
    vis = torch.cat([vis0, x1[1]])
    return gate(fused, vis, (H, W))[0]


def test_bn_after_gap_at_batch_2_is_the_sign_of_the_other_sample():
    """Why the small-batch configs do not use BN: over 2 pooled samples BN outputs ±γ+β."""
    path = build_gate('cafg', C).train().scale_path
    x = torch.randn(2, C, H, W)
    y = path.reduce.norm(path.reduce.conv(x.mean((2, 3), keepdim=True)))
    torch.testing.assert_close(y.abs(), torch.ones_like(y), atol=1e-2, rtol=0)


@pytest.mark.parametrize('norm_cfg', [PER_SAMPLE_NORM, dict(type='GN', num_groups=2)])
def test_per_sample_gate_ignores_the_other_sample(norm_cfg):
    gate = build_gate('cafg', C, norm_cfg=norm_cfg).train()
    a = _pooled_gate_of_sample0(gate, torch.randn(2, 1, H * W, C))
    b = _pooled_gate_of_sample0(gate, 5 * torch.randn(2, 1, H * W, C) + 3)
    torch.testing.assert_close(a, b)
    # same function in training and evaluation
    torch.testing.assert_close(_pooled_gate_of_sample0(gate.eval(),
                                                       torch.randn(2, 1, H * W, C)), a)


def _mm_records():
    import logging

    from mmengine.logging import MMLogger
    records = []

    class _Collect(logging.Handler):

        def emit(self, record):
            records.append(record.getMessage())

    handler = _Collect(level=logging.DEBUG)
    MMLogger.get_current_instance().addHandler(handler)
    return records, lambda: MMLogger.get_current_instance().removeHandler(handler)


def test_pooled_bn_below_4_samples_warns_once_with_the_key(monkeypatch):
    import mmrefseg.models.layers.cafg as cafg_mod
    monkeypatch.setattr(cafg_mod, '_warned_small_pooled_bn', False)
    records, stop = _mm_records()
    try:
        gate = build_gate('cafg', C).train()
        fused, vis = inputs()  # B = 3
        for _ in range(3):
            gate(fused, vis, (H, W))
        gate(fused[:2], vis[:2], (H, W))
        warned = [m for m in records if 'after global average pooling' in m]
        assert len(warned) == 1 and 'model.backbone.norm_cfg' in warned[0], records
        # 4 samples, evaluation, a spatial path (BN over pixels) or GN: no warning
        monkeypatch.setattr(cafg_mod, '_warned_small_pooled_bn', False)
        records.clear()
        x4 = torch.randn(4, H * W, C)
        gate(x4, x4, (H, W))
        gate.eval()(fused[:2], vis[:2], (H, W))
        build_gate('spatial_spatial', C).train()(fused[:2], vis[:2], (H, W))
        build_gate('cafg', C, norm_cfg=PER_SAMPLE_NORM).train()(fused[:2], vis[:2], (H, W))
        assert not [m for m in records if 'after global average pooling' in m], records
    finally:
        stop()
    with pytest.raises(ValueError, match=r'1 sample per step.*model\.backbone\.norm_cfg'):
        gate.train()(fused[:1], vis[:1], (H, W))
