# Copyright (c) mmrefseg contributors. All rights reserved.
"""Fused Swin window attention (``attn_impl='sdpa'``) against mmseg's explicit WindowMSA.

Exactness (issue 10): the two paths agree within 1e-4 in fp32 - outputs and gradients of
every parameter and of the input - with and without the shift mask and with padded windows;
the fused path keeps no N×N attention maps for the backward and loads the same state dicts.
"""
import copy

import pytest
import torch

import mmrefseg  # noqa: F401
from mmrefseg.models.backbones import window_attention as wa
from mmseg.models.backbones.swin import ShiftWindowMSA
from mmseg.registry import MODELS

TOL = 1e-4
CT, CQ = 16, 8
TINY = dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7,
            text_dims=CT, query_dims=CQ, drop_path_rate=0.)


def _randomise_bias(module, seed=1):
    """Non-zero relative position biases (mmseg initialises them to zero at build time)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if 'relative_position_bias_table' in name:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g))


def _msa_pair(shift, embed_dims=32, heads=4, window=7):
    torch.manual_seed(0)
    ref = ShiftWindowMSA(embed_dims, heads, window, shift_size=window // 2 if shift else 0)
    _randomise_bias(ref)
    fused = wa.SDPAShiftWindowMSA(copy.deepcopy(ref))
    return ref, fused


def _grads(module, x):
    return [p.grad.clone() for p in module.parameters()] + [x.grad.clone()]


def _max_err(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize('shift', [False, True])
@pytest.mark.parametrize('hw', [(14, 21), (16, 19), (5, 9)])  # exact windows / padded ones
def test_fused_msa_matches_mmseg_outputs_and_gradients(shift, hw):
    ref, fused = _msa_pair(shift)
    assert [k for k in fused.state_dict()] == [k for k in ref.state_dict()]
    x = torch.randn(2, hw[0] * hw[1], 32)
    outs, grads = [], []
    for module in (ref, fused):
        xi = x.clone().requires_grad_(True)
        out = module(xi, hw)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append(_grads(module, xi))
    assert outs[0].shape == outs[1].shape == x.shape
    assert _max_err([outs[0]], [outs[1]]) < TOL
    assert _max_err(grads[0], grads[1]) < TOL
    # the bias table got a gradient through the mask (it is trained)
    assert fused.w_msa.relative_position_bias_table.grad.abs().sum() > 0


@pytest.mark.parametrize('cpu_flash', [True, False])
def test_fused_msa_without_the_cpu_flash_kernel_is_exact_too(monkeypatch, cpu_flash):
    """torch < 2.3 has no CPU flash kernel with a mask: SDPA's math path, same results."""
    monkeypatch.setattr(wa, '_CPU_FLASH', cpu_flash and wa._CPU_FLASH)
    ref, fused = _msa_pair(shift=True)
    x = torch.randn(2, 16 * 19, 32)
    for module in (ref, fused):
        module(x.clone().requires_grad_(True), (16, 19)).square().sum().backward()
    g_ref = [p.grad for p in ref.parameters()]
    g_fused = [p.grad for p in fused.parameters()]
    assert _max_err(g_ref, g_fused) < TOL


