# Copyright (c) mmrefseg contributors. All rights reserved.
"""Join the ``--out`` reports of several ``tools/test.py`` runs into the paper's Table 1.

    python tools/analysis_tools/results_table.py refcoco.json refcoco+.json refcocog.json \
        [--format markdown|csv|latex] [--metric oIoU] [--resolution original resized] \
        [--name MPG-LQGNet] [--out table.md]

Columns are Table 1's (RefCOCO val / testA / testB, RefCOCO+ val / testA / testB, G-Ref
val(U) / test(U)), then any other split the reports hold; ``–`` where no report has the
split. One row per resolution: ``original`` (the headline) and ``resized`` (at the network
input, the LAVT-lineage protocol). The caption gives each report's protocol (dataset,
split_by, scoring, checkpoint and its iteration / epoch, resolutions).
"""
import argparse
import json
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from mmrefseg.evaluation.report import FORMATS, format_table1  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Join tools/test.py --out reports into the paper's Table 1 layout")
    parser.add_argument('reports', nargs='+', help='--out JSON files of tools/test.py')
    parser.add_argument('--format', choices=FORMATS, default='markdown')
    parser.add_argument('--metric', default='oIoU',
                        help='metric of the cells (oIoU, mIoU, P@0.5, ...). Default: oIoU')
    parser.add_argument('--resolution', nargs='+', choices=('original', 'resized'),
                        default=['original', 'resized'],
                        help='one row per resolution. Default: both')
    parser.add_argument('--name', default='ours', help='the method column. Default: ours')
    parser.add_argument('--out', help='also write the table to this file')
    return parser.parse_args(argv)


def load_report(path: str) -> dict:
    if not osp.isfile(path):
        raise FileNotFoundError(f'results_table: {path!r} not found; pass the --out JSON '
                                'files of tools/test.py.')
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'results_table: {path} is not JSON ({e}).') from e


def main(argv=None):
    args = parse_args(argv)
    reports = []
    for path in args.reports:
        report = load_report(path)
        if not isinstance(report.get('metrics'), dict) or 'splits' not in report:
            raise ValueError(f'results_table: {path} is not a tools/test.py --out report '
                             '(no "splits" / "metrics").')
        reports.append(report)
    table = format_table1(reports, fmt=args.format, metric=args.metric,
                          resolutions=args.resolution, name=args.name)
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')


if __name__ == '__main__':
    main()
