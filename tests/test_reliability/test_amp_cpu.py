"""``tools/train.py CONFIG --amp`` on a CPU: bf16 autocast (no gradient scaler), no NaNs.

mmengine's ``AmpOptimWrapper`` asserts a GPU (its ``GradScaler`` is CUDA's); the tools
route ``--amp`` on CPU to ``CPUAmpOptimWrapper`` (mmrefseg.engine.runner_utils). fp16 with
the loss scaler is a GPU check.
"""
import math

import torch

import mmrefseg  # noqa: F401
from mmseg.registry import OPTIM_WRAPPERS

from .tiny_run import run, scalars, train_cmd, write_config
from .toy import ToyModel


def test_cpu_amp_wrapper_autocasts_to_bf16():
    model = ToyModel()
    wrapper = OPTIM_WRAPPERS.build(dict(type='CPUAmpOptimWrapper', dtype='bfloat16',
                                        optimizer=torch.optim.SGD(model.parameters(), lr=0.1)))
    with wrapper.optim_context(model):
        out = model.linear(torch.ones(2, 1))
    assert out.dtype == torch.bfloat16
    assert not hasattr(wrapper, 'loss_scaler')  # bf16 has fp32's range: nothing to scale


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