def test_cpu_training_keeps_no_attention_maps_for_the_backward():
    """The fused CPU path stores q, k, v, the output and the log-sum-exp, never a
    (B·nW)×h×N×N map; mmseg's explicit path does. On torch < 2.3 (no CPU flash kernel with a
    mask) SDPA runs its math path, which keeps the maps like mmseg's (docs/model.md)."""
    n = 7 * 7

    def saved_maps(module):
        sizes = []

        def pack(t):
            sizes.append(tuple(t.shape))
            return t

        x = torch.randn(2, 14 * 14, 32, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = module(x, (14, 14))
        out.sum().backward()
        return [s for s in sizes if len(s) >= 2 and s[-2:] == (n, n) and s[0] > 1]

    ref, fused = _msa_pair(shift=True)
    assert saved_maps(ref), 'the explicit path should keep its maps (test is blind)'
    if wa._CPU_FLASH:
        assert saved_maps(fused) == []
    else:
        assert saved_maps(fused), f'torch {torch.__version__}: expected the math path'


def test_shift_mask_regions_and_values_match_mmseg():
    """Same masked pairs as mmseg's -100 mask; values are 0 / -inf (no denormals)."""
    ws, shift, hp, wp = 7, 3, 21, 14
    mask = wa.shift_window_mask(hp, wp, ws, shift)
    # mmseg's construction, verbatim
    img_mask = torch.zeros((1, hp, wp, 1))
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img_mask[:, h, w, :] = cnt
            cnt += 1
    msa = ShiftWindowMSA(8, 1, ws, shift_size=shift)
    mw = msa.window_partition(img_mask).view(-1, ws * ws)
    ref = (mw.unsqueeze(1) - mw.unsqueeze(2)) != 0
    assert torch.equal(mask, ref)
    assert mask.any() and not mask.all(dim=-1).any()  # every query keeps a key
    fused = wa.SDPAShiftWindowMSA(msa)
    values = fused._shift_mask(hp, wp, 'cpu')
    assert set(values.unique().tolist()) == {0.0, float('-inf')}
    assert fused._shift_mask(hp, wp, 'cpu') is values  # cached per size


def _backbones(**kwargs):
    torch.manual_seed(0)
    ref = MODELS.build(dict(type='BSAMSwinTransformer', attn_impl='mmseg', lean_ffn=False,
                            **dict(TINY, **kwargs)))
    ref.init_weights()
    _randomise_bias(ref)
    fused = MODELS.build(dict(type='BSAMSwinTransformer', **dict(TINY, **kwargs)))
    missing = fused.load_state_dict(ref.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    return ref, fused


def _rel_err(a, b):
    """max |a - b| / max |b| over a list of tensor pairs, per tensor."""
    return max(((x - y).abs().max() / y.abs().max().clamp(min=1e-30)).item()
               for x, y in zip(a, b))


# fp32 with gates that do not amplify rounding: CAFG's BatchNorm over two pooled samples
# turns 1e-7 differences into 1e-3 (for ANY change of summation order), so the default
# gate is compared in fp64, where both paths agree to rounding.
@pytest.mark.parametrize('dtype,kwargs,tol', [
    (torch.float32, dict(gate='none'), TOL),
    (torch.float32, dict(norm_cfg=dict(type='GN', num_groups=4)), TOL),
    (torch.float64, dict(), 1e-7),
])
@pytest.mark.parametrize('size', [(64, 64), (70, 90)])  # windows padded at every stage
def test_backbone_paths_agree_outputs_and_gradients(size, dtype, kwargs, tol):
    ref, fused = _backbones(**kwargs)
    ref.to(dtype)
    fused.to(dtype)
    assert all(isinstance(b.attn, wa.SDPAShiftWindowMSA) for s in fused.stages
               for b in s.blocks)
    assert not any(isinstance(b.attn, wa.SDPAShiftWindowMSA) for s in ref.stages
                   for b in s.blocks)
    from mmrefseg.models.backbones.lean_ffn import LeanFFN
    assert all(isinstance(b.ffn, LeanFFN) for s in fused.stages for b in s.blocks)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, *size, generator=g).to(dtype)
    feats = torch.randn(2, 5, CT, generator=g).to(dtype)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    results = []
    for model in (ref, fused):
        model.train()
        x = img.clone().requires_grad_(True)
        out = model(x, feats, mask)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=dtype).view_as(o)).sum()
                   for o in out)
        loss.backward()
        results.append(([o.detach() for o in out],
                        {n: p.grad.clone() for n, p in model.named_parameters()}, x.grad))
    assert _rel_err(results[0][0], results[1][0]) < tol
    assert results[0][1].keys() == results[1][1].keys()
    # IN removes the mean, so the grads of the biases before it are 0 up to rounding: compare
    # every gradient relative to the largest one
    g_ref, g_fused = list(results[0][1].values()), list(results[1][1].values())
    scale = max(g.abs().max().item() for g in g_ref)
    assert max((a - b).abs().max().item() for a, b in zip(g_fused, g_ref)) < tol * scale
    assert _rel_err([results[1][2]], [results[0][2]]) < tol


