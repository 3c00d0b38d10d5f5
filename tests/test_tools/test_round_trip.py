# Copyright (c) mmrefseg contributors. All rights reserved.
"""The user workflows end to end, through the real tools, on the fixture dataset.

tools/train.py (4 iterations, validation, checkpoint) → tools/test.py with the checkpoint
(metrics in the log, --out JSON, --show-dir pictures) → tools/demo.py (PNG size) →
--resume → tools/dist_train.sh / dist_test.sh with 2 CPU processes (gloo), whose test
records equal the 1-process ones → mmseg's own tools/test.py with our config.
All runs are subprocesses from the repository root, as a user types them.
"""
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import cv2
import pytest
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = 'configs/mpg_lqgnet_tiny_refer.py'
IMAGE = 'tests/data/tiny_refer/images/mscoco/images/train2014/000000039769.jpg'
# the tiny config's schedule: 4 iterations, validation + checkpoint at iteration 4
MAX_ITERS = 4
SPLIT = 'testA'  # not the config's test split (val): proves --split
ONE_BY_ONE = ['--cfg-options', 'test_dataloader.batch_size=1']  # same batches in 1 and 2 procs


def run(cmd, timeout=420, env=None):
    full_env = dict(os.environ, **(env or {}))
    full_env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)  # prove the allow-list works
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{" ".join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}'
    return out


def metrics_line(log):
    """The `Epoch(test|val) ... oIoU: x mIoU: y` line's numbers."""
    lines = [ln for ln in log.splitlines() if 'oIoU:' in ln and 'mIoU:' in ln]
    assert lines, f'no metric line in the log:\n{log[-3000:]}'
    return dict((k, float(v)) for k, v in re.findall(r'([\w/@.]+): (-?[\d.]+)', lines[-1])
                if 'IoU' in k or k.startswith(('P@', 'resized/')))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    work_dir = str(tmp_path_factory.mktemp('train'))
    log = run([sys.executable, 'tools/train.py', CONFIG, '--work-dir', work_dir])
    return work_dir, log


def split_metrics(log, split):
    """``metrics_line`` of a tools/test.py log, for one split (keys without ``<split>/``)."""
    lines = [ln for ln in log.splitlines() if f'{split}/oIoU:' in ln]
    assert lines, f'no metric line for {split} in the log:\n{log[-3000:]}'
    return {k[len(split) + 1:]: float(v)
            for k, v in re.findall(r'([\w/@.]+): (-?[\d.]+)', lines[-1])
            if k.startswith(f'{split}/')}


def run_test(trained, tmp_path_factory, splits, extra=()):
    """tools/test.py on the trained checkpoint → (log, report JSON)."""
    work_dir, _ = trained
    out_dir = str(tmp_path_factory.mktemp('test'))
    out_json = osp.join(out_dir, 'results.json')
    log = run([sys.executable, 'tools/test.py', CONFIG, osp.join(work_dir, 'iter_4.pth'),
               '--work-dir', out_dir, '--out', out_json, '--split', *splits, *extra] +
              ONE_BY_ONE)
    with open(out_json) as f:
        return log, json.load(f)


@pytest.fixture(scope='module')
def tested_all(trained, tmp_path_factory):
    """--split all: the config's test_splits (val, testA, testB) in one run."""
    return run_test(trained, tmp_path_factory, ['all'], ['--format', 'markdown'])


@pytest.fixture(scope='module')
def tested(trained, tmp_path_factory):
    work_dir, _ = trained
    out_dir = str(tmp_path_factory.mktemp('test'))
    out_json = osp.join(out_dir, 'results.json')
    log = run([sys.executable, 'tools/test.py', CONFIG, osp.join(work_dir, 'iter_4.pth'),
               '--work-dir', out_dir, '--out', out_json, '--split', SPLIT,
               '--show-dir', osp.join(out_dir, 'show'), '--show-interval', '1'] + ONE_BY_ONE)
    return out_dir, out_json, log


def test_train_saves_checkpoint_and_validates(trained):
    work_dir, log = trained
    assert osp.isfile(osp.join(work_dir, f'iter_{MAX_ITERS}.pth'))
    assert re.search(r'Iter\(train\) \[4/4\]', log), log[-3000:]
    metrics = metrics_line(log)
    assert 0 <= metrics['oIoU'] <= 100 and 'resized/oIoU' in metrics
    # best checkpoint by oIoU (schedule_35e: save_best='oIoU')
    assert [f for f in os.listdir(work_dir) if f.startswith('best_oIoU')], os.listdir(work_dir)


