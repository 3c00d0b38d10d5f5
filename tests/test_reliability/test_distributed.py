"""2 CPU processes (gloo) through tools/dist_train.sh: one worker raising ends the whole
job with that worker's error (no hang), and train + eval give the metric of 1 process.

tests/test_tools covers dist_train.sh / dist_test.sh themselves (launch, 1-vs-2-process
test records); these tests cover the failure path and training equivalence.
"""
import re
import time

import pytest

from .tiny_run import dist_train_cmd, run, train_cmd, write_config

# GroupNorm instead of BatchNorm: BN statistics are per process (SyncBN has no CPU
# kernels), so only per-sample norms make 2 × batch 2 the same computation as 1 × batch 4.
GN = dict(type='GN', num_groups=1, requires_grad=True)


def test_one_worker_raising_ends_the_job_with_its_error(tmp_path, free_port):
    config = write_config(tmp_path / 'cfg.py', n_iters=3,
                          hooks=[dict(type='RaiseOnRankHook', rank=1, at_iter=2)])
    start = time.time()
    # rank 0 waits in DDP's all-reduce for rank 1, which raised: torchrun must end it
    rc, out = run(dist_train_cmd(config, tmp_path / 'work', 2), timeout=300, check=False,
                  PORT=str(free_port))
    assert rc != 0, out[-3000:]
    assert 'RaiseOnRankHook: injected failure on rank 1 at iteration 2' in out, out[-4000:]
    assert 'Traceback' in out
    assert time.time() - start < 300


def _metrics(log):
    lines = [ln for ln in log.splitlines() if 'Iter(val)' in ln and 'oIoU:' in ln]
    assert lines, log[-3000:]
    return {k: float(v) for k, v in re.findall(r'([\w/@.]+): (-?[\d.]+)', lines[-1])
            if 'IoU' in k or k.startswith(('P@', 'resized/'))}


def test_two_processes_train_and_evaluate_like_one(tmp_path, free_port):
    n = 2
    one = write_config(tmp_path / 'one.py', n_iters=n, batch=4, val=True, norm_cfg=GN)
    two = write_config(tmp_path / 'two.py', n_iters=n, batch=2, val=True, norm_cfg=GN)
    _, log1 = run(train_cmd(one, tmp_path / 'w1'), timeout=300)
    _, log2 = run(dist_train_cmd(two, tmp_path / 'w2', 2), timeout=300, PORT=str(free_port))
    m1, m2 = _metrics(log1), _metrics(log2)
    assert m1.keys() == m2.keys() and 'oIoU' in m1
    for k in m1:
        assert m2[k] == pytest.approx(m1[k], abs=1e-2), (k, m1, m2)
