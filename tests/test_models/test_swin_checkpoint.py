# Copyright (c) mmrefseg contributors. All rights reserved.
"""Official (Microsoft) Swin checkpoints load into BSAMSwinTransformer with the same outputs
as a reference implementation (DESIGN.md "Official Swin weights").

The official-layout state dict is written from a randomly perturbed timm Swin by moving the
patch merging back to the END of each stage (timm has it at the start; the channel order of
the merging is the official one in both). It is validated by loading it into a fresh timm Swin
through timm's own ``checkpoint_filter_fn``; then it is loaded into ours through our
converter and the stage outputs are compared.
"""
import importlib.util
import os.path as osp
import re
from collections import OrderedDict

import pytest
import timm.models.swin_transformer as timm_swin  # a test requirement (requirements.txt)
import torch
import torch.nn.functional as F

import mmrefseg  # noqa: F401
from mmrefseg.models.backbones import BSAMSwinTransformer, detect_swin_layout
from mmseg.models.backbones.swin import SwinTransformer

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ARCH = dict(depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4)
IMG = 256  # stage maps 64/32/16/8: multiples of the window and larger than it (else the
# official Swin stops shifting in a stage that fits one window, while mmseg's keeps shifting)


def official_from_timm(state_dict):
    """timm Swin state dict → official Microsoft layout (inverse of checkpoint_filter_fn)."""
    out = OrderedDict()
    for k, v in state_dict.items():
        if 'relative_position_index' in k or 'attn_mask' in k:
            continue
        k = re.sub(r'^layers\.(\d+)\.downsample',
                   lambda m: f'layers.{int(m.group(1)) - 1}.downsample', k)
        out[k.replace('head.fc.', 'head.')] = v
    return out


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    torch.manual_seed(0)
    timm_model = timm_swin.SwinTransformer(img_size=IMG, embed_dim=32, num_classes=10, **ARCH)
    with torch.no_grad():  # perturb everything: LN weights of 1 would hide permutations
        for p in timm_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    official = official_from_timm(timm_model.state_dict())
    assert 'layers.0.downsample.reduction.weight' in official
    assert 'layers.3.downsample.reduction.weight' not in official
    # the official dict is right: timm's own converter loads it back, every key matched
    ref = timm_swin.SwinTransformer(img_size=IMG, embed_dim=32, num_classes=10, **ARCH).eval()
    ref.load_state_dict(timm_swin.checkpoint_filter_fn({'model': official}, ref), strict=True)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        final, inter = ref.forward_intermediates(x)
    path = str(tmp_path_factory.mktemp('swin') / 'swin_official.pth')
    torch.save({'model': official}, path)
    return dict(path=path, x=x, final=final.permute(0, 3, 1, 2), inter=inter,
                official=official, timm_sd=timm_model.state_dict())


def build_ours(checkpoint, embed_dims=32, **kwargs):
    arch = dict(ARCH, **kwargs)
    model = BSAMSwinTransformer(
        embed_dims=embed_dims, text_dims=16, query_dims=8, drop_path_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint), **arch)
    model.init_weights()
    return model.eval()


def swin_stage_outputs(model, x):
    """Plain Swin part of our backbone: raw stage outputs + normed last map."""
    feats = []
    hooks = [s.blocks[-1].register_forward_hook(lambda m, i, o: feats.append(o))
             for s in model.stages]
    with torch.no_grad():
        outs = SwinTransformer.forward(model, x)  # no fusion: the pretrained Swin itself
    for h in hooks:
        h.remove()
    maps = [f.view(1, o.shape[2], o.shape[3], -1).permute(0, 3, 1, 2) for f, o in zip(feats, outs)]
    return maps, outs[-1]


def check_against_reference(model, ref):
    maps, last = swin_stage_outputs(model, ref['x'])
    for ours, theirs in zip(maps, ref['inter']):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # the official final norm became norm3 (the norm of the last stage's output)
    torch.testing.assert_close(last, ref['final'], atol=1e-5, rtol=1e-5)


