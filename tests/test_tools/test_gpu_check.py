"""tools/gpu_check.sh without a GPU, the ``cuda`` marker, and gpu_probe's parsers."""
import json
import os
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'tools', 'analysis_tools'))

import gpu_probe  # noqa: E402


def _env(**extra):
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES='',
               OMP_NUM_THREADS='1')
    env.pop('OUT', None)
    env.update(extra)
    return env


def test_gpu_check_without_cuda_says_skip_and_exits_0(tmp_path):
    dest = tmp_path / 'dest'
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', 'gpu_check.sh'), str(dest)],
                          cwd=str(tmp_path), env=_env(GPU_CHECK_WORK=str(tmp_path / 'w')),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    lines = [ln for ln in proc.stdout.splitlines() if ln[:4] in ('PASS', 'FAIL', 'SKIP')]
    assert [ln.split()[1] for ln in lines] == ['stack', 'ops', 'tests', 'dist', 'bench'], out
    assert lines[0].startswith('PASS stack') and 'no CUDA device' in lines[0]
    assert 'torch ' in lines[0] and 'mmcv 2.1.0' in lines[0]
    for ln in lines[1:]:
        assert ln.startswith('SKIP') and 'no GPU: torch' in ln and 'sees no CUDA device' in ln
    summary = json.loads((dest / 'gpu_check.json').read_text())
    assert summary['cuda'] is False and summary['failed'] == []
    assert [c['status'] for c in summary['checks']] == ['PASS'] + ['SKIP'] * 4
    stack = summary['checks'][0]['data']
    assert stack['cuda_available'] is False and stack['mmcv'] == '2.1.0'
    assert stack['torch'] and 'mmcv_ops' in stack
    assert (dest / 'gpu_check.log').is_file()


def test_gpu_check_fails_a_check_past_the_deadline(tmp_path):
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', 'gpu_check.sh'), str(tmp_path)],
                          env=_env(GPU_CHECK_WORK=str(tmp_path / 'w'), GPU_CHECK_DEADLINE='10',
                                   GPU_CHECKS='stack'),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL stack (0 s): not run: the script's deadline of 10 s" in proc.stdout


def _pytest(*args):
    return subprocess.run([sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', *args],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def test_cuda_marker_deselects_by_default_and_errors_without_gpu():
    target = 'tests/test_reliability/test_no_sync.py'
    proc = _pytest('--collect-only', '-q', target)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '1 deselected' in proc.stdout, proc.stdout
    assert 'test_training_step_has_no_sync_cuda' not in proc.stdout
    assert 'test_training_step_has_no_sync' in proc.stdout  # the CPU tests are collected
    assert '1 CUDA test(s) deselected' in proc.stdout
    proc = _pytest('--collect-only', '-q', '--cuda', target)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # usage error, not a skip
    assert 'torch.cuda.is_available() is False' in proc.stdout + proc.stderr


def test_test_metrics_reads_the_last_test_json(tmp_path):
    run = tmp_path / '20261201_101010'
    run.mkdir()
    (run / '20261201_101010.json').write_text(
        json.dumps({'refseg/oIoU': 41.5, 'refseg/mIoU': 40.0, 'time': 1.0}) + '\n')
    (tmp_path / '20261201_101010' / 'vis_data').mkdir()
    assert gpu_probe.test_metrics(str(tmp_path)) == {'refseg/oIoU': 41.5, 'refseg/mIoU': 40.0}
    assert gpu_probe.test_metrics(str(tmp_path / 'none')) == {}