def test_test_with_checkpoint_logs_metrics_and_writes_json(tested):
    out_dir, out_json, log = tested
    assert 'Loads checkpoint' in log or 'Load checkpoint' in log
    metrics = split_metrics(log, SPLIT)
    with open(out_json) as f:
        result = json.load(f)
    # the JSON holds the same metrics as the log, and one record per sentence of the split
    assert result['splits'] == [SPLIT]
    assert result['metrics'][SPLIT]['oIoU'] == pytest.approx(metrics['oIoU'], abs=1e-3)
    from mmrefseg.datasets import RefCOCODataset
    n_val = len(RefCOCODataset(data_root=osp.join(REPO, 'tests/data/tiny_refer'),
                               split=SPLIT, test_mode=True))
    assert len(result['samples'][SPLIT]) == n_val == result['num_samples'][SPLIT]
    assert len(result['samples'][SPLIT]) != len(RefCOCODataset(
        data_root=osp.join(REPO, 'tests/data/tiny_refer'), split='val', test_mode=True))
    assert {'I', 'U', 'sent_id', 'text'} <= set(result['samples'][SPLIT][0])
    # --show-dir: one picture per sentence: GT + mask + N_l prior heat maps (the model was
    # asked for its priors)
    shows = []
    for root, _, files in os.walk(osp.join(out_dir, 'show')):
        shows += [osp.join(root, f) for f in files if f.endswith('.png')]
    assert len(shows) == n_val, shows
    assert all(re.search(r'_sent\d+_', osp.basename(p)) for p in shows)
    n_layers = Config.fromfile(osp.join(REPO, CONFIG)).model.decode_head.num_layers
    ds = RefCOCODataset(data_root=osp.join(REPO, 'tests/data/tiny_refer'), split=SPLIT,
                        test_mode=True)
    widths = {d['sent_id']: d['width'] for d in map(ds.get_data_info, range(len(ds)))}
    for path in shows:
        sent_id = int(re.search(r'_sent(\d+)_', osp.basename(path)).group(1))
        width = cv2.imread(path).shape[1]
        assert width == (2 + n_layers) * widths[sent_id], (path, width, widths[sent_id])


def test_multi_split_run_equals_single_split_runs(tested_all, tested, trained,
                                                  tmp_path_factory):
    """--split all = val, testA, testB (test_splits) with one model load; each split's
    metrics and per-sample records equal those of a run on that split alone."""
    log, multi = tested_all
    assert log.count('Load checkpoint from') == 1  # one model load for the three splits
    assert multi['splits'] == ['val', 'testA', 'testB']
    assert set(multi) == {'protocol', 'splits', 'metrics', 'num_samples', 'samples'}
    _, one_json, _ = tested
    with open(one_json) as f:
        single = {SPLIT: json.load(f)}
    _, single['val'] = run_test(trained, tmp_path_factory, ['val'])
    for split, report in single.items():
        assert multi['metrics'][split] == report['metrics'][split]
        assert multi['samples'][split] == report['samples'][split]
        assert multi['num_samples'][split] == report['num_samples'][split]
        # and the log line of that split says the same
        for key, value in split_metrics(log, split).items():
            assert report['metrics'][split][key] == pytest.approx(value, abs=1e-4)
    from mmrefseg.datasets import RefCOCODataset
    assert multi['num_samples']['testB'] == len(RefCOCODataset(
        data_root=osp.join(REPO, 'tests/data/tiny_refer'), split='testB', test_mode=True))


def test_report_protocol_and_table(tested_all, trained):
    log, multi = tested_all
    work_dir, _ = trained
    p = multi['protocol']
    assert p['dataset'] == 'refcoco' and p['split_by'] == 'unc'
    assert p['scored'] == 'every sentence'
    assert p['checkpoint'] == osp.join(work_dir, 'iter_4.pth')
    assert (p['checkpoint_iter'], p['checkpoint_epoch']) == (MAX_ITERS, 0)
    assert p['resolution']['input_size'] == '224×224'
    assert 'argmax of the logits at the network input' in p['resolution']['resized']
    # one table: protocol, then a row per split at both resolutions
    head = ('RefCOCO: dataset=refcoco split_by=unc; every sentence scored; checkpoint '
            'iter_4.pth (iter 4, epoch 0)')
    assert log.count(head) == 2  # the table and the markdown caption
    table = log[log.index(head):]
    for split in multi['splits']:
        m = multi['metrics'][split]
        assert re.search(rf'\| {split} +\| +{multi["num_samples"][split]} +\| original +\| '
                         rf'+{m["oIoU"]:.2f} \| +{m["mIoU"]:.2f} \|', table), table
        assert re.search(rf'\| +\| +\| input 224×224 +\| +{m["resized/oIoU"]:.2f} \|',
                         table)
    # --format markdown: the paper row
    assert '| RefCOCO | val | testA | testB |' in log
    oiou = ' | '.join(f'{multi["metrics"][s]["oIoU"]:.2f}' for s in multi['splits'])
    assert f'| oIoU | {oiou} |' in log


