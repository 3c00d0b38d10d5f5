# Copyright (c) mmrefseg contributors. All rights reserved.
"""mmrefseg.engine.runner_utils: CPU distributed set-up, --amp on CPU, config checks."""

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config

import mmrefseg  # noqa: F401
from mmrefseg.engine.runner_utils import (CPUAmpOptimWrapper, check_config_file, enable_amp,
                                          set_work_dir, setup_cpu_distributed)

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason='CPU code path')


def _cfg(**kw):
    return Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl')),
                       optim_wrapper=dict(type='OptimWrapper',
                                          optimizer=dict(type='SGD', lr=0.1)), **kw))


def test_launcher_none_changes_nothing():
    cfg = _cfg()
    assert setup_cpu_distributed(cfg, 'none') is False
    assert cfg.env_cfg.dist_cfg.backend == 'nccl' and 'model_wrapper_cfg' not in cfg


@cpu_only
def test_pytorch_launcher_on_cpu_sets_up_gloo(monkeypatch, free_port):
    port = free_port
    for k, v in dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
                     MASTER_PORT=str(port)).items():
        monkeypatch.setenv(k, v)
    cfg = _cfg(find_unused_parameters=True)
    try:
        assert setup_cpu_distributed(cfg, 'pytorch') is True
        assert dist.is_initialized() and dist.get_backend() == 'gloo'
        assert dist.get_world_size() == 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None,
                                         find_unused_parameters=True,
                                         broadcast_buffers=False)


@cpu_only
def test_pytorch_launcher_without_env_names_the_fix(monkeypatch):
    for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match='dist_train.sh'):
        setup_cpu_distributed(_cfg(), 'pytorch')


@cpu_only
def test_mpi_launcher_on_cpu_is_refused():
    with pytest.raises(ValueError, match='mpi'):
        setup_cpu_distributed(_cfg(), 'mpi')


@cpu_only
def test_amp_on_cpu_is_bf16_autocast():
    cfg = _cfg()
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')  # registered in mmseg's OPTIM_WRAPPERS, as configs see it
    model = torch.nn.Linear(4, 3)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert isinstance(wrapper, CPUAmpOptimWrapper)
    with wrapper.optim_context(model):
        y = model(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16
    before = model.weight.detach().clone()
    wrapper.update_params(y.float().sum())
    assert not torch.equal(before, model.weight)  # a real step, no scaler in the way
    assert model(torch.ones(2, 4)).dtype == torch.float32  # outside the context: fp32


def test_amp_errors():
    cfg = _cfg()
    cfg.optim_wrapper.type = 'MyWrapper'
    with pytest.raises(ValueError, match='MyWrapper'):
        enable_amp(cfg)
    with pytest.raises(ValueError, match='bfloat16'):
        CPUAmpOptimWrapper(dtype='float16', optimizer=torch.optim.SGD(
            torch.nn.Linear(1, 1).parameters(), lr=0.1))


def test_work_dir_priority_and_config_check(tmp_path):
    cfg = Config(dict())
    set_work_dir(cfg, None, 'configs/abc_def.py')
    assert cfg.work_dir == './work_dirs/abc_def'
    set_work_dir(cfg, str(tmp_path), 'configs/abc_def.py')
    assert cfg.work_dir == str(tmp_path)
    with pytest.raises(FileNotFoundError, match='no_such_config.py'):
        check_config_file('no_such_config.py')
