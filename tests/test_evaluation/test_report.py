# Copyright (c) mmrefseg contributors. All rights reserved.
"""Evaluation reports: the log table, the paper row (markdown / csv / latex) and Table 1
of several reports, exactly as printed; results_table.py on --out files."""
import importlib.util
import json
import os.path as osp

import pytest

from mmrefseg.evaluation.report import (FORMATS, REPORT_KEYS, format_row, format_table,
                                        format_table1, protocol_line)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PROTOCOL = ('RefCOCO: dataset=refcoco split_by=unc; every sentence scored; checkpoint '
            'iter_8.pth (iter 8, epoch 1); oIoU/mIoU/P@X at the original image size; '
            'resized/ = at the input')


def report(dataset='refcoco', split_by='unc', splits=('val', 'testA', 'testB'), base=70.0):
    """A report as MultiSplitTestLoop writes it; split i scores base + i, resized + 1."""
    metrics = {}
    for i, s in enumerate(splits):
        m = {'oIoU': base + i, 'mIoU': base + i + 0.5}
        m.update({f'P@{t}': 50.0 for t in (0.5, 0.6, 0.7, 0.8, 0.9)})
        m.update({f'resized/{k}': v + 1 for k, v in list(m.items())})
        metrics[s] = m
    protocol = dict(dataset=dataset, split_by=split_by, dataset_type='RefCOCODataset',
                    scored='every sentence', checkpoint='/w/iter_8.pth', checkpoint_iter=8,
                    checkpoint_epoch=1, config='configs/x.py',
                    resolution=dict(original='o', iou='i', input_size='448×448',
                                    resized='at the input'))
    return dict(protocol=protocol, splits=list(splits), metrics=metrics,
                num_samples={s: 10 for s in splits}, samples={s: [] for s in splits})


def test_protocol_line_names_dataset_scoring_checkpoint_and_resolutions():
    assert protocol_line(report()['protocol']) == PROTOCOL
    p = dict(report()['protocol'], checkpoint=None, split_by='google', dataset='refcocog')
    assert protocol_line(p).startswith('G-Ref (google): dataset=refcocog split_by=google; ')
    assert 'no checkpoint (initial weights)' in protocol_line(p)


def test_log_table():
    assert format_table(report(splits=('val', 'testA'))) == PROTOCOL + '\n' + '\n'.join([
        '+-------+---------+---------------+-------+-------+-------+-------+-------+-------+-------+',  # noqa: E501
        '| split | samples | resolution    |  oIoU |  mIoU | P@0.5 | P@0.6 | P@0.7 | P@0.8 | P@0.9 |',  # noqa: E501
        '+-------+---------+---------------+-------+-------+-------+-------+-------+-------+-------+',  # noqa: E501
        '| val   |    10   | original      | 70.00 | 70.50 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 |',  # noqa: E501
        '|       |         | input 448×448 | 71.00 | 71.50 | 51.00 | 51.00 | 51.00 | 51.00 | 51.00 |',  # noqa: E501
        '| testA |    10   | original      | 71.00 | 71.50 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 |',  # noqa: E501
        '|       |         | input 448×448 | 72.00 | 72.50 | 51.00 | 51.00 | 51.00 | 51.00 | 51.00 |',  # noqa: E501
        '+-------+---------+---------------+-------+-------+-------+-------+-------+-------+-------+',  # noqa: E501
    ])


ROWS = {
    'markdown': '\n'.join([
        '| RefCOCO | val | testA | testB |',
        '|---|---:|---:|---:|',
        '| oIoU | 70.00 | 71.00 | 72.00 |',
        '| mIoU | 70.50 | 71.50 | 72.50 |',
        '| oIoU (input 448×448) | 71.00 | 72.00 | 73.00 |',
        '| mIoU (input 448×448) | 71.50 | 72.50 | 73.50 |',
        '',
        f'*{PROTOCOL}*']),
    'csv': '\n'.join([
        f'# {PROTOCOL}',
        'RefCOCO,val,testA,testB',
        'oIoU,70.00,71.00,72.00',
        'mIoU,70.50,71.50,72.50',
        'oIoU (input 448×448),71.00,72.00,73.00',
        'mIoU (input 448×448),71.50,72.50,73.50']),
    'latex': '\n'.join([
        f'% {PROTOCOL}',
        r'\begin{tabular}{lrrr}',
        r'\toprule',
        r'RefCOCO & val & testA & testB \\',
        r'\midrule',
        r'oIoU & 70.00 & 71.00 & 72.00 \\',
        r'mIoU & 70.50 & 71.50 & 72.50 \\',
        r'oIoU (input 448$\times$448) & 71.00 & 72.00 & 73.00 \\',
        r'mIoU (input 448$\times$448) & 71.50 & 72.50 & 73.50 \\',
        r'\bottomrule',
        r'\end{tabular}']),
}


