"""Our configs and tools opt in to the checkpoint safety that ``import mmrefseg`` no longer
applies globally (AtomicCheckpointHook, SafeCheckpointLoadHook)."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from mmrefseg.engine.runner_utils import use_checkpoint_safety

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p.split(osp.sep))


def test_there_are_configs():
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, REPO))
def test_every_config_opts_in(path):
    cfg = Config.fromfile(path)
    assert 'mmrefseg' in cfg.custom_imports['imports']
    assert [h['type'] for h in cfg.custom_hooks].count('SafeCheckpointLoadHook') == 1
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'


def test_tools_opt_any_config_in():
    cfg = Config(dict(custom_hooks=[dict(type='NonFiniteLossHook')],
                      default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=3))))
    use_checkpoint_safety(cfg)
    assert [h['type'] for h in cfg.custom_hooks] == ['NonFiniteLossHook',
                                                     'SafeCheckpointLoadHook']
    assert cfg.default_hooks.checkpoint == dict(type='AtomicCheckpointHook', interval=3)
    use_checkpoint_safety(cfg)  # idempotent
    assert [h['type'] for h in cfg.custom_hooks].count('SafeCheckpointLoadHook') == 1
    # a config without custom_hooks / default_hooks, or with another checkpoint hook
    bare = Config(dict(default_hooks=dict(checkpoint=dict(type='MyCheckpointHook'))))
    use_checkpoint_safety(bare)
    assert bare.custom_hooks == [dict(type='SafeCheckpointLoadHook')]
    assert bare.default_hooks.checkpoint.type == 'MyCheckpointHook'
