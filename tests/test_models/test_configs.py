# Copyright (c) mmrefseg contributors. All rights reserved.
"""Every config parses and says what a run needs; every ``_base_`` file holds what its folder
promises; the paper recipe is what §4.1 / DESIGN.md say; the tiny configs build the model
they describe; every CAFG norm is correct for the batch the config trains with; every
ablation config, shrunk to tiny widths, builds, changes the module graph as the paper
describes and trains with a gradient on every parameter it builds (so DDP needs no
find_unused_parameters)."""
import copy
import glob
import itertools
import os.path as osp

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import mmrefseg  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ALL = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                            recursive=True))
BASES = [c for c in ALL if '/_base_/' in c]
CONFIGS = [c for c in ALL if '/_base_/' not in c]  # the configs users run
ABLATION_BASE = 'configs/ablations/ablation_base.py'
ABLATIONS = [c for c in CONFIGS if '/ablations/' in c and c != ABLATION_BASE]
FULL = ['configs/mpg_lqgnet_swinb_refcoco.py', 'configs/mpg_lqgnet_swinb_refcoco+.py',
        'configs/mpg_lqgnet_swinb_refcocog_umd.py', 'configs/mpg_lqgnet_swinb_refcocog_google.py']
init_default_scope('mmseg')


def load(path):
    return Config.fromfile(osp.join(ROOT, path))


def test_the_expected_configs_exist():
    for path in FULL + ['configs/mpg_lqgnet_swinb_refcoco_1xb2-acc4.py',
                        'configs/mpg_lqgnet_tiny_refer.py', ABLATION_BASE,
                        'configs/quickstart/mpg_lqgnet_refshapes.py']:
        assert path in CONFIGS, path
    assert 'configs/_base_/models/mpg_lqgnet_tiny.py' in BASES
    # one config per row of Tables 2 (7 rows), 3 (6 + ours), 4 (4 + ours), 5 (8), 6 (1 + ours)
    tables = {t: [c for c in ABLATIONS if osp.basename(c).startswith(t + '_')]
              for t in ('t2', 't3', 't4', 't5', 't6')}
    assert {t: len(v) for t, v in tables.items()} == dict(t2=7, t3=6, t4=4, t5=8, t6=1)


@pytest.mark.parametrize('path', CONFIGS)
def test_every_config_says_what_a_run_needs(path):
    cfg = load(path)
    assert cfg.default_scope == 'mmseg'
    assert cfg.custom_imports == dict(imports=['mmrefseg'], allow_failed_imports=False)
    assert cfg.model.type == 'RefEncoderDecoder'
    assert {'text_encoder', 'backbone', 'decode_head', 'data_preprocessor'} <= set(cfg.model)
    for part in ('train', 'val', 'test'):
        loader = cfg[f'{part}_dataloader']
        assert loader.batch_size >= 1 and loader.dataset.pipeline, part
        types = [t.type for t in loader.dataset.pipeline]
        assert types[0] == 'LoadImageFromFile' and types[-1] == 'PackRefSegInputs', types
        assert 'TokenizeText' in types and 'LoadRefAnnotations' in types, types
        # ground truth: resized with the image for training, at the original size for tests
        before = types.index('LoadRefAnnotations') < types.index('Resize')
        assert before == (part == 'train'), (part, types)
        if loader.dataset.type == 'RefCOCODataset':  # annotations refer to stored pixels
            assert loader.dataset.pipeline[0].color_type == 'color_ignore_orientation'
    assert cfg.train_dataloader.dataset.get('test_mode', False) is False
    assert cfg.val_dataloader.dataset.test_mode and cfg.test_dataloader.dataset.test_mode
    assert cfg.val_evaluator.type == cfg.test_evaluator.type == 'RefSegMetric'
    assert cfg.train_cfg.type in ('ResumableEpochBasedTrainLoop', 'IterBasedTrainLoop')
    assert cfg.optim_wrapper.optimizer.type in ('AdamW', 'FusedAdamW')
    if cfg.train_dataloader.dataset.type == 'RefCOCODataset':  # (seed, epoch, index) draws
        assert cfg.train_dataloader.sampler.type == 'EpochTaggedSampler'


# what each _base_ folder promises the configs that compose it
BASE_KEYS = {'datasets': ('train_dataloader', 'val_dataloader', 'test_dataloader',
                          'val_evaluator', 'test_evaluator'),
             'models': ('model', ),
             'schedules': ('optim_wrapper', 'param_scheduler', 'train_cfg', 'val_cfg',
                           'test_cfg', 'default_hooks'),
             '': ('default_scope', 'custom_imports', 'env_cfg', 'visualizer')}