@pytest.mark.parametrize('fmt', FORMATS)
def test_paper_row(fmt):
    assert format_row(report(), fmt) == ROWS[fmt]


def test_unknown_format():
    with pytest.raises(ValueError, match='unknown format'):
        format_row(report(), 'html')


def three_reports():
    return [report(), report('refcoco+', base=60.0),
            report('refcocog', 'umd', ('val', 'test'), base=65.0)]


def test_table1_layout():
    table = format_table1(three_reports(), 'markdown', name='MPG-LQGNet')
    lines = table.split('\n')
    assert lines[0] == ('| Method | RefCOCO val | RefCOCO testA | RefCOCO testB | RefCOCO+ val '
                        '| RefCOCO+ testA | RefCOCO+ testB | G-Ref val(U) | G-Ref test(U) |')
    assert lines[2] == ('| MPG-LQGNet (original) | 70.00 | 71.00 | 72.00 | 60.00 | 61.00 | '
                        '62.00 | 65.00 | 66.00 |')
    assert lines[3] == ('| MPG-LQGNet (input 448×448) | 71.00 | 72.00 | 73.00 | 61.00 | '
                        '62.00 | 63.00 | 66.00 | 67.00 |')
    assert lines[5].startswith('*oIoU (%). ' + PROTOCOL + ' | RefCOCO+: dataset=refcoco+')
    latex = format_table1(three_reports()[::-1], 'latex', metric='mIoU',
                          resolutions=['resized'], name='ours').split('\n')
    assert latex[1:7] == [
        r'\begin{tabular}{lrrrrrrrr}', r'\toprule',
        r' & \multicolumn{3}{c}{RefCOCO} & \multicolumn{3}{c}{RefCOCO+} & '
        r'\multicolumn{2}{c}{G-Ref} \\',
        r'Method & val & testA & testB & val & testA & testB & val(U) & test(U) \\',
        r'\midrule',
        r'ours (input 448$\times$448) & 71.50 & 72.50 & 73.50 & 61.50 & 62.50 & 63.50 & '
        r'66.50 & 67.50 \\']
    # a missing split is '–'; a split outside Table 1 gets its own column
    partial = format_table1([report(splits=('val', )),
                             report('refcocog', 'google', ('val', ))], 'csv',
                            resolutions=['original']).split('\n')
    assert partial[1].endswith('G-Ref test(U),G-Ref (google) val(G)')
    assert partial[2] == 'ours (original),70.00,–,–,–,–,–,–,–,70.00'


def test_table1_refuses_a_split_twice_and_foreign_json():
    with pytest.raises(ValueError, match='RefCOCO val is in two reports'):
        format_table1([report(), report(splits=('val', ))])
    with pytest.raises(ValueError, match='lacks'):
        format_table1([{'metrics': {}}])
    with pytest.raises(ValueError, match="resolutions must be"):
        format_table1([report()], resolutions=['input'])


def test_report_keys_are_fixed():
    assert REPORT_KEYS == ('protocol', 'splits', 'metrics', 'num_samples', 'samples')
    assert tuple(report()) == REPORT_KEYS


def test_results_table_tool(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        'results_table', osp.join(REPO, 'tools/analysis_tools/results_table.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    paths = []
    for i, r in enumerate(three_reports()):
        paths.append(str(tmp_path / f'{i}.json'))
        with open(paths[-1], 'w') as f:
            json.dump(r, f)
    out = str(tmp_path / 'table.tex')
    tool.main(paths + ['--format', 'latex', '--name', 'MPG-LQGNet', '--out', out])
    printed = capsys.readouterr().out
    expect = format_table1(three_reports(), 'latex', name='MPG-LQGNet')
    assert printed.strip() == expect
    with open(out) as f:
        assert f.read().strip() == expect
    with open(tmp_path / 'bad.json', 'w') as f:
        json.dump({'metrics': [1]}, f)
    with pytest.raises(ValueError, match='not a tools/test.py --out report'):
        tool.main([str(tmp_path / 'bad.json')])
    with pytest.raises(FileNotFoundError, match='missing.json'):
        tool.main([str(tmp_path / 'missing.json')])
