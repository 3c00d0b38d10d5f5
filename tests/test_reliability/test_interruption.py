"""``kill -9`` of tools/train.py after the first checkpoint, then ``--resume``: the run goes
on with the same iteration counter, optimizer and scheduler state, and the per-iteration
losses equal those of an uninterrupted run (iteration-based tiny config, no dropout or
drop-path, ``sentence_seed`` set, ``num_workers=0``)."""
import signal
import subprocess
import time

import pytest
import torch

from mmrefseg.utils.compat import allow_runner_checkpoints

from .tiny_run import REPO, run, scalars, train_cmd, write_config
from .tiny_run import env as _env

N_ITERS, CKPT_EVERY, KILL_AFTER = 6, 3, 4


def _losses(work_dir):
    """{iter: [records]} of the training iterations logged under work_dir."""
    out = {}
    for rec in scalars(work_dir):
        if 'loss' in rec:
            out.setdefault(rec['iter'], []).append(rec)
    return out


def _ckpt(path):
    with allow_runner_checkpoints():  # what SafeCheckpointLoadHook does for the Runner
        return torch.load(path, map_location='cpu')


def test_kill_9_then_resume_matches_uninterrupted_run(tmp_path):
    ref_dir, run_dir = tmp_path / 'ref', tmp_path / 'run'
    config = write_config(tmp_path / 'cfg.py', N_ITERS, CKPT_EVERY)
    marker = tmp_path / 'paused'
    kill_config = write_config(
        tmp_path / 'cfg_kill.py', N_ITERS, CKPT_EVERY,
        hooks=[dict(type='PauseAtIterHook', pause_at=KILL_AFTER, marker=str(marker))])

    # 1. the uninterrupted reference
    run(train_cmd(config, ref_dir))

    # 2. the same run, killed with SIGKILL after iteration KILL_AFTER (checkpoint at CKPT_EVERY)
    proc = subprocess.Popen(train_cmd(kill_config, run_dir), cwd=REPO, env=_env(),
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
    _, log = run(train_cmd(config, run_dir, '--resume'))
    assert f'Auto resumed from the latest checkpoint {run_dir / ckpt_name}' in log
    assert 'resumed epoch: ' in log and f'iter: {CKPT_EVERY}' in log
    assert f'Advance dataloader {CKPT_EVERY} steps' in log

    ref, got = _losses(ref_dir), _losses(run_dir)
    assert sorted(ref) == list(range(1, N_ITERS + 1))
    # killed run: 1..KILL_AFTER; resumed run: CKPT_EVERY+1..N (iterations after the
    # checkpoint ran twice: once before the kill, once after the resume)
    assert sorted(got) == list(range(1, N_ITERS + 1))
    for it in range(1, N_ITERS + 1):
        expected = 2 if CKPT_EVERY < it <= KILL_AFTER else 1
        assert len(got[it]) == expected, (it, got[it])
        for rec in got[it]:
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
