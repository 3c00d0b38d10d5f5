# Copyright (c) mmrefseg contributors. All rights reserved.
"""mmrefseg.engine.runner_utils: CPU distributed set-up, --amp on CPU, config checks."""

import copy

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


def _mmengine_gpu_ddp_kwargs(monkeypatch, cfg):
    """The DDP arguments mmengine 0.10.7's ``Runner.wrap_model`` passes in a distributed GPU
    run of ``cfg`` (its code run with the wrapper recorded instead of built)."""
    import copy
    import types

    import mmengine.runner.runner as runner_module
    from mmengine.logging import MMLogger
    from torch.nn.parallel import DistributedDataParallel
    seen = {}

    class _Wrappers:

        def get(self, name):
            return DistributedDataParallel

        def build(self, wrapper_cfg, default_args):
            seen.update(wrapper_cfg, **default_args)

    monkeypatch.setattr(runner_module, 'MMDistributedDataParallel',
                        lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(runner_module, 'MODEL_WRAPPERS', _Wrappers())
    monkeypatch.setenv('LOCAL_RANK', '0')
    fake_runner = types.SimpleNamespace(distributed=True, cfg=cfg,
                                        logger=MMLogger.get_current_instance())
    runner_module.Runner.wrap_model(fake_runner, copy.deepcopy(cfg.get('model_wrapper_cfg')),
                                    torch.nn.Linear(1, 1))
    return {k: v for k, v in seen.items() if k not in ('module', 'device_ids', 'type')}


@pytest.mark.parametrize('extra', [
    dict(),
    dict(find_unused_parameters=True),
    dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel', static_graph=True)),
    dict(find_unused_parameters=True,
         model_wrapper_cfg=dict(type='MMDistributedDataParallel', broadcast_buffers=True)),
], ids=['default', 'find_unused', 'own_wrapper', 'own_wrapper_and_find_unused'])
def test_cpu_ddp_arguments_are_mmengines_gpu_choice(monkeypatch, extra):
    """broadcast_buffers (and find_unused_parameters) are what mmengine gives on GPU."""
    from mmrefseg.engine.runner_utils import cpu_model_wrapper_cfg
    cfg = _cfg(**extra)
    cpu = cpu_model_wrapper_cfg(cfg)
    assert cpu['device_ids'] is None and cpu['type'] == 'MMDistributedDataParallel'
    cpu = {k: v for k, v in cpu.items() if k not in ('device_ids', 'type')}
    assert cpu == _mmengine_gpu_ddp_kwargs(monkeypatch, cfg)


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
    with pytest.raises(ValueError, match="'bfloat16' or 'float16'"):
        CPUAmpOptimWrapper(dtype='float32', optimizer=torch.optim.SGD(
            torch.nn.Linear(1, 1).parameters(), lr=0.1))
    cfg = _cfg()
    cfg.amp_dtype = 'float64'
    with pytest.raises(ValueError, match='amp_dtype'):
        enable_amp(cfg)


@cpu_only
def test_amp_dtype_float16_on_cpu_scales_the_loss():
    """``amp_dtype='float16'``: fp16 autocast with a dynamic loss scaler (the CPU one, torch
    >= 2.3); an older torch refuses it naming the way out (bf16)."""
    cfg = _cfg()
    cfg.amp_dtype = 'float16'
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    if not (hasattr(torch, 'amp') and hasattr(torch.amp, 'GradScaler')):  # torch < 2.3
        with pytest.raises(RuntimeError, match="amp_dtype='bfloat16'"):
            build_optim_wrapper(model, cfg.optim_wrapper)
        return
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert wrapper.loss_scaler is not None
    init_scale = wrapper.loss_scaler.get_scale()
    before = model.weight.detach().clone()
    # d loss / d W = 2 · scale overflows fp16 (max 65504) at the initial scale 2^16 and at
    # 2^15: those steps are skipped, the scale halves, the third step goes through
    for _ in range(3):
        with wrapper.optim_context(model):
            y = model(torch.ones(2, 4))
        assert y.dtype == torch.float16
        wrapper.update_params(y.float().sum())
    assert wrapper.loss_scaler.get_scale() == init_scale / 4
    assert torch.isfinite(model.weight).all() and not torch.equal(before, model.weight)
    state = wrapper.state_dict()
    assert 'loss_scaler' in state  # resumes with its scale
    scale = state['loss_scaler']['scale']
    fresh = build_optim_wrapper(torch.nn.Linear(4, 3), cfg.optim_wrapper)
    fresh.load_state_dict(copy.deepcopy(state))
    assert fresh.loss_scaler.state_dict()['scale'] == scale


@pytest.mark.parametrize('amp_dtype,wrapper,dtype', [
    (None, 'AmpOptimWrapper', 'float16'),  # mmengine's, with its dynamic loss scaler
    ('float16', 'AmpOptimWrapper', 'float16'),
    ('bfloat16', 'AutocastOptimWrapper', 'bfloat16'),  # no scaler, no per-step inf check
])
def test_amp_on_cuda_picks_the_wrapper_from_amp_dtype(monkeypatch, amp_dtype, wrapper, dtype):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = _cfg()
    if amp_dtype is not None:
        cfg.amp_dtype = amp_dtype
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == wrapper and cfg.optim_wrapper.dtype == dtype
    assert cfg.optim_wrapper.get('loss_scale') == ('dynamic' if dtype == 'float16' else None)


def test_amp_already_in_the_config_is_left_alone():
    cfg = _cfg()
    cfg.optim_wrapper.type = 'AutocastOptimWrapper'
    cfg.optim_wrapper.dtype = 'float16'
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'float16'


def test_work_dir_priority_and_config_check(tmp_path):
    cfg = Config(dict())
    set_work_dir(cfg, None, 'configs/abc_def.py')
    assert cfg.work_dir == './work_dirs/abc_def'
    set_work_dir(cfg, str(tmp_path), 'configs/abc_def.py')
    assert cfg.work_dir == str(tmp_path)
    with pytest.raises(FileNotFoundError, match='no_such_config.py'):
        check_config_file('no_such_config.py')


# ------------------------------------------------------------------ --auto-scale-lr
def _train_tool():
    import importlib.util
    import os.path as osp
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    spec = importlib.util.spec_from_file_location('train_tool',
                                                  osp.join(repo, 'tools', 'train.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool, repo


@pytest.mark.parametrize('config,world_size,ratio', [
    ('mpg_lqgnet_swinb_refcoco_1xb2-acc4.py', 1, 1.0),  # 2 images × 4 steps = batch 8
    ('mpg_lqgnet_swinb_refcoco.py', 8, 1.0),            # 8 GPUs × 1 image (the paper)
    ('mpg_lqgnet_swinb_refcoco.py', 4, 0.5),
    ('mpg_lqgnet_tiny_refer.py', 1, 0.25),              # batch 2, no accumulation
])
def test_auto_scale_lr_counts_processes_batch_and_accumulation(monkeypatch, config,
                                                               world_size, ratio):
    import os.path as osp
    import types

    from mmengine.logging import MMLogger
    from mmengine.optim import OptimWrapper
    from mmengine.runner import Runner
    tool, repo = _train_tool()
    path = osp.join(repo, 'configs', config)
    monkeypatch.setenv('LOCAL_RANK', '0')
    assert tool.parse_args([path, '--auto-scale-lr']).auto_scale_lr
    cfg = Config.fromfile(path)
    assert not cfg.auto_scale_lr.enable  # off unless the flag is given
    tool.enable_auto_scale_lr(cfg)
    wrapper = OptimWrapper(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0))
    # mmengine 0.10.7's own scaling, with this config and world size
    fake_runner = types.SimpleNamespace(_train_dataloader=cfg.train_dataloader,
                                        world_size=world_size, param_schedulers=None,
                                        logger=MMLogger.get_current_instance())
    Runner.scale_lr(fake_runner, wrapper, cfg.auto_scale_lr)
    assert wrapper.optimizer.param_groups[0]['lr'] == pytest.approx(ratio)


def test_auto_scale_lr_without_the_config_key_names_it():
    tool, _ = _train_tool()
    with pytest.raises(RuntimeError, match='auto_scale_lr=dict'):
        tool.enable_auto_scale_lr(Config(dict(optim_wrapper=dict())))
