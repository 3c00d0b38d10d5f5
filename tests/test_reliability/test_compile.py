# Copyright (c) mmrefseg contributors. All rights reserved.
"""``torch.compile`` through mmengine's ``compile`` config (issue 10 §7; docs/benchmark.md).

mmengine's Runner compiles ``model.train_step`` (forward, backward and the optimizer step)
when the config has ``compile=True`` or ``compile=dict(...)`` (``--cfg-options
compile.backend=inductor``). Here the tiny model trains two iterations through dynamo
(``backend='eager'``: the same tracing, no code generation, seconds instead of minutes)
and the losses equal the uncompiled run's.
"""
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

import mmrefseg  # noqa: F401

from .tiny_run import write_config


class _Losses(Hook):

    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss']))


def _train(tmp_path, cfg_path, compile_cfg):
    from mmengine.runner import Runner
    cfg = Config.fromfile(cfg_path, import_custom_modules=False)
    cfg.custom_imports = dict(imports=['mmrefseg'], allow_failed_imports=False)
    cfg.work_dir = str(tmp_path / f'work_{compile_cfg is not None}')
    cfg.default_hooks.checkpoint = None
    cfg.log_level = 'WARNING'
    if compile_cfg is not None:
        cfg.compile = compile_cfg
    runner = Runner.from_cfg(cfg)
    rec = _Losses()
    runner.register_hook(rec)
    runner.train()
    return runner, rec.losses


def test_compile_config_trains_the_same(tmp_path):
    from mmrefseg.engine.runner_utils import build_runner, compile_supported
    cfg_path = write_config(tmp_path / 'cfg.py', 2)
    if not compile_supported():  # torch < 2.3: a clear error from the tools, not a trace
        cfg = Config.fromfile(cfg_path, import_custom_modules=False)
        cfg.custom_imports = dict(imports=['mmrefseg'], allow_failed_imports=False)
        cfg.work_dir, cfg.compile = str(tmp_path / 'work'), dict(backend='eager')
        with pytest.raises(RuntimeError, match='needs torch >= 2.3'):
            build_runner(cfg)
        return
    _, ref = _train(tmp_path, cfg_path, None)
    runner, got = _train(tmp_path, cfg_path, dict(backend='eager'))
    assert hasattr(runner.model.train_step, '_torchdynamo_orig_callable')  # it was compiled
    # the optimizer step is traced too: FusedAdamW hands torch plain dict param groups
    assert all(type(g) is dict for g in runner.optim_wrapper.optimizer.param_groups)
    assert len(got) == len(ref) == 2
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=1e-5, atol=1e-6)