@pytest.mark.parametrize('path', BASES)
def test_every_base_file_holds_what_its_folder_promises(path):
    cfg = load(path)
    folder = osp.basename(osp.dirname(path))
    keys = BASE_KEYS['' if folder == '_base_' else folder]
    assert [k for k in keys if k not in cfg] == [], path
    if folder == 'datasets':
        d = cfg.train_dataloader.dataset
        assert d.type == 'RefCOCODataset' and d.split == 'train' and d.data_root
        assert cfg.val_dataloader.dataset.test_mode
    if folder == 'models':
        assert cfg.model.backbone.type == 'BSAMSwinTransformer'
        assert cfg.model.decode_head.type == 'LQPGHead'


@pytest.mark.parametrize('path', FULL)
def test_full_configs_follow_the_paper_recipe(path):
    cfg = load(path)
    opt = cfg.optim_wrapper
    # FusedAdamW = AdamW (fused kernel where torch has one)
    assert opt.optimizer.type == 'FusedAdamW' and opt.optimizer.lr == 1.5e-5
    assert opt.optimizer.weight_decay == 0.01 and opt.clip_grad is None
    assert opt.paramwise_cfg.norm_decay_mult == 0.0
    assert opt.paramwise_cfg.custom_keys.relative_position_bias_table.decay_mult == 0.0
    (poly, ) = cfg.param_scheduler
    assert poly.type == 'PolyLR' and poly.power == 0.9 and poly.convert_to_iter_based
    assert cfg.train_cfg.type == 'ResumableEpochBasedTrainLoop' and cfg.train_cfg.max_epochs == 35
    assert cfg.train_cfg.val_interval == 1
    assert cfg.train_dataloader.batch_size == 1  # × 8 GPUs = batch 8
    assert cfg.default_hooks.checkpoint.save_best == 'oIoU'
    m = cfg.model
    assert m.type == 'RefEncoderDecoder'
    assert m.text_encoder.name_or_path == 'bert-base-uncased' and m.text_encoder.pretrained
    b = m.backbone
    assert (b.embed_dims, b.depths, b.num_heads, b.window_size) == (128, [2, 2, 18, 2],
                                                                     [4, 8, 16, 32], 12)
    assert b.drop_path_rate == 0.3 and b.norm_cfg.type == 'SyncBN'
    assert b.init_cfg.checkpoint == 'pretrain/swin_base_patch4_window12_384_22k.pth'
    h = m.decode_head
    assert (h.channels, h.num_layers, h.num_heads, h.prior_loss_weight) == (256, 6, 8, 0.1)
    assert h.norm_cfg.type == 'SyncBN'
    assert m.data_preprocessor.size == (448, 448)
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert [t for t in pipeline if t.type == 'Resize'][0].scale == (448, 448)
    assert [t for t in pipeline if t.type == 'TokenizeText'][0].max_length == 30


def test_single_gpu_preset():
    cfg = load('configs/mpg_lqgnet_swinb_refcoco_1xb2-acc4.py')
    assert cfg.train_dataloader.batch_size == 2 and cfg.optim_wrapper.accumulative_counts == 4
    # CAFG after GAP: per-sample norm; the pixel decoder (BN over 112×112 maps): BN
    assert cfg.model.backbone.norm_cfg == dict(type='GN', num_groups=1, requires_grad=True)
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert cfg.optim_wrapper.optimizer.lr == 1.5e-5


# ------------------------------------------------------- CAFG norm vs batch (issue 14 §3)
def _gates_of(cfg):
    """The gates a config's backbone builds (C_i = embed_dims · 2^i), with their norm."""
    from mmrefseg.models.layers import build_gate
    b = cfg.model.backbone
    gates = []
    for i in b.get('gate_stages', (0, 1, 2)):
        g = build_gate(b.get('gate', 'cafg'), b.embed_dims * 2**i, norm_cfg=b.norm_cfg,
                       reduction=b.get('gate_reduction', 4))
        if g is not None:
            gates.append((i, b.embed_dims * 2**i, g))
    return gates


@pytest.mark.parametrize('path', CONFIGS)
def test_cafg_gate_of_a_sample_ignores_the_other_samples(path):
    """Configs with fewer than ~8 samples per process: in training mode, sample 0's gate
    does not change when sample 1 changes. BN after GAP only in the 8-GPU recipes (SyncBN
    over 8 × 1 images, the paper's)."""
    cfg = load(path)
    if cfg.model.backbone.norm_cfg.type == 'SyncBN':
        assert path in FULL or '/ablations/' in path, path  # the 8-GPU recipes
        assert cfg.train_dataloader.batch_size == 1  # per GPU, × 8 GPUs
        return
    gates = _gates_of(cfg)
    assert gates, path
    torch.manual_seed(0)
    for stage, c, gate in gates:
        gate.train()
        h = w = 3
        fused, vis = torch.randn(2, h * w, c), torch.randn(2, h * w, c)
        out = gate(fused, vis, (h, w))[0]
        fused[1], vis[1] = 10 * torch.randn(h * w, c) - 3, torch.randn(h * w, c)
        torch.testing.assert_close(gate(fused, vis, (h, w))[0], out, msg=f'stage {stage}')


