"""``kill -9`` of tools/train.py after the first checkpoint, then ``--resume``: the run goes
on with the same iteration counter, optimizer and scheduler state, and the per-iteration
losses equal those of an uninterrupted run (iteration-based tiny config, no dropout or
drop-path, ``sentence_seed`` set, ``num_workers=0``)."""
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

import mmrefseg  # noqa: F401  (torch.load allow-list for Runner checkpoints)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HELPERS = osp.join(REPO, 'tests', 'data', 'reliability')
N_ITERS, CKPT_EVERY, KILL_AFTER = 6, 3, 4

CONFIG = '''
_base_ = [{base!r}]
custom_imports = dict(imports=['mmrefseg', 'reliability_hooks'], allow_failed_imports=False)
img = (64, 64)  # fast; multiple of the stride 32 (Swin pads to the window)
model = dict(
    data_preprocessor=dict(size=img),
    text_encoder=dict(config=dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
    backbone=dict(drop_path_rate=0.0, drop_rate=0.0, attn_drop_rate=0.0),
    decode_head=dict(dropout_ratio=0.0, lqpg_dropout=0.0))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadRefAnnotations'),
    dict(type='Resize', scale=img, keep_ratio=False),
    dict(type='TokenizeText', tokenizer='bert-base-uncased', max_length=30),
    dict(type='PackRefSegInputs'),
]
train_dataloader = dict(num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline, sentence_seed=0))
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end={n},
                        by_epoch=False)]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={n})
default_hooks = dict(checkpoint=dict(by_epoch=False, interval={c}, max_keep_ckpts=1,
                                     save_best=None))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0)
custom_hooks = {hooks}
'''


def _write_config(path, hooks='[]'):
    base = osp.join(REPO, 'configs', 'mpg_lqgnet_tiny_refer.py')
    with open(path, 'w') as f:
        f.write(CONFIG.format(base=base, n=N_ITERS, c=CKPT_EVERY, hooks=hooks))
    return str(path)


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([HELPERS, REPO, env.get('PYTHONPATH', '')])
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def _train_cmd(config, work_dir, *extra):
    return [sys.executable, osp.join(REPO, 'tools', 'train.py'), config, '--work-dir',
            str(work_dir), *extra]


def _run(cmd, timeout=300):
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _losses(work_dir):
    """{iter: scalars} from every scalars.json of a work_dir (one per run)."""
    out = {}
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            with open(osp.join(root, 'scalars.json')) as f:
                for line in f:
                    rec = json.loads(line)
                    if 'loss' in rec:
                        out.setdefault(rec['iter'], []).append(rec)
    return out


def _ckpt(path):
    return torch.load(path, map_location='cpu')


def test_kill_9_then_resume_matches_uninterrupted_run(tmp_path):
    ref_dir, run_dir = tmp_path / 'ref', tmp_path / 'run'
    config = _write_config(tmp_path / 'cfg.py')
    marker = tmp_path / 'paused'
    kill_config = _write_config(
        tmp_path / 'cfg_kill.py',
        hooks=f"[dict(type='PauseAtIterHook', pause_at={KILL_AFTER}, marker={str(marker)!r})]")

    # 1. the uninterrupted reference
    _run(_train_cmd(config, ref_dir))

    # 2. the same run, killed with SIGKILL after iteration KILL_AFTER (checkpoint at CKPT_EVERY)
    proc = subprocess.Popen(_train_cmd(kill_config, run_dir), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), (proc.poll(), proc.stdout.read()[-3000:] if proc.poll()
                                 is not None else 'timed out')
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    ckpt_name = f'iter_{CKPT_EVERY}.pth'
    with open(run_dir / 'last_checkpoint') as f:
        assert f.read().strip() == str(run_dir / ckpt_name)

    # 3. resume (auto: the latest checkpoint of the work_dir)
    log = _run(_train_cmd(config, run_dir, '--resume'))
    assert f'Auto resumed from the latest checkpoint {run_dir / ckpt_name}' in log
    assert f'resumed epoch: ' in log and f'iter: {CKPT_EVERY}' in log
    assert f'Advance dataloader {CKPT_EVERY} steps' in log

    ref, run = _losses(ref_dir), _losses(run_dir)
    assert sorted(ref) == list(range(1, N_ITERS + 1))
    # killed run: 1..KILL_AFTER; resumed run: CKPT_EVERY+1..N (iterations after the
    # checkpoint ran twice: once before the kill, once after the resume)
    assert sorted(run) == list(range(1, N_ITERS + 1))
    for it in range(1, N_ITERS + 1):
        expected = 2 if CKPT_EVERY < it <= KILL_AFTER else 1
        assert len(run[it]) == expected, (it, run[it])
        for rec in run[it]:
            for key, value in ref[it][0].items():
                if 'loss' in key or key in ('lr', 'base_lr'):
                    assert rec[key] == pytest.approx(value, abs=1e-5, rel=0), (it, key)

    # same final state: weights, optimizer (AdamW moments, step), scheduler, counters
    a, b = _ckpt(ref_dir / f'iter_{N_ITERS}.pth'), _ckpt(run_dir / f'iter_{N_ITERS}.pth')
    assert a['meta']['iter'] == b['meta']['iter'] == N_ITERS
    for k, v in a['state_dict'].items():
        torch.testing.assert_close(b['state_dict'][k], v, atol=1e-5, rtol=0, msg=k)
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert sa.keys() == sb.keys()
    for pid in sa:
        for k, v in sa[pid].items():
            torch.testing.assert_close(sb[pid][k], v, atol=1e-5, rtol=1e-4)
    assert a['param_schedulers'] == b['param_schedulers']
