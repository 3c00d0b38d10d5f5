# Copyright (c) mmrefseg contributors. All rights reserved.
"""Evaluation reports: what ``MultiSplitTestLoop`` writes with ``--out`` and prints.

A *report* is the JSON-friendly dict of one test run over one or more splits::

    {"protocol": {"dataset": "refcoco", "split_by": "unc", "scored": "every sentence",
                  "checkpoint": "/abs/iter_4.pth", "checkpoint_iter": 4,
                  "checkpoint_epoch": 0, "config": "configs/....py",
                  "resolution": {"original": "...", "resized": "...", "input_size": "448×448",
                                 "iou": "..."}},
     "splits": ["val", "testA", "testB"],
     "metrics": {"val": {"oIoU": 74.2, "mIoU": ..., "resized/oIoU": ...}, ...},
     "num_samples": {"val": 10834, ...},
     "samples": {"val": [{"ref_id": ..., "sent_id": ..., "I": ..., "U": ..., ...}], ...}}

:func:`format_table` renders a report as the log table (a row per split, both
resolutions), :func:`format_row` as a paper row (``| RefCOCO | val | testA | testB |`` with
oIoU and mIoU) in markdown, csv or latex, and :func:`format_table1` joins the reports of
several datasets into the layout of the paper's Table 1. Every rendering carries the
protocol (:func:`protocol_line`), so a figure never travels without it.
"""
import csv
import io
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    'FORMATS', 'REPORT_KEYS', 'TABLE1_COLUMNS', 'dataset_title', 'protocol_line',
    'format_table', 'format_row', 'format_table1'
]

#: the formats of :func:`format_row` and :func:`format_table1`
FORMATS = ('markdown', 'csv', 'latex')
#: top-level keys of a report (fixed by the tests)
REPORT_KEYS = ('protocol', 'splits', 'metrics', 'num_samples', 'samples')
#: the paper's Table 1: (dataset, split_by, split) in column order
TABLE1_COLUMNS = (('refcoco', 'unc', 'val'), ('refcoco', 'unc', 'testA'),
                  ('refcoco', 'unc', 'testB'), ('refcoco+', 'unc', 'val'),
                  ('refcoco+', 'unc', 'testA'), ('refcoco+', 'unc', 'testB'),
                  ('refcocog', 'umd', 'val'), ('refcocog', 'umd', 'test'))
_NAMES = {'refcoco': 'RefCOCO', 'refcoco+': 'RefCOCO+', 'refcocog': 'G-Ref'}
#: the partition each dataset is known by (others are named in the title)
_DEFAULT_SPLIT_BY = {'refcoco': 'unc', 'refcoco+': 'unc', 'refcocog': 'umd'}
_DATASET_ORDER = ('refcoco', 'refcoco+', 'refcocog')
_MAIN_METRICS = ('oIoU', 'mIoU')


def dataset_title(protocol: dict) -> str:
    """``'RefCOCO'``, ``'RefCOCO+'``, ``'G-Ref'`` (UMD), ``'G-Ref (google)'`` ..."""
    dataset, split_by = protocol.get('dataset'), protocol.get('split_by')
    name = _NAMES.get(dataset, str(dataset or protocol.get('dataset_type', 'dataset')))
    if split_by and split_by != _DEFAULT_SPLIT_BY.get(dataset):
        name = f'{name} ({split_by})'
    return name


def _split_label(dataset: str, split_by: str, split: str) -> str:
    """Table 1 names G-Ref's splits ``val(U)`` / ``test(U)``."""
    if dataset == 'refcocog' and split_by:
        return f'{split}({split_by[0].upper()})'
    return split


