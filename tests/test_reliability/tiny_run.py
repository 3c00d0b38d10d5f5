"""Derived tiny configs and subprocess helpers for the tools-level reliability tests.

The configs inherit ``configs/mpg_lqgnet_tiny_refer.py`` and make it fast (64×64 images)
and deterministic (no dropout / drop-path, ``sentence_seed=0``, ``num_workers=0``).
"""
import json
import os
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HELPERS = osp.join(REPO, 'tests', 'data', 'reliability')

TINY_CONFIG = osp.join(REPO, 'configs', 'mpg_lqgnet_tiny_refer.py')


def write_config(path, n_iters, ckpt_every=None, hooks=(), batch=2, val=False,
                 norm_cfg=None, img=(64, 64)):
    """Write a fast, deterministic variant of the tiny config to ``path``.

    64×64 images (a multiple of the stride 32; Swin pads to its window), no dropout or
    drop-path, ``sentence_seed=0``, ``num_workers=0``, ``n_iters`` iterations with the poly
    schedule over them, a checkpoint every ``ckpt_every``, losses logged every iteration
    unsmoothed (``window_size=1``), the test helper hooks importable.
    """
    from mmengine.config import Config
    cfg = Config.fromfile(TINY_CONFIG)
    cfg.custom_imports = dict(imports=['mmrefseg', 'reliability_hooks'],
                              allow_failed_imports=False)
    model = cfg.model
    model.data_preprocessor.size = img
    model.text_encoder.config.update(hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    model.backbone.update(drop_path_rate=0.0, drop_rate=0.0, attn_drop_rate=0.0)
    model.decode_head.update(dropout_ratio=0.0, lqpg_dropout=0.0)
    if norm_cfg is not None:
        model.backbone.norm_cfg = model.decode_head.norm_cfg = norm_cfg
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.update(num_workers=0, persistent_workers=False)
        loader.dataset.data_root = osp.join(REPO, loader.dataset.data_root)  # any cwd
        for t in loader.dataset.pipeline:
            if t['type'] == 'Resize':
                t['scale'] = img
    cfg.train_dataloader.batch_size = batch
    cfg.train_dataloader.dataset.sentence_seed = 0
    cfg.val_dataloader.batch_size = 1
    cfg.param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=n_iters,
                                by_epoch=False)]
    cfg.optim_wrapper.optimizer.lr = 1e-3
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=n_iters, val_interval=n_iters)
    cfg.default_hooks.checkpoint.update(by_epoch=False, interval=ckpt_every or n_iters,
                                        max_keep_ckpts=1, save_best=None)
    cfg.log_processor = dict(by_epoch=False, window_size=1)
    cfg.randomness = dict(seed=0)
    cfg.custom_hooks = list(hooks)
    if not val:
        for key in ('val_dataloader', 'val_evaluator', 'val_cfg', 'test_dataloader',
                    'test_evaluator', 'test_cfg'):
            cfg[key] = None
    cfg.dump(str(path))
    return str(path)


def env(**extra):
    out = dict(os.environ)
    out['PYTHONPATH'] = os.pathsep.join([HELPERS, REPO, out.get('PYTHONPATH', '')])
    out.setdefault('OMP_NUM_THREADS', '1')
    out.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    out.update(extra)
    return out


def train_cmd(config, work_dir, *extra):
    return [sys.executable, osp.join(REPO, 'tools', 'train.py'), config, '--work-dir',
            str(work_dir), *extra]


def dist_train_cmd(config, work_dir, nproc, *extra):
    return ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), config, str(nproc),
            '--work-dir', str(work_dir), *extra]


def run(cmd, timeout=300, check=True, **env_extra):
    proc = subprocess.run(cmd, cwd=REPO, env=env(**env_extra), capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f'{" ".join(cmd)} failed ({proc.returncode}):\n' \
            + out[-6000:]
    return proc.returncode, out


def scalars(work_dir):
    """Every record of every ``scalars.json`` under ``work_dir`` (one file per run)."""
    out = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            with open(osp.join(root, 'scalars.json')) as f:
                out += [json.loads(line) for line in f]
    return out
