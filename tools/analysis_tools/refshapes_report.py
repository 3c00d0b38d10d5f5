# Copyright (c) mmrefseg contributors. All rights reserved.
"""Per-template IoU on RefShapes, and the validation curve of a training run.

    # 1. per-sample dump from the metric (any split of a RefShapes config):
    python tools/test.py configs/quickstart/mpg_lqgnet_refshapes.py WORK_DIR/iter_N.pth \
        --cfg-options test_evaluator.out_file=WORK_DIR/val_samples.json
    # 2. oIoU / mIoU per sentence template (+ the validation curve from the log):
    python tools/analysis_tools/refshapes_report.py configs/quickstart/mpg_lqgnet_refshapes.py \
        WORK_DIR/val_samples.json [--log WORK_DIR]

The metric's dump (``RefSegMetric(out_file=...)``) holds one record per sample with its
``ref_id``; the template of each ``ref_id`` comes from the dataset the config describes
(regenerated deterministically from its seed if the cache is gone); pass the dump's
``--cfg-options`` (e.g. ``test_dataloader.dataset.split=test``) to the report as well.
"""
import argparse
import glob
import json
import os.path as osp
import re
import sys
from collections import OrderedDict, defaultdict
from datetime import datetime

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def per_template(samples, items):
    """``{template: dict(n, oIoU, mIoU)}`` (percent), plus ``'all'``.

    Args:
        samples (list[dict]): metric records with ``ref_id``, ``text``, ``I``, ``U``.
        items (dict): ``ref_id`` → dataset item (``template``, ``text``).
    """
    groups = defaultdict(list)
    for s in samples:
        item = items.get(s['ref_id'])
        if item is None or ('text' in s and s['text'] != item['text']):
            raise KeyError(
                f'refshapes_report: ref_id {s["ref_id"]} ({s.get("text")!r}) of the dump is not '
                f'in the dataset of the config: dump and config describe different data. Pass '
                f'the options the dump was made with, e.g. --cfg-options '
                f'test_dataloader.dataset.split=test.')
        groups[item['template']].append(s)
        groups['all'].append(s)
    out = OrderedDict()
    for name in sorted(groups, key=lambda n: (n == 'all', n)):
        g = groups[name]
        inter, union = sum(s['I'] for s in g), sum(s['U'] for s in g)
        ious = [s['I'] / s['U'] if s['U'] else 0.0 for s in g]
        out[name] = dict(n=len(g), oIoU=100.0 * inter / union if union else 0.0,
                         mIoU=100.0 * sum(ious) / len(ious))
    return out


def read_curve(work_dir):
    """``[(iteration, seconds since the run's first log line, {metric: value})]``.

    Reads the newest ``*.log`` under ``work_dir`` (mmengine's text log).
    """
    logs = sorted(glob.glob(osp.join(work_dir, '*', '*.log')) +
                  glob.glob(osp.join(work_dir, '*.log')), key=osp.getmtime)
    if not logs:
        raise FileNotFoundError(f'refshapes_report: no *.log under {work_dir}; pass the '
                                'work_dir of a tools/train.py run.')
    stamp = re.compile(r'^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)')
    last_iter, start, curve = 0, None, []
    for line in open(logs[-1]):
        m = stamp.match(line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), '%Y/%m/%d %H:%M:%S')
        start = start or t
        it = re.search(r'Iter\(train\) \[\s*(\d+)/', line)
        if it:
            last_iter = int(it.group(1))
        if 'Iter(val)' in line and 'oIoU' in line:
            vals = dict((k, float(v)) for k, v in
                        re.findall(r'(\S+): (-?[\d.]+(?:e-?\d+)?)', line.split('Iter(val)')[1]))
            curve.append((last_iter, (t - start).total_seconds(), vals))
    return curve


def parse_args():
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description='RefShapes per-template IoU')
    p.add_argument('config', help='the RefShapes config the dump was made with')
    p.add_argument('dump', nargs='?', help='RefSegMetric out_file JSON')
    p.add_argument('--split-key', default='test_dataloader',
                   help='config key of the dataloader the dump scored (default: '
                        'test_dataloader)')
    p.add_argument('--log', help='work_dir of the training run: print the val curve')
    p.add_argument('--out', help='write the report as JSON here')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='the --cfg-options the dump was made with (split, seed, ...)')
    return p.parse_args()


def main():
    args = parse_args()
    report = {}
    if args.dump:
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        import mmrefseg  # noqa: F401
        from mmseg.registry import DATASETS
        cfg = Config.fromfile(args.config)
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        init_default_scope('mmseg')
        ds_cfg = cfg[args.split_key]['dataset'].copy()
        ds_cfg['pipeline'] = []
        dataset = DATASETS.build(ds_cfg)
        items = [dataset.get_data_info(i) for i in range(len(dataset))]
        with open(args.dump) as f:
            samples = json.load(f)['samples']
        report['per_template'] = per_template(samples, {d['ref_id']: d for d in items})
        print(f'{"template":<14}{"n":>6}{"oIoU":>8}{"mIoU":>8}')
        for name, r in report['per_template'].items():
            print(f'{name:<14}{r["n"]:>6}{r["oIoU"]:>8.2f}{r["mIoU"]:>8.2f}')
    if args.log:
        report['curve'] = read_curve(args.log)
        print(f'\n{"iter":>6}{"time(s)":>9}  val metrics')
        for it, sec, vals in report['curve']:
            shown = ' '.join(f'{k}={v:.2f}' for k, v in vals.items()
                             if k in ('oIoU', 'mIoU', 'P@0.5'))
            print(f'{it:>6}{sec:>9.0f}  {shown}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)


if __name__ == '__main__':
    main()