def protocol_line(protocol: dict) -> str:
    """One line: dataset and split_by, scoring, checkpoint, resolution of each figure."""
    which = ' '.join(f'{k}={protocol[k]}' for k in ('dataset', 'split_by') if protocol.get(k))
    parts = [f'{dataset_title(protocol)}: {which}' if which else dataset_title(protocol),
             f"{protocol.get('scored', 'unknown scoring')} scored"]
    ckpt = protocol.get('checkpoint')
    if ckpt:
        when = ', '.join(f'{k} {protocol[f"checkpoint_{k}"]}' for k in ('iter', 'epoch')
                         if protocol.get(f'checkpoint_{k}') is not None)
        parts.append(f'checkpoint {osp.basename(ckpt)}' + (f' ({when})' if when else ''))
    else:
        parts.append('no checkpoint (initial weights)')
    res = protocol.get('resolution') or {}
    parts.append('oIoU/mIoU/P@X at the original image size')
    if res.get('resized'):
        parts.append(f"resized/ = {res['resized']}")
    return '; '.join(parts)


def _names(metrics: Dict[str, float]) -> List[str]:
    """``oIoU, mIoU, P@0.5, ...`` in the metric's order (keys without ``resized/``)."""
    return [k for k in metrics if '/' not in k]


def _fmt(value: Optional[float]) -> str:
    return '–' if value is None else f'{value:.2f}'


def _input_label(protocol: dict) -> str:
    size = (protocol.get('resolution') or {}).get('input_size')
    return f'input {size}' if size else 'input size'


def format_table(report: dict) -> str:
    """The log table: a row per split (original and input resolution), protocol above."""
    from prettytable import PrettyTable
    splits = report['splits']
    if not splits:
        return protocol_line(report['protocol']) + '\n(no split evaluated)'
    names = _names(report['metrics'][splits[0]])
    table = PrettyTable(['split', 'samples', 'resolution'] + names)
    table.align['split'] = table.align['resolution'] = 'l'
    for split in splits:
        m = report['metrics'][split]
        table.add_row([split, report['num_samples'].get(split, ''), 'original'] +
                      [_fmt(m.get(k)) for k in names])
        if any(f'resized/{k}' in m for k in names):
            table.add_row(['', '', _input_label(report['protocol'])] +
                          [_fmt(m.get(f'resized/{k}')) for k in names])
    return protocol_line(report['protocol']) + '\n' + table.get_string()


def _rows(report: dict) -> List[Tuple[str, List[Optional[float]]]]:
    """``[(label, [value per split])]``: oIoU and mIoU at both resolutions."""
    rows = []
    label_in = _input_label(report['protocol'])
    for prefix, suffix in (('', ''), ('resized/', f' ({label_in})')):
        for name in _MAIN_METRICS:
            values = [report['metrics'][s].get(prefix + name) for s in report['splits']]
            if any(v is not None for v in values):
                rows.append((name + suffix, values))
    return rows


def _render(header: List[str], rows: List[List[str]], fmt: str, caption: str,
            group: Optional[List[Tuple[str, int]]] = None) -> str:
    """Header + rows in ``fmt``; ``group``: LaTeX multicolumn titles over the header."""
    if fmt not in FORMATS:
        raise ValueError(f'unknown format {fmt!r}; choose one of {", ".join(FORMATS)}.')
    if fmt == 'markdown':
        lines = ['| ' + ' | '.join(header) + ' |',
                 '|' + '|'.join(['---'] + ['---:'] * (len(header) - 1)) + '|']
        lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
        return '\n'.join(lines) + f'\n\n*{caption}*'
    if fmt == 'csv':
        buf = io.StringIO()
        buf.write(f'# {caption}\n')
        writer = csv.writer(buf, lineterminator='\n')
        writer.writerow(header)
        writer.writerows(rows)
        return buf.getvalue().rstrip('\n')

    def tex(cell: str) -> str:
        for a, b in (('\\', r'\textbackslash{}'), ('&', r'\&'), ('%', r'\%'), ('_', r'\_'),
                     ('#', r'\#'), ('–', '--'), ('×', r'$\times$')):
            cell = cell.replace(a, b)
        return cell

    lines = [f'% {caption}', r'\begin{tabular}{l' + 'r' * (len(header) - 1) + '}',
             r'\toprule']
    if group:
        lines.append(' & '.join([''] + [
            rf'\multicolumn{{{n}}}{{c}}{{{tex(title)}}}' if n > 1 else tex(title)
            for title, n in group]) + r' \\')
    lines.append(' & '.join(tex(h) for h in header) + r' \\')
    lines.append(r'\midrule')
    lines += [' & '.join(tex(c) for c in r) + r' \\' for r in rows]
    lines += [r'\bottomrule', r'\end{tabular}']
    return '\n'.join(lines)


