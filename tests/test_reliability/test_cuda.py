"""The CUDA path (issue 12): run by ``pytest --cuda -m cuda tests`` (tools/gpu_check.sh).

Every test here is marked ``cuda``: the default CPU run deselects them (tests/conftest.py),
``--cuda`` without a GPU is an error. The tiny config at 64×64 keeps them to seconds.
"""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

import mmrefseg  # noqa: F401
from mmrefseg.apis.measure import dummy_data_batch

from .tiny_run import write_config
from .toy import make_runner

pytestmark = pytest.mark.cuda

#: BSAMSwinTransformer's config key that selects the fused (SDPA) window attention, and
#: its two values (reference, fused); docs/model.md, "Attention and memory options"
ATTN_SWITCH = ('attn_impl', ('mmseg', 'sdpa'))


@pytest.fixture
def tiny_cfg_path(tmp_path):
    return write_config(tmp_path / 'cfg.py', 3)


def _model(cfg_path, **backbone):
    from mmseg.registry import MODELS
    cfg = Config.fromfile(cfg_path, import_custom_modules=False)
    cfg.custom_imports = dict(imports=['mmrefseg'], allow_failed_imports=False)
    cfg.model.backbone.update(backbone)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.cuda()


def _runner(tmp_path, cfg_path, **optim_wrapper):
    from mmengine.runner import Runner
    cfg = Config.fromfile(cfg_path, import_custom_modules=False)
    cfg.custom_imports = dict(imports=['mmrefseg'], allow_failed_imports=False)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.default_hooks.checkpoint = None
    cfg.optim_wrapper.update(optim_wrapper)
    return Runner.from_cfg(cfg)


class _Losses(Hook):
    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(runner.message_hub.get_scalar('train/loss').current())


def test_forward_backward_on_cuda(tiny_cfg_path):
    model = _model(tiny_cfg_path).train()
    data = model.data_preprocessor(dummy_data_batch(2, (64, 64), 8, 30), True)
    assert data['inputs'].is_cuda and data['data_samples'][0].text_ids.is_cuda
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in params if p.grad is None]
    assert not no_grad, no_grad
    assert all(torch.isfinite(p.grad).all() for _, p in params)


def test_fp16_amp_with_loss_scaler(tmp_path, tiny_cfg_path):
    runner = _runner(tmp_path, tiny_cfg_path, type='AmpOptimWrapper', loss_scale='dynamic',
                     dtype='float16')
    rec = _Losses()
    runner.register_hook(rec)
    dtypes = []
    linear = next(m for m in runner.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    runner.train()
    assert len(rec.losses) == 3 and all(torch.isfinite(torch.tensor(rec.losses)))
    assert dtypes and all(d is torch.float16 for d in dtypes)
    scale = runner.optim_wrapper.loss_scaler.get_scale()
    assert 0 < scale < float('inf')


def test_bf16_autocast_close_to_fp32(tmp_path, tiny_cfg_path):
    model = _model(tiny_cfg_path).train()
    batch = dummy_data_batch(2, (64, 64), 8, 30)
    state = copy.deepcopy(model.state_dict())
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    fp32, _ = model.parse_losses(model(**data, mode='loss'))
    model.load_state_dict(state)  # BN statistics of the first forward undone
    with torch.autocast('cuda', dtype=torch.bfloat16):
        data = model.data_preprocessor(copy.deepcopy(batch), True)
        bf16, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(bf16)
    assert abs(bf16.item() - fp32.item()) <= 0.05 * abs(fp32.item())
    runner = _runner(tmp_path, tiny_cfg_path, type='AmpOptimWrapper', dtype='bfloat16')
    rec = _Losses()
    runner.register_hook(rec)
    runner.train()
    assert len(rec.losses) == 3 and all(torch.isfinite(torch.tensor(rec.losses)))


@pytest.mark.parametrize('nonfinite', ['skip', 'raise'])
def test_nonfinite_loss_hook_under_fp16_amp(tmp_path, nonfinite):
    """A forced NaN at iteration 3 under fp16 AMP: the scaler skips that step (the hook's
    poisoned gradients are its found_inf); 'skip' counts it, 'raise' stops, and in both the
    weights stay finite."""
    from .test_nonfinite_loss import _RecordWeight
    # a small initial scale: the toy's fp16 gradients (~50) times 65536 would overflow
    amp = dict(type='AmpOptimWrapper', loss_scale=dict(init_scale=64.), dtype='float16',
               optimizer=dict(type='SGD', lr=0.01, momentum=0.9))
    runner = make_runner(tmp_path, f'amp_{nonfinite}', max_iters=6, nan_idx=[5],
                         optim_wrapper=amp,
                         custom_hooks=[dict(type='NonFiniteLossHook', nonfinite=nonfinite)])
    runner.register_hook(rec := _RecordWeight())
    if nonfinite == 'raise':
        with pytest.raises(FloatingPointError, match='Non-finite loss at iteration 3/6'):
            runner.train()
    else:
        runner.train()
        assert runner.message_hub.get_info('nonfinite_skips') == 1
        assert rec.weights[2] == rec.weights[1] and rec.weights[3] != rec.weights[2]
    assert next(runner.model.parameters()).is_cuda
    assert torch.isfinite(runner.model.linear.weight).all()


def test_fused_window_attention_matches_reference_on_cuda(tiny_cfg_path):
    """Forward and gradients of the two attention paths of BSAMSwinTransformer, fp32, with
    shifted windows and padded windows (64×64 input, window 7), within 1e-4."""
    assert ATTN_SWITCH is not None, (
        'set ATTN_SWITCH to the config key of BSAMSwinTransformer that selects the fused '
        '(SDPA) window attention (issue 10 §1, h3-perf; docs/model.md)')
    key, (ref_value, fused_value) = ATTN_SWITCH
    models = [_model(tiny_cfg_path, **{key: v}).train() for v in (ref_value, fused_value)]
    models[1].load_state_dict(models[0].state_dict())  # same parameters on both paths
    outs = []
    for model in models:
        torch.manual_seed(1)
        img = torch.randn(2, 3, 64, 64, device='cuda', requires_grad=True)
        text = torch.randn(2, 30, model.backbone.text_dims, device='cuda')
        mask = torch.ones(2, 30, dtype=torch.long, device='cuda')
        mask[:, 9:] = 0
        feats = model.backbone(img, text, mask)
        sum(f.float().square().mean() for f in feats).backward()
        grads = [p.grad.clone() for p in model.backbone.parameters() if p.grad is not None]
        outs.append(([f.detach() for f in feats], img.grad.clone(), grads))
    (f0, g0, p0), (f1, g1, p1) = outs
    for a, b in zip(f0, f1):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g1, g0, atol=1e-4, rtol=1e-4)
    assert len(p0) == len(p1)
    for a, b in zip(p0, p1):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