# --------------------------------------------------------------------------- builds
TINY = load('configs/_base_/models/mpg_lqgnet_tiny.py').model
SIZE_KEYS = dict(
    backbone=('pretrain_img_size', 'embed_dims', 'depths', 'num_heads', 'window_size',
              'text_dims', 'query_dims', 'norm_cfg', 'init_cfg', 'drop_path_rate'),
    decode_head=('in_channels', 'channels', 'decoder_channels', 'ffn_channels', 'norm_cfg'))


def shrink(model_cfg):
    """The same switches at the tiny widths (so a CPU test can build every ablation)."""
    m = copy.deepcopy(model_cfg)
    m.text_encoder = copy.deepcopy(TINY.text_encoder)
    m.data_preprocessor.size = None
    for part, keys in SIZE_KEYS.items():
        for k in keys:
            m[part][k] = copy.deepcopy(TINY[part][k])
    return m


def tiny_batch(n=2, s=64, seed=0):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        ids = torch.tensor([101, 1996 + i, 4937, 102] + [0] * 4)
        smp = SegDataSample()
        smp.set_data(dict(text_ids=ids, text_mask=(ids > 0).long()))
        smp.gt_sem_seg = PixelData(data=torch.randint(0, 2, (1, s, s), generator=g))
        smp.set_metainfo(dict(img_shape=(s, s), ori_shape=(s, s)))
        samples.append(smp)
    imgs = [torch.randint(0, 256, (3, s, s), generator=g, dtype=torch.uint8) for _ in range(n)]
    return dict(inputs=imgs, data_samples=samples)


def build(model_cfg):
    torch.manual_seed(0)
    model = MODELS.build(ConfigDict(model_cfg))
    return model


