# Copyright (c) mmrefseg contributors. All rights reserved.
"""FusedAdamW: the same optimizer as torch's AdamW (updates, state), fused where supported."""
import copy

import pytest
import torch

import mmrefseg  # noqa: F401
from mmrefseg.engine.optimizers import FusedAdamW, fused_adamw_supported
from mmseg.registry import OPTIMIZERS


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 32, generator=g).requires_grad_(),
            torch.randn(32, generator=g).requires_grad_(),
            torch.randn(5, 3, 3, 3, generator=g).requires_grad_()]


def _groups(params):
    return [dict(params=params[:1], weight_decay=0.01), dict(params=params[1:],
                                                            weight_decay=0.0)]


def _run(opt, params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_same_updates_as_adamw_and_fused_on_this_torch():
    ref_p, fused_p = _params(), _params()
    ref = torch.optim.AdamW(_groups(ref_p), lr=1e-2, betas=(0.9, 0.999))
    fused = OPTIMIZERS.build(dict(type='FusedAdamW', params=_groups(fused_p), lr=1e-2,
                                  betas=(0.9, 0.999)))
    assert isinstance(fused, FusedAdamW) and isinstance(fused, torch.optim.AdamW)
    version = tuple(int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
    assert all(g['fused'] for g in fused.param_groups) == (version >= (2, 4))
    _run(ref, ref_p, 5)
    _run(fused, fused_p, 5)
    for a, b in zip(ref_p, fused_p):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert ref.state_dict()['state'].keys() == fused.state_dict()['state'].keys()


def test_adamw_checkpoint_resumes_into_fused_and_keeps_the_fused_kernel():
    p_a = _params()
    adamw = torch.optim.AdamW(_groups(p_a), lr=1e-2)
    _run(adamw, p_a, 3)
    state = copy.deepcopy(adamw.state_dict())
    p_b = [p.detach().clone().requires_grad_() for p in p_a]
    fused = FusedAdamW(_groups(p_b), lr=1e-2)
    fused.load_state_dict(state)  # the saved groups say fused=None
    assert [g['fused'] for g in fused.param_groups] == [
        g['fused'] for g in FusedAdamW(_groups(_params()), lr=1e-2).param_groups]
    _run(adamw, p_a, 2, seed=7)
    _run(fused, p_b, 2, seed=7)
    for a, b in zip(p_a, p_b):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_support_check(monkeypatch):
    cpu = [torch.zeros(2, requires_grad=True)]
    monkeypatch.setattr(torch, '__version__', '2.1.2+cpu')
    assert not fused_adamw_supported(cpu)  # torch < 2.4 has no CPU kernel
    opt = FusedAdamW(cpu, lr=0.1)  # falls back to torch's default: still runs
    assert not any(g['fused'] for g in opt.param_groups)
    cpu[0].grad = torch.ones(2)
    opt.step()
    monkeypatch.setattr(torch, '__version__', '2.4.0')
    assert fused_adamw_supported(cpu)
    assert not fused_adamw_supported([torch.zeros(2, dtype=torch.long)])
    assert not fused_adamw_supported([])


def test_forcing_fused_off():
    opt = FusedAdamW(_params(), lr=0.1, fused=False)
    assert not any(g['fused'] for g in opt.param_groups)


@pytest.mark.parametrize('config', ['configs/_base_/schedules/schedule_35e.py'])
def test_paper_schedule_uses_it(config):
    import os.path as osp
    from mmengine.config import Config
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    cfg = Config.fromfile(osp.join(repo, config))
    assert cfg.optim_wrapper.optimizer.type == 'FusedAdamW'