def test_official_checkpoint_matches_timm(reference):
    model = build_ours(reference['path'])
    check_against_reference(model, reference)
    # the fused forward runs on the loaded weights too
    with torch.no_grad():
        out = model(reference['x'], torch.randn(1, 3, 16), torch.ones(1, 3))
    assert [tuple(o.shape[1:]) for o in out[:4]] == [(32, 64, 64), (64, 32, 32),
                                                      (128, 16, 16), (256, 8, 8)]


def test_timm_layout_checkpoint_loads_too(reference, tmp_path):
    path = str(tmp_path / 'timm.pth')
    torch.save(reference['timm_sd'], path)
    assert detect_swin_layout(reference['timm_sd']) == 'timm'
    check_against_reference(build_ours(path), reference)


def test_plain_load_state_dict_would_load_nothing(reference):
    """The trap this guards against: official keys share almost no name with mmseg's Swin
    (only the patch-embedding norm), so mmseg's strict=False load keeps the random init."""
    model = BSAMSwinTransformer(embed_dims=32, text_dims=16, query_dims=8, **ARCH)
    result = model.load_state_dict(reference['official'], strict=False)
    loaded = set(reference['official']) - set(result.unexpected_keys)
    assert loaded == {'patch_embed.norm.weight', 'patch_embed.norm.bias'}


def test_window_size_from_config_resizes_tables(reference):
    """A window-4 file into a window-3 config: tables resized bicubically (official recipe),
    everything else loaded as is."""
    model = build_ours(reference['path'], window_size=3)
    attn = model.stages[0].blocks[0].attn.w_msa
    src = reference['official']['layers.0.blocks.0.attn.relative_position_bias_table']
    expected = F.interpolate(src.T.reshape(1, 1, 7, 7), size=(5, 5), mode='bicubic')
    torch.testing.assert_close(attn.relative_position_bias_table, expected.reshape(1, 25).T)
    torch.testing.assert_close(attn.qkv.weight,
                               reference['official']['layers.0.blocks.0.attn.qkv.weight'])


def test_no_matching_key_is_an_error_naming_the_file(reference, tmp_path):
    path = str(tmp_path / 'not_swin.pth')
    torch.save({'model': {'encoder.weight': torch.zeros(3)}}, path)
    with pytest.raises(RuntimeError, match='not_swin.pth'):
        build_ours(path)
    # wrong widths: every tensor mismatches → same error
    with pytest.raises(RuntimeError, match='swin_official.pth'):
        build_ours(reference['path'], embed_dims=48, num_heads=(3, 6, 12, 24))


def test_converter_tool_output_loads_into_plain_mmseg_swin(reference, tmp_path):
    spec = importlib.util.spec_from_file_location(
        'swin2mmrefseg', osp.join(ROOT, 'tools', 'model_converters', 'swin2mmrefseg.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    dst = str(tmp_path / 'converted.pth')
    tool.main([reference['path'], dst])
    plain = SwinTransformer(embed_dims=32, drop_path_rate=0.,
                            init_cfg=dict(type='Pretrained', checkpoint=dst), **ARCH)
    plain.init_weights()
    plain.eval()
    maps, last = swin_stage_outputs(plain, reference['x'])
    torch.testing.assert_close(maps[1], reference['inter'][1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, reference['final'], atol=1e-5, rtol=1e-5)


def test_our_own_segmentor_checkpoint_keeps_fusion_weights(tmp_path):
    """A 'backbone.'-prefixed mmrefseg checkpoint: Swin AND fusion weights are restored."""
    torch.manual_seed(1)
    src = BSAMSwinTransformer(embed_dims=32, text_dims=16, query_dims=8, **ARCH)
    src.init_weights()
    path = str(tmp_path / 'ours.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in src.state_dict().items()},
                'meta': {}}, path)
    model = build_ours(path)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, msg=k)