def grads_everywhere(model):
    data = model.data_preprocessor(tiny_batch(), training=True)
    losses = model(**data, mode='loss')
    total, _ = model.parse_losses(losses)
    total.backward()
    return losses, [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


TINY_CONFIGS = [c for c in CONFIGS if load(c).model.backbone.embed_dims != 128]


@pytest.mark.parametrize('path', TINY_CONFIGS)
def test_tiny_configs_build_the_model_they_describe(path):
    """Full Swin-B configs are parsed above and built shrunk (ablations)."""
    cfg = load(path)
    m, b, h = cfg.model, cfg.model.backbone, cfg.model.decode_head
    model = build(m)
    bb, head = model.backbone, model.decode_head
    assert type(bb).__name__ == b.type and type(head).__name__ == h.type
    assert [len(s.blocks) for s in bb.stages] == list(b.depths)
    assert [s.blocks[0].attn.w_msa.num_heads for s in bb.stages] == list(b.num_heads)
    assert bb.num_features[0] == b.embed_dims and bb.query_dims == b.query_dims
    assert bb.stages[0].blocks[0].attn.w_msa.window_size == (b.window_size, ) * 2
    assert model.text_encoder.embed_dims == m.text_encoder.config.hidden_size == b.text_dims
    assert len(model.text_encoder.bert.encoder.layer) == m.text_encoder.config.num_hidden_layers
    gate_norm = bb.gates['0'].scale_path.reduce.norm
    assert isinstance(gate_norm, torch.nn.GroupNorm) and gate_norm.num_groups == \
        b.norm_cfg.num_groups
    bns = [x for x in head.pixel_decoder.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert bns and h.norm_cfg.type == 'BN'
    assert len(head.lqpg.layers) == h.num_layers and head.channels == h.channels
    assert head.prior_loss_weight == h.prior_loss_weight
    losses = h.loss_decode if isinstance(h.loss_decode, list) else [h.loss_decode]
    assert [type(x).__name__ for x in head._loss_terms()] == [x.type for x in losses]
    prior = h.get('prior_losses', 'first')
    assert head.prior_loss_terms == (tuple(range(len(losses))) if prior == 'all' else (0, ))


def _names(model, prefix):
    """The module graph: parameter names and shapes, plus the CAFG paths' pooling flags."""
    sig = {(n, tuple(p.shape)) for n, p in model.named_parameters() if n.startswith(prefix)}
    sig |= {(n, 'pooled', m.pooled) for n, m in model.named_modules()
            if n.startswith(prefix) and hasattr(m, 'pooled')}
    return sig


# a backward pass per distinct kind of graph (the other rows only change a count)
GRAD_CHECK = {'t2_r1_tile_baseline', 't2_r2_tile_cafg', 't2_r3_bsam', 't2_r5_bsam_lqpg',
              't2_r6_no_prior_loss', 't3_queries_s4', 't4_gate_spatial_channel',
              't4_gate_spatial_spatial', 't4_gate_language_gate', 't5_lqpg_layers_1'}


@pytest.fixture(scope='module')
def ours():
    return build(shrink(load('configs/ablations/t2_r7_ours.py').model))


def test_ablation_base_is_the_refcoco_plus_recipe_tested_on_testa():
    base, recipe = load(ABLATION_BASE), load('configs/mpg_lqgnet_swinb_refcoco+.py')
    assert base.model == recipe.model and base.optim_wrapper == recipe.optim_wrapper
    assert base.train_dataloader == recipe.train_dataloader
    assert base.test_dataloader.dataset.split == 'testA'
    assert base.test_dataloader.dataset.dataset == 'refcoco+'


@pytest.mark.parametrize('path', ABLATIONS)
def test_ablation_builds_trains_and_changes_the_graph(path, ours):
    cfg = load(path)
    model = build(shrink(cfg.model))
    name = osp.basename(path)[:-3]
    head = model.decode_head
    n_prior = len(head.lqpg.prior_heads) if head.lqpg is not None else 0
    if name in GRAD_CHECK:
        losses, missing = grads_everywhere(model)
        assert not missing, f'{path}: parameters without gradient: {missing[:5]}'
        n_prior = sum('loss_prior' in k for k in losses)
    b, h = cfg.model.backbone, cfg.model.decode_head
    if name in ('t2_r7_ours', 't5_lqpg_layers_6'):
        assert _names(model, '') == _names(ours, '')
        return
    assert _names(model, '') != _names(ours, ''), f'{path} builds the same graph as Ours'
    if name.startswith('t2_r') and name[4] in '1234':  # baselines: plain head
        assert head.lqpg is None and n_prior == 0
        assert not [n for n, _ in model.named_parameters() if '.text_out.' in n]  # no W_ol
        assert model.backbone.num_queries == 0
    if b.get('fusion') == 'tile':
        assert not [n for n, _ in model.named_parameters() if '.vis_query.' in n]  # no BSAM
    if b.get('gate') == 'none':
        assert not [n for n, _ in model.named_parameters() if 'gate' in n]
    if name == 't2_r5_bsam_lqpg':
        assert head.lqpg is not None and n_prior == h.num_layers
    if name == 't2_r6_no_prior_loss':
        assert n_prior == 0 and list(head.lqpg.prior_heads) == [str(h.num_layers - 1)]
    if name.startswith('t3_'):
        k = len(b.query_stages)
        assert model.backbone.num_queries == k and head.lqpg.num_queries == k
    if name.startswith('t4_'):
        assert _names(model, 'decode_head') == _names(ours, 'decode_head')
    if name.startswith('t5_'):
        assert len(head.lqpg.layers) == h.num_layers == n_prior
        assert sum(hasattr(layer, 'ffn') for layer in head.lqpg.layers) == h.num_layers - 1
    if name == 't6_no_coordconv':
        assert head.conv_seg.in_channels == ours.decode_head.conv_seg.in_channels - 2


# ------------------------------------------- query_source variants and DDP (issue 14 §4)
QUERY_SOURCES = ['all'] + [c for k in range(1, 5) for c in itertools.combinations(range(4), k)]


@pytest.mark.parametrize('source', QUERY_SOURCES, ids=str)
def test_query_source_leaves_no_parameter_without_gradient(source):
    m = copy.deepcopy(TINY)
    m.data_preprocessor.size = None
    m.decode_head.query_source = source
    # stochastic depth can drop a block's branch for the whole batch of 2, a true all-zero
    # gradient that depends on the RNG stream (seen on torch 2.1, query_source=(2, 3))
    m.backbone.drop_path_rate = 0.
    model = build(m)
    _, missing = grads_everywhere(model)
    assert not missing, f'query_source={source}: no gradient for {missing[:6]}'
    # not only in the graph: a query branch the head does not read gets an all-zero gradient
    dead = [n for n, p in model.named_parameters() if p.requires_grad and not p.grad.any()]
    assert not dead, f'query_source={source}: all-zero gradient for {dead[:6]}'
    stages = (0, 1, 2, 3) if source == 'all' else source  # routed to the backbone
    assert model.backbone.query_stages == stages
    assert model.backbone.num_queries == model.decode_head.lqpg.num_queries == len(stages)


def test_query_source_must_be_increasing_indices():
    m = copy.deepcopy(TINY)
    m.decode_head.query_source = (2, 0)
    with pytest.raises(ValueError, match='increasing, distinct indices'):
        build(m)
