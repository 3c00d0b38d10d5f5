# Copyright (c) mmrefseg contributors. All rights reserved.
"""Train a referring segmentor (mmseg 1.x ``tools/train.py`` with CPU extras).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--auto-scale-lr] [--cfg-options k=v ...]
                          [--launcher {none,pytorch,slurm,mpi}]

The plugin is loaded by the config's ``custom_imports=dict(imports=['mmrefseg'])``; the
repository root is put on ``sys.path`` so this works from a clone without installing.
``--launcher pytorch`` on a machine without CUDA runs on CPU with the gloo backend
(see :mod:`mmrefseg.engine.runner_utils`); ``--amp`` is fp16 on CUDA and bf16 on CPU.
``--auto-scale-lr`` (as mmdet's / mmpretrain's tools): the lr is scaled linearly by the
effective batch (processes × ``batch_size`` × ``optim_wrapper.accumulative_counts``) over
the config's ``auto_scale_lr.base_batch_size`` (8, the paper's batch).
"""
import argparse
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from mmengine.config import Config  # noqa: E402

import mmrefseg  # noqa: E402,F401  (registers the components)
from mmrefseg.utils.compat import apply_pkg_resources_fallback  # noqa: E402
from mmrefseg.engine.runner_utils import (add_launcher_args, build_runner,  # noqa: E402
                                          check_config_file, enable_amp,
                                          parse_launcher_args, set_work_dir,
                                          setup_cpu_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a referring segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or (no value) from the latest '
        'checkpoint in the work_dir')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='mixed-precision training (fp16 + loss scaling on CUDA, bf16 autocast on CPU)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by the effective batch size (processes × batch_size × '
        'accumulative_counts) over auto_scale_lr.base_batch_size')
    add_launcher_args(parser)
    return parse_launcher_args(parser, argv)


def enable_auto_scale_lr(cfg) -> None:
    """Turn on mmengine's linear lr scaling, counting gradient accumulation in the batch.

    mmengine's ``Runner.scale_lr`` multiplies the lr by ``world_size × batch_size /
    base_batch_size`` and ignores ``accumulative_counts``; dividing ``base_batch_size`` by
    it makes the ratio that of the effective batch (2 images × 4 steps on one GPU = 8 =
    the paper's batch: lr unchanged).
    """
    auto = cfg.get('auto_scale_lr', None)
    if not auto or 'base_batch_size' not in auto:
        raise RuntimeError('--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=N) in '
                           'the config (configs/_base_/schedules/schedule_35e.py has it).')
    accumulate = int(cfg.get('optim_wrapper', {}).get('accumulative_counts', 1) or 1)
    cfg.auto_scale_lr.enable = True
    cfg.auto_scale_lr.base_batch_size = auto['base_batch_size'] / accumulate


def main(argv=None):
    args = parse_args(argv)

    check_config_file(args.config)
    apply_pkg_resources_fallback()  # only acts without pkg_resources (setuptools >= 82)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    set_work_dir(cfg, args.work_dir, args.config)

    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)

    # resume: `--resume` = latest checkpoint in work_dir, `--resume CKPT` = that file
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f'--resume {args.resume}: no such checkpoint file.')
        cfg.resume = True
        cfg.load_from = args.resume

    setup_cpu_distributed(cfg, args.launcher)

    runner = build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    main()