def format_row(report: dict, fmt: str = 'markdown') -> str:
    """The splits of one report as a paper row: ``| RefCOCO | val | testA | testB |``
    then oIoU and mIoU (original, then input resolution), the protocol as caption."""
    header = [dataset_title(report['protocol'])] + list(report['splits'])
    rows = [[label] + [_fmt(v) for v in values] for label, values in _rows(report)]
    return _render(header, rows, fmt, protocol_line(report['protocol']))


def format_table1(reports: Sequence[dict],
                  fmt: str = 'markdown',
                  metric: str = 'oIoU',
                  resolutions: Sequence[str] = ('original', 'resized'),
                  name: str = 'ours') -> str:
    """Several reports (RefCOCO, RefCOCO+, G-Ref) in the paper's Table 1 layout.

    Columns: Table 1's eight (dataset, split) columns, then any other split the reports
    hold; a cell no report fills is ``–``. One row per resolution. A split present in two
    reports of the same dataset is an error.

    Args:
        reports (list[dict]): reports (``--out`` JSONs of ``tools/test.py``).
        fmt (str): ``'markdown'``, ``'csv'`` or ``'latex'``. Defaults to ``'markdown'``.
        metric (str): metric name without prefix. Defaults to ``'oIoU'`` (Table 1's).
        resolutions (Sequence[str]): ``'original'`` and/or ``'resized'``.
        name (str): the method's name in the first column. Defaults to ``'ours'``.
    """
    bad = [r for r in resolutions if r not in ('original', 'resized')]
    if bad or not resolutions:
        raise ValueError(f"resolutions must be 'original' and/or 'resized', got {bad}.")
    cells: Dict[tuple, dict] = OrderedDict()
    protocols: Dict[tuple, dict] = OrderedDict()
    for i, report in enumerate(reports):
        missing = [k for k in REPORT_KEYS if k not in report]
        if missing:
            raise ValueError(f'report {i} lacks {missing}: pass the --out JSON of '
                             'tools/test.py.')
        p = report['protocol']
        key = (p.get('dataset'), p.get('split_by'))
        for split in report['splits']:
            if key + (split, ) in cells:
                raise ValueError(f'{dataset_title(p)} {split} is in two reports; pass one '
                                 'result per split.')
            cells[key + (split, )] = report['metrics'][split]
        protocols.setdefault(key, p)
    extra = [c for c in cells if c not in TABLE1_COLUMNS]
    datasets = list(_DATASET_ORDER) + sorted({c[0] for c in extra} - set(_DATASET_ORDER))
    order = []
    for dataset in datasets:  # Table 1's columns of a dataset, then its other splits
        order += [c for c in TABLE1_COLUMNS + tuple(extra) if c[0] == dataset]
    header = ['Method'] + [_split_label(*c) for c in order]
    group: List[Tuple[str, int]] = []
    for c in order:
        title = dataset_title(dict(dataset=c[0], split_by=c[1]))
        if group and group[-1][0] == title:
            group[-1] = (title, group[-1][1] + 1)
        else:
            group.append((title, 1))
    sizes = ', '.join(sorted({_input_label(p) for p in protocols.values()})) or 'input size'
    rows = []
    for res in resolutions:
        key = metric if res == 'original' else f'resized/{metric}'
        label = f'{name} (original)' if res == 'original' else f'{name} ({sizes})'
        rows.append([label] + [_fmt(cells[c].get(key)) if c in cells else '–'
                               for c in order])
    caption = f'{metric} (%). ' + ' | '.join(protocol_line(p) for p in protocols.values())
    if fmt == 'latex':
        return _render(header, rows, fmt, caption, group=group)
    # markdown / csv have no multicolumn header: name every column "<dataset> <split>"
    flat = ['Method'] + [f'{dataset_title(dict(dataset=c[0], split_by=c[1]))} '
                         f'{_split_label(*c)}' for c in order]
    return _render(flat, rows, fmt, caption)