def test_attn_impl_is_checked():
    with pytest.raises(ValueError, match="attn_impl must be 'sdpa'"):
        MODELS.build(dict(type='BSAMSwinTransformer', attn_impl='flash', **TINY))


@pytest.mark.parametrize('kwargs,kept', [(dict(with_cp=True), 0.7),
                                         (dict(fusion_with_cp=True), 0.95),
                                         (dict(with_cp=True, fusion_with_cp=True), 0.5)])
def test_activation_checkpointing_same_gradients_fewer_saved_tensors(kwargs, kept):
    torch.manual_seed(0)
    plain = MODELS.build(dict(type='BSAMSwinTransformer', **TINY))
    plain.init_weights()
    cp_model = MODELS.build(dict(type='BSAMSwinTransformer', **dict(TINY, **kwargs)))
    cp_model.load_state_dict(plain.state_dict())
    # mmseg's own (reentrant) checkpointing stays off inside the blocks
    assert not any(b.with_cp for s in cp_model.stages for b in s.blocks)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 64, 64, generator=g)
    feats = torch.randn(2, 5, CT, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    grads, saved = [], []
    for model in (plain, cp_model):
        model.train()
        numel = []

        def pack(t):
            numel.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(img, feats, mask)
        sum(o.square().mean() for o in out).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        saved.append(sum(numel))
    assert _max_err(grads[0], grads[1]) < TOL
    print('saved tensor elements with / without checkpointing', saved[1] / saved[0])
    assert saved[1] < kept * saved[0]
    # eval after one training step: identical outputs, so the recomputation did not update
    # any running statistics twice (BN in the gates is never checkpointed); no gradient
    # recorded: no checkpointing
    with torch.no_grad():
        a = plain.eval()(img, feats, mask)
        b = cp_model.eval()(img, feats, mask)
    assert _max_err(a, b) < TOL


@pytest.mark.parametrize('autocast', [False, True])
def test_lean_ffn_same_function_and_gradients_fewer_saved_tensors(autocast):
    from mmcv.cnn.bricks.transformer import FFN
    from mmrefseg.models.backbones.lean_ffn import LeanFFN
    torch.manual_seed(0)
    ffn = FFN(embed_dims=32, feedforward_channels=128, num_fcs=2, ffn_drop=0.,
              dropout_layer=dict(type='DropPath', drop_prob=0.), act_cfg=dict(type='GELU'),
              add_identity=True)
    assert LeanFFN.supports(ffn)
    lean = LeanFFN(copy.deepcopy(ffn))
    assert list(lean.state_dict()) == list(ffn.state_dict())
    x = torch.randn(2, 50, 32)
    res = []
    for module in (ffn, lean):
        xi = x.clone().requires_grad_(True)
        numel = []

        def pack(t):
            numel.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast(
                'cpu', dtype=torch.bfloat16, enabled=autocast):
            out = module(xi)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        res.append((out.detach().float(), [p.grad for p in module.parameters()] + [xi.grad],
                    sum(numel)))
    tol = 2e-2 if autocast else TOL  # bf16: both paths round the same matmuls
    assert _rel_err([res[1][0]], [res[0][0]]) < tol
    assert _rel_err(res[1][1], res[0][1]) < tol
    assert res[1][2] <= res[0][2] - 2 * 50 * 128 * 0.9  # one B×N×4C tensor less
    # with dropout inside the MLP it is not used (the mask would need the GELU output)
    assert not LeanFFN.supports(FFN(embed_dims=32, feedforward_channels=128, ffn_drop=0.1,
                                    act_cfg=dict(type='GELU')))
