"""Derived tiny configs and subprocess helpers for the tools-level reliability tests.

The configs inherit ``configs/mpg_lqgnet_tiny_refer.py`` and make it fast (64×64 images)
and deterministic (no dropout / drop-path, ``sentence_seed=0``, ``num_workers=0``).
"""
import json
import os
import os.path as osp
import socket
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HELPERS = osp.join(REPO, 'tests', 'data', 'reliability')

CONFIG = '''
_base_ = [{base!r}]
custom_imports = dict(imports=['mmrefseg', 'reliability_hooks'], allow_failed_imports=False)
img = (64, 64)  # fast; a multiple of the stride 32 (Swin pads to its window)
norm_cfg = {norm_cfg}
model = dict(
    data_preprocessor=dict(size=img),
    text_encoder=dict(config=dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
    backbone=dict(drop_path_rate=0.0, drop_rate=0.0, attn_drop_rate=0.0, norm_cfg=norm_cfg),
    decode_head=dict(dropout_ratio=0.0, lqpg_dropout=0.0, norm_cfg=norm_cfg))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadRefAnnotations'),
    dict(type='Resize', scale=img, keep_ratio=False),
    dict(type='TokenizeText', tokenizer='bert-base-uncased', max_length=30),
    dict(type='PackRefSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img, keep_ratio=False),
    dict(type='LoadRefAnnotations'),
    dict(type='TokenizeText', tokenizer='bert-base-uncased', max_length=30),
    dict(type='PackRefSegInputs'),
]
train_dataloader = dict(batch_size={batch}, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline, sentence_seed=0))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=test_pipeline))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end={n},
                        by_epoch=False)]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={n}, val_interval={n})
default_hooks = dict(checkpoint=dict(by_epoch=False, interval={c}, max_keep_ckpts=1,
                                     save_best=None))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0)
custom_hooks = {hooks}
'''

NO_VAL = '''
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None
'''


def write_config(path, n_iters, ckpt_every=None, hooks='[]', batch=2, val=False,
                 norm_cfg="dict(type='BN', requires_grad=True)"):
    base = osp.join(REPO, 'configs', 'mpg_lqgnet_tiny_refer.py')
    text = CONFIG.format(base=base, n=n_iters, c=ckpt_every or n_iters, hooks=hooks,
                         batch=batch, norm_cfg=norm_cfg)
    if not val:
        text += NO_VAL
    with open(path, 'w') as f:
        f.write(text)
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


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def scalars(work_dir):
    """Every record of every ``scalars.json`` under ``work_dir`` (one file per run)."""
    out = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            with open(osp.join(root, 'scalars.json')) as f:
                out += [json.loads(line) for line in f]
    return out
