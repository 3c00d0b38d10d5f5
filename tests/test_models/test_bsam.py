# Copyright (c) mmrefseg contributors. All rights reserved.
"""BSAM (Eq 1-9) and the Table-2 tile-and-concat baseline."""
import pytest
import torch
import torch.nn.functional as F

import mmrefseg  # noqa: F401
from mmrefseg.models.layers import BSAM, TileConcatFusion, masked_mean
from mmseg.registry import MODELS

B, HW, C, NT, CT, CQ = 2, 12, 8, 5, 6, 4
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, HW, C, generator=g), torch.randn(B, NT, CT, generator=g),
            MASK.clone())


def instance_norm(x):
    """IN over pixels, per sample and channel, no affine (B×HW×C)."""
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def reference_bsam(m, vis, text, mask):
    """Eq 1-9 written out with an explicit attention map."""
    v_q = instance_norm(m.vis_query(vis))  # Eq 1
    l_k = m.text_key(text)  # Eq 2
    v_v = instance_norm(m.vis_value(vis))  # Eq 3
    l_v = m.text_value(text)  # Eq 4
    a = v_q @ l_k.transpose(1, 2) / C**0.5  # Eq 5, B×HW×Nt
    a_words = a.masked_fill(~mask.bool()[:, None, :], float('-inf')).softmax(-1)
    v_f = torch.cat([vis, a_words @ l_v], -1)  # Eq 6
    l_f = torch.cat([text, a.transpose(1, 2).softmax(-1) @ v_v], -1)  # Eq 7
    f = F.relu(m.vis_out(v_f))  # Eq 8
    words = F.relu(m.text_out(l_f))
    q = torch.stack([words[b, mask[b].bool()].mean(0) for b in range(B)])  # Eq 9
    return f, q


def test_bsam_matches_equations():
    torch.manual_seed(0)
    m = BSAM(C, CT, CQ)
    m.init_weights()
    vis, text, mask = inputs()
    f, q = m(vis, text, mask)
    assert f.shape == (B, HW, C) and q.shape == (B, CQ)
    f_ref, q_ref = reference_bsam(m, vis, text, mask)
    torch.testing.assert_close(f, f_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)


def test_single_word_hand_computed():
    """One valid word: softmax over words is 1 on it, so F = ReLU(W_ov [V ; L_v(word)])."""
    torch.manual_seed(0)
    m = BSAM(C, CT, CQ)
    vis, text, _ = inputs()
    mask = torch.zeros(B, NT, dtype=torch.long)
    mask[:, 2] = 1
    f, q = m(vis, text, mask)
    l_v = m.text_value(text[:, 2:3]).expand(-1, HW, -1)
    torch.testing.assert_close(f, F.relu(m.vis_out(torch.cat([vis, l_v], -1))))
    # query = the one valid word's row of ReLU(W_ol L_f)
    _, q_ref = reference_bsam(m, vis, text, mask)
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)


def test_padding_words_do_not_matter():
    m = BSAM(C, CT, CQ)
    vis, text, mask = inputs()
    f, q = m(vis, text, mask)
    text2 = text.clone()
    text2[0, 3:] = 100 * torch.randn(2, CT)  # padding words of sample 0
    f2, q2 = m(vis, text2, mask)
    torch.testing.assert_close(f, f2)
    torch.testing.assert_close(q, q2)


def test_without_query_builds_no_language_direction():
    m = BSAM(C, CT, CQ, with_query=False)
    names = {n.split('.')[0] for n, _ in m.named_parameters()}
    assert names == {'vis_query', 'text_key', 'text_value', 'vis_out'}
    vis, text, mask = inputs()
    f, q = m(vis, text, mask)
    assert q is None
    f.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_gradients_reach_every_parameter():
    m = BSAM(C, CT, CQ)
    vis, text, mask = inputs()
    vis.requires_grad_(True)
    text.requires_grad_(True)
    f, q = m(vis, text, mask)
    (f.sum() + q.sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert text.grad.abs().sum() > 0 and vis.grad.abs().sum() > 0


def test_parameter_count_formula():
    # 4 C² + 2 C_t C (four projections) + 2C·C (W_ov) + (C_t + C) C_q (W_ol) + biases
    m = BSAM(128, 768, 256)
    expected = (2 * 128 * 128 + 2 * 768 * 128 + 2 * 128 * 128 + (768 + 128) * 256 +
                4 * 128 + 128 + 256)
    assert sum(p.numel() for p in m.parameters()) == expected


def test_norm_off_and_registry():
    m = MODELS.build(dict(type='BSAM', vis_dims=C, text_dims=CT, query_dims=CQ,
                          norm_cfg=None))
    assert isinstance(m.query_norm, torch.nn.Identity)
    f, q = m(*inputs())
    assert f.shape == (B, HW, C)


def test_tile_concat_baseline():
    torch.manual_seed(0)
    m = TileConcatFusion(C, CT)
    m.init_weights()
    vis, text, mask = inputs()
    f, q = m(vis, text, mask)
    assert q is None and f.shape == (B, HW, C)
    sentence = torch.stack([text[b, mask[b].bool()].mean(0) for b in range(B)])
    expected = F.relu(m.proj(torch.cat([vis, sentence[:, None].expand(-1, HW, -1)], -1)))
    torch.testing.assert_close(f, expected)
    text[0, 3:] = 50.  # padding
    torch.testing.assert_close(m(vis, text, mask)[0], f)


def test_masked_mean():
    x = torch.tensor([[[1.], [3.], [100.]]])
    assert masked_mean(x, torch.tensor([[1, 1, 0]])).item() == pytest.approx(2.0)
