# Copyright (c) mmrefseg contributors. All rights reserved.
"""Test (and evaluate) a referring segmentor (mmseg 1.x ``tools/test.py`` + RIS extras).

    python tools/test.py CONFIG CHECKPOINT [--split val testA testB | --split all]
                         [--out results.json] [--format markdown|csv|latex]
                         [--work-dir DIR] [--show-dir DIR] [--cfg-options k=v ...]
                         [--launcher {none,pytorch,slurm,mpi}]

- ``--split NAME [NAME ...]``: the splits to evaluate, in order, with one model load
  (``MultiSplitTestLoop``); ``all`` = the config's ``test_splits`` (e.g. RefCOCO val, testA,
  testB). Default: the config's test split.
- It prints one table (a row per split, oIoU / mIoU / P@X at the original and at the input
  resolution) headed by the protocol: dataset and split_by, what is scored, the checkpoint
  and its iteration / epoch, the resolution of each figure.
- ``--out FILE``: that report as JSON: ``protocol``, ``metrics`` (``{split: {metric:
  value}}``), ``num_samples`` and the per-sample records of every split (``samples``).
- ``--format``: also print the splits as a paper row (``| RefCOCO | val | testA | testB |``
  with oIoU and mIoU); ``tools/analysis_tools/results_table.py`` joins several ``--out``
  files into the paper's Table 1.
- ``--show-dir DIR``: pictures of image + mask + sentence + per-layer mask priors
  (``RefSegLocalVisualizer``) for every ``--show-interval``-th test batch; the model is
  asked for its priors only then (``model.test_cfg.return_priors``).
"""
import argparse
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from mmengine.config import Config  # noqa: E402
from mmengine.dist import is_main_process  # noqa: E402

import mmrefseg  # noqa: E402,F401  (registers the components)
from mmrefseg.utils.compat import apply_pkg_resources_fallback  # noqa: E402
from mmrefseg.engine.runner_utils import (add_launcher_args, build_runner,  # noqa: E402
                                          check_config_file, parse_launcher_args,
                                          set_work_dir, setup_cpu_distributed)
from mmrefseg.evaluation.report import FORMATS, format_row  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a referring segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir',
        help='if specified, the evaluation metric results will be dumped into the '
        'directory as json')
    parser.add_argument(
        '--split',
        nargs='+',
        help='split(s) to test, in order, with one model load (e.g. val testA testB); '
        '"all" = the config\'s test_splits. Default: the config\'s test split')
    parser.add_argument(
        '--out',
        type=str,
        help='JSON file for the report: protocol, {split: {metric: value}} and the '
        'per-sentence records (I, U, IoU, ids) of every split')
    parser.add_argument(
        '--format',
        choices=FORMATS,
        help='also print the splits as a paper row in this format')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images (mask, sentence, mask priors) are saved')
    parser.add_argument(
        '--show-interval', type=int, default=None,
        help='draw every N-th test batch (default: the config\'s visualization hook '
        'interval)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    add_launcher_args(parser)
    return parse_launcher_args(parser, argv)


def trigger_visualization_hook(cfg, args):
    """Switch the config's ``visualization`` hook on and point it at ``--show-dir``."""
    default_hooks = cfg.default_hooks
    if 'visualization' not in default_hooks:
        raise RuntimeError(
            f'{args.config}: --show/--show-dir need a visualization hook in default_hooks: '
            "add visualization=dict(type='SegVisualizationHook') to default_hooks.")
    hook = default_hooks['visualization']
    hook['draw'] = True
    if args.show_interval is not None:
        hook['interval'] = args.show_interval
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    visualizer = cfg.get('visualizer', None) or dict(
        type='RefSegLocalVisualizer', vis_backends=[dict(type='LocalVisBackend')],
        name='visualizer')
    # mmseg's SegLocalVisualizer draws class-coloured maps only: draw the RIS view instead
    if visualizer.get('type') in ('SegLocalVisualizer', 'mmseg.SegLocalVisualizer'):
        visualizer['type'] = 'RefSegLocalVisualizer'
    if args.show_dir:
        visualizer['save_dir'] = args.show_dir
    cfg.visualizer = visualizer
    # the model computes its mask priors only on request: the visualizer draws them
    if visualizer['type'] in ('RefSegLocalVisualizer', 'mmseg.RefSegLocalVisualizer') and \
            visualizer.get('draw_priors', True):
        test_cfg = cfg.model.get('test_cfg', None) or dict(mode='whole')
        test_cfg['return_priors'] = True
        cfg.model.test_cfg = test_cfg
    return cfg


def set_test_loop(cfg, args) -> None:
    """Test through ``MultiSplitTestLoop`` (``--split``, ``--out``); a config with a loop
    of its own keeps it, for one split, without the report."""
    test_cfg = dict(cfg.get('test_cfg', None) or {})
    loop = test_cfg.get('type', 'TestLoop')
    if loop in ('TestLoop', 'mmengine.TestLoop', 'MultiSplitTestLoop',
                'mmseg.MultiSplitTestLoop'):
        splits = args.split if args.split is not None else test_cfg.get('splits', None)
        cfg.test_cfg = dict(type='MultiSplitTestLoop', splits=splits,
                            out_file=osp.abspath(args.out) if args.out else None,
                            fp16=test_cfg.get('fp16', False))
        return
    if (args.split is not None and (len(args.split) > 1 or args.split == ['all'])) or \
            args.out or args.format:
        raise ValueError(f'{args.config}: test_cfg has its own loop ({loop!r}); several '
                         'splits, --out and --format need the default test loop. Use one '
                         "--split, or --cfg-options test_cfg.type=MultiSplitTestLoop.")
    if args.split is not None:
        cfg.test_dataloader.dataset.split = args.split[0]


def main(argv=None):
    args = parse_args(argv)

    check_config_file(args.config)
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise FileNotFoundError(
            f'checkpoint {args.checkpoint!r} not found: pass a .pth written by '
            'tools/train.py (e.g. work_dirs/<config>/iter_1000.pth) or a URL.')
    apply_pkg_resources_fallback()  # only acts without pkg_resources (setuptools >= 82)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    set_test_loop(cfg, args)
    set_work_dir(cfg, args.work_dir, args.config)

    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)

    setup_cpu_distributed(cfg, args.launcher)

    runner = build_runner(cfg)
    runner.test()
    report = getattr(runner.test_loop, 'report', None)
    if args.format and is_main_process() and report is not None:
        print(format_row(report, args.format))


if __name__ == '__main__':
    main()