def test_demo_writes_picture_of_expected_size(trained, tmp_path):
    work_dir, _ = trained
    out_file = str(tmp_path / 'demo.png')
    log = run([sys.executable, 'tools/demo.py', IMAGE, CONFIG,
               osp.join(work_dir, 'iter_4.pth'), '--texts', 'the cat on the left',
               'the remote control', '--out-file', out_file, '--device', 'cpu'])
    n_layers = Config.fromfile(osp.join(REPO, CONFIG)).model.decode_head.num_layers
    h, w = cv2.imread(osp.join(REPO, IMAGE)).shape[:2]
    drawn = cv2.imread(out_file)
    # two sentences = two rows; a row = mask panel + one heat map per LQPG layer
    assert drawn.shape == (2 * h, (1 + n_layers) * w, 3), drawn.shape
    assert f'{n_layers} mask priors' in log


def test_resume_continues_from_saved_iteration(trained, tmp_path):
    work_dir, _ = trained
    # a work dir whose latest checkpoint is iteration 4 (as left by an interrupted run)
    shutil.copy(osp.join(work_dir, 'iter_4.pth'), tmp_path / 'iter_4.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    log = run([sys.executable, 'tools/train.py', CONFIG, '--work-dir', str(tmp_path),
               '--resume', '--cfg-options', 'train_cfg.max_iters=6', 'val_cfg=None',
               'val_dataloader=None', 'val_evaluator=None'])  # no validation: faster
    assert 'resumed epoch: 0, iter: 4' in log, log[-3000:]
    assert re.search(r'Iter\(train\) \[5/6\]', log) and re.search(r'Iter\(train\) \[6/6\]', log)
    assert not re.search(r'Iter\(train\) \[[1-4]/6\]', log)
    assert osp.isfile(tmp_path / 'iter_6.pth')


def test_dist_train_on_cpu_trains_and_evaluates(tmp_path, free_port):
    log = run(['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', str(tmp_path)],
              env=dict(PORT=str(free_port)))
    # mmengine's environment block: world size 2 (printed as "GPU number"), gloo
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert "dist_cfg: {'backend': 'gloo'}" in log
    assert re.search(r'Iter\(train\) \[4/4\]', log)
    metrics_line(log)
    assert osp.isfile(tmp_path / 'iter_4.pth')


def test_dist_test_two_processes_equal_one(trained, tested_all, tmp_path, free_port):
    """Two gloo processes, two splits in one run: the same report as one process."""
    work_dir, _ = trained
    _, one = tested_all
    two_json = str(tmp_path / 'results2.json')
    log = run(['bash', 'tools/dist_test.sh', CONFIG, osp.join(work_dir, 'iter_4.pth'), '2',
               '--work-dir', str(tmp_path), '--out', two_json, '--split', 'val', SPLIT] +
              ONE_BY_ONE, env=dict(PORT=str(free_port)))
    assert 'Distributed training: True' in log
    with open(two_json) as f:
        two = json.load(f)
    assert two['splits'] == ['val', SPLIT]
    key = lambda r: r['sent_id']  # noqa: E731
    for split in two['splits']:
        assert two['metrics'][split] == pytest.approx(one['metrics'][split], abs=1e-6)
        assert sorted(two['samples'][split], key=key) == \
            sorted(one['samples'][split], key=key)


def test_mmseg_own_test_tool_runs_our_config(trained, tmp_path):
    """mim-style: mmseg's tools/test.py loads the plugin through custom_imports; on the
    config's test split (val) it reproduces the validation run at the end of training."""
    import mmseg
    tool = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'test.py')
    if not osp.isfile(tool):
        pytest.skip('mmseg wheel without .mim/tools')
    work_dir, train_log = trained
    log = run([sys.executable, tool, CONFIG, osp.join(work_dir, 'iter_4.pth'),
               '--work-dir', str(tmp_path)])
    assert metrics_line(log)['oIoU'] == pytest.approx(metrics_line(train_log)['oIoU'],
                                                      abs=0.01)
