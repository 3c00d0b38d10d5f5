# Copyright (c) mmrefseg contributors. All rights reserved.
"""get_flops.py and benchmark.py on the tiny config (in-process, small inputs)."""
import json
import os.path as osp
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs/mpg_lqgnet_tiny_refer.py')
sys.path.insert(0, osp.join(REPO, 'tools', 'analysis_tools'))

import benchmark  # noqa: E402
import get_flops  # noqa: E402


def test_get_flops_params_and_macs(tmp_path, capsys):
    out_json = str(tmp_path / 'flops.json')
    res = get_flops.main([CONFIG, '--shape', '224', '448', '--out-json', out_json])
    assert res['params_without_text_encoder'] == \
        res['params_total'] - res['params_text_encoder'] > 0
    # tiny BERT (hidden 64, 2 layers, FFN 128, 30 tokens, no pooler): per layer
    # Q,K,V,O 4·30·64·64 + FFN 2·30·64·128 + attention QKᵀ and AV 2·30·30·64 MACs
    per_layer = 4 * 30 * 64 * 64 + 2 * 30 * 64 * 128 + 2 * 30 * 30 * 64
    m1, m2 = res['macs']  # 224 and 448: multiples of Swin's window 7 × 32 (no padding)
    assert m1['gmacs_text_encoder'] * 1e9 == pytest.approx(2 * per_layer)
    assert m2['gmacs_text_encoder'] == m1['gmacs_text_encoder']  # image size independent
    # the image side grows with the pixels (attention over keys grows a bit faster)
    ratio = m2['gmacs_without_text_encoder'] / m1['gmacs_without_text_encoder']
    assert 4 * 0.95 < ratio < 4 * 1.3
    assert m1['gmacs_total'] == pytest.approx(m1['gmacs_text_encoder'] +
                                               m1['gmacs_without_text_encoder'])
    with open(out_json) as f:
        assert json.load(f)['params_total'] == res['params_total']
    assert 'Params without text encoder' in capsys.readouterr().out


def test_benchmark_short_run_table_and_json(tmp_path, capsys):
    out_json = str(tmp_path / 'bench.json')
    res = benchmark.main([CONFIG, '--shape', '64', '--warmup', '0', '--iters', '1',
                          '--precision', 'fp32', 'amp', '--out-json', out_json])
    rows = [(r['mode'], r['precision']) for r in res['results']]
    assert rows == [('inference', 'fp32'), ('train', 'fp32'), ('inference', 'amp'),
                    ('train', 'amp')]
    for r in res['results']:
        assert r['s_per_iter'] > 0 and r['peak_mem_mb'] > 0 and len(r['times_s']) == 1
        assert r['s_per_image'] == pytest.approx(r['s_per_iter'] / r['batch_size'])
        # the share of the matmul peak of the phase's own precision, measured in the run
        assert r['peak_gflops'] > 0 and r['gflop_per_iter'] > 0
        assert r['achieved_gflops'] == pytest.approx(r['gflop_per_iter'] / r['s_per_iter'])
        assert r['share_of_peak'] == pytest.approx(r['achieved_gflops'] / r['peak_gflops'])
        assert r['denormals'] == 'flush' and r['compile'] is False
    train_fp32, train_amp = res['results'][1], res['results'][3]
    # training = forward + backward: about 3× the forward's matmul FLOPs
    assert 2 * res['results'][0]['gflop_per_iter'] < train_fp32['gflop_per_iter'] / 2
    assert train_amp['gflop_per_iter'] == pytest.approx(train_fp32['gflop_per_iter'])
    assert res['env']['device'] == 'cpu' and res['ratios'] == []
    assert res['results'][1]['batch_size'] == 2
    with open(out_json) as f:
        assert len(json.load(f)['results']) == 4
    out = capsys.readouterr().out
    assert 'peak RSS MB' in out or 'peak CUDA MB' in out


def test_benchmark_side_by_side_with_another_checkout(tmp_path, capsys):
    """``--ref-path``: the same phases for both checkouts, interleaved, and this / ref."""
    res = benchmark.main([CONFIG, '--shape', '64', '--warmup', '0', '--iters', '1',
                          '--mode', 'inference', '--denormals', 'flush', 'keep',
                          '--no-flops', '--peak-sizes', '256', '--ref-path', REPO])
    got = [(r['commit'], r['denormals']) for r in res['results']]
    assert got == [('ref', 'flush'), ('this', 'flush'), ('ref', 'keep'), ('this', 'keep')]
    assert [(t['denormals'], t['mode']) for t in res['ratios']] == [('flush', 'inference'),
                                                                      ('keep', 'inference')]
    for t in res['ratios']:
        assert t['time_ratio'] > 0 and t['mem_ratio'] > 0 and t['ref'] == REPO
    assert 'this / ' in capsys.readouterr().out


def test_tools_name_missing_config():
    with pytest.raises(FileNotFoundError, match='missing_cfg.py'):
        get_flops.main(['missing_cfg.py'])
    with pytest.raises(FileNotFoundError, match='missing_cfg.py'):
        benchmark.main(['missing_cfg.py'])
