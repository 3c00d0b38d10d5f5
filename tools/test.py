# Copyright (c) mmrefseg contributors. All rights reserved.
"""Test (and evaluate) a referring segmentor (mmseg 1.x ``tools/test.py`` + RIS extras).

    python tools/test.py CONFIG CHECKPOINT [--split testA] [--out results.json]
                         [--work-dir DIR] [--show-dir DIR] [--cfg-options k=v ...]
                         [--launcher {none,pytorch,slurm,mpi}]

- ``--split NAME``: shortcut for ``--cfg-options test_dataloader.dataset.split=NAME``.
- ``--out FILE``: JSON with the metrics and one record per sentence (written by
  ``RefSegMetric``'s ``out_file``).
- ``--show-dir DIR``: pictures of image + mask + sentence + per-layer mask priors
  (``RefSegLocalVisualizer``) for every ``--show-interval``-th test batch.
"""
import argparse
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from mmengine.config import Config  # noqa: E402

import mmrefseg  # noqa: E402,F401  (torch.load allow-list before any checkpoint is read)
from mmrefseg.engine.runner_utils import (add_launcher_args, build_runner,  # noqa: E402
                                          check_config_file, parse_launcher_args,
                                          set_work_dir, setup_cpu_distributed)


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
        help='dataset split to test (e.g. val, testA, testB, test); shortcut for '
        '--cfg-options test_dataloader.dataset.split=NAME')
    parser.add_argument(
        '--out',
        type=str,
        help='JSON file for the metrics and the per-sentence records (I, U, IoU, ids)')
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
    return cfg


def main(argv=None):
    args = parse_args(argv)

    check_config_file(args.config)
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise FileNotFoundError(
            f'checkpoint {args.checkpoint!r} not found: pass a .pth written by '
            'tools/train.py (e.g. work_dirs/<config>/iter_1000.pth) or a URL.')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.split is not None:
        cfg.test_dataloader.dataset.split = args.split
    set_work_dir(cfg, args.work_dir, args.config)

    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)

    if args.out is not None:
        evaluator = cfg.test_evaluator
        if isinstance(evaluator, (list, tuple)):
            raise ValueError(f'--out needs a single test_evaluator, {args.config} has '
                             f'{len(evaluator)}.')
        evaluator['out_file'] = osp.abspath(args.out)

    setup_cpu_distributed(cfg, args.launcher)

    runner = build_runner(cfg)
    runner.test()


if __name__ == '__main__':
    main()
