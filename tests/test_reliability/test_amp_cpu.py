"""``tools/train.py CONFIG --amp`` on a CPU: bf16 autocast (no gradient scaler), no NaNs;
fp16 with the loss scaler and bf16 on the tiny model: finite losses close to fp32's.

mmengine's ``AmpOptimWrapper`` asserts a GPU (its ``GradScaler`` is CUDA's); the tools
route ``--amp`` on CPU to ``CPUAmpOptimWrapper`` (mmrefseg.engine.runner_utils), in the
config's ``amp_dtype`` (bf16 by default, fp16 with torch's CPU GradScaler).
"""
import math

import pytest
import torch
from mmengine.config import Config

import mmrefseg  # noqa: F401
from mmrefseg.apis.measure import dummy_data_batch, text_max_length
from mmseg.registry import MODELS, OPTIM_WRAPPERS

from .tiny_run import run, scalars, train_cmd, write_config
from .toy import ToyModel

HAS_CPU_SCALER = hasattr(torch, 'amp') and hasattr(torch.amp, 'GradScaler')  # torch >= 2.3


def test_cpu_amp_wrapper_autocasts_to_bf16():
    model = ToyModel()
    wrapper = OPTIM_WRAPPERS.build(dict(type='CPUAmpOptimWrapper', dtype='bfloat16',
                                        optimizer=torch.optim.SGD(model.parameters(), lr=0.1)))
    with wrapper.optim_context(model):
        out = model.linear(torch.ones(2, 1))
    assert out.dtype == torch.bfloat16
    assert wrapper.loss_scaler is None  # bf16 has fp32's range: nothing to scale


def test_train_with_amp_on_cpu_has_finite_losses(tmp_path):
    n = 3
    config = write_config(tmp_path / 'cfg.py', n_iters=n,
                          hooks=[dict(type='NonFiniteLossHook', nonfinite='raise')])
    _, log = run(train_cmd(config, tmp_path / 'work', '--amp'), timeout=300)
    assert "type='CPUAmpOptimWrapper'" in log
    losses = [r for r in scalars(tmp_path / 'work') if 'loss' in r]
    assert [r['iter'] for r in losses] == list(range(1, n + 1))
    for rec in losses:
        for k, v in rec.items():
            if 'loss' in k:
                assert math.isfinite(v), (rec['iter'], k, v)


def _tiny_losses(cfg_path, amp_dtype, steps=3):
    """Total loss of ``steps`` training steps of the tiny model (64×64, batch 2), same
    weights and batch, the optimizer wrapper as ``tools/train.py [--amp]`` builds it."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmrefseg.engine.runner_utils import enable_amp
    init_default_scope('mmseg')
    cfg = Config.fromfile(cfg_path, import_custom_modules=False)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    if amp_dtype is not None:
        cfg.amp_dtype = amp_dtype
        enable_amp(cfg)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert getattr(wrapper, 'cast_dtype', None) == (
        None if amp_dtype is None else getattr(torch, amp_dtype))
    batch = dummy_data_batch(2, (64, 64), 12, text_max_length(cfg))
    losses = []
    for _ in range(steps):
        log_vars = model.train_step(batch, wrapper)
        losses.append(float(torch.as_tensor(log_vars['loss']).detach()))
    return losses, wrapper


@pytest.mark.parametrize('amp_dtype', ['bfloat16', 'float16'])
def test_tiny_model_mixed_precision_losses_finite_and_close_to_fp32(tmp_path, amp_dtype):
    """Issue 10 §3: the same three steps in fp32 and under autocast; every loss finite, the
    the same weights and batch within 2 % of fp32's, the loss falling."""
    cfg_path = write_config(tmp_path / 'cfg.py', 3)
    if amp_dtype == 'float16' and not HAS_CPU_SCALER:
        with pytest.raises(RuntimeError, match="amp_dtype='bfloat16'"):
            _tiny_losses(cfg_path, amp_dtype)
        return
    ref, _ = _tiny_losses(cfg_path, None)
    got, wrapper = _tiny_losses(cfg_path, amp_dtype)
    assert all(math.isfinite(v) for v in ref + got), (ref, got)
    assert got == pytest.approx(ref, rel=0.02), (amp_dtype, ref, got)
    assert got[-1] < got[0] and ref[-1] < ref[0]
    if amp_dtype == 'float16':
        scale = wrapper.loss_scaler.get_scale()
        assert math.isfinite(scale) and scale > 0  # the scaler ran (and did not collapse)
    else:
        assert wrapper.loss_scaler is None
