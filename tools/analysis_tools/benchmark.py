# Copyright (c) mmrefseg contributors. All rights reserved.
"""Inference speed, training-step time and peak memory of a referring segmentor.

    python tools/analysis_tools/benchmark.py CONFIG [CHECKPOINT] [--shape 448]
        [--warmup 1] [--iters 3] [--train-batch-size 2] [--mode both|inference|train]
        [--amp | --precision fp32 amp] [--device cpu|cuda] [--out-json FILE]

Synthetic inputs (random image, a sentence of ``--text-len`` tokens, a box mask), so no
dataset is needed. Inference = data preprocessor + ``predict`` (batch 1, results
resized to the input); training = ``model.train_step`` with the config's optimizer
(batch ``--train-batch-size``). Mixed precision (``amp``) is fp16 autocast + dynamic
loss scaling on CUDA and bf16 autocast on CPU. Peak memory: ``torch.cuda
.max_memory_allocated`` per phase on CUDA; on CPU the process's peak RSS
(``resource.getrusage``, cumulative: it includes model building and earlier phases).
The default run is short (1 warm-up + 3 timed iterations): the full Swin-B model takes
seconds per image on a CPU.
"""
import argparse
import json
import logging
import os.path as osp
import resource
import sys
import time
from contextlib import nullcontext

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402

import mmrefseg  # noqa: E402,F401
from mmrefseg.apis.measure import (build_model_for_measurement,  # noqa: E402
                                   dummy_data_batch, text_max_length)
from mmrefseg.engine.runner_utils import enable_amp  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Benchmark a referring segmentor')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint (optional: speed does not depend on the weights)')
    parser.add_argument('--shape', type=int, nargs='+', default=[448],
                        help='input size: H (square) or H W')
    parser.add_argument('--text-len', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=1, help='untimed iterations')
    parser.add_argument('--iters', type=int, default=3, help='timed iterations')
    parser.add_argument('--train-batch-size', type=int, default=2)
    parser.add_argument('--mode', choices=['both', 'inference', 'train'], default='both')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision only (same as --precision amp)')
    parser.add_argument('--precision', nargs='+', choices=['fp32', 'amp'], default=None,
                        help='precisions to run (default fp32)')
    parser.add_argument('--device', default=None,
                        help='cpu or cuda[:N] (default: cuda if available)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch\'s choice)')
    parser.add_argument('--out-json', help='write the results to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.iters < 1:
        parser.error('--warmup must be >= 0 and --iters >= 1')
    return args


def _sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def _peak_mem_mb(device):
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _autocast(device, amp):
    if not amp:
        return nullcontext()
    if device.startswith('cuda'):
        return torch.autocast('cuda', dtype=torch.float16)
    return torch.autocast('cpu', dtype=torch.bfloat16)


def _timeit(fn, warmup, iters, device):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench_inference(model, cfg, args, device, amp):
    shape = tuple(args.shape) if len(args.shape) == 2 else (args.shape[0], ) * 2
    batch = dummy_data_batch(1, shape, args.text_len, text_max_length(cfg), with_gt=False)
    model.eval()

    def step():
        with torch.no_grad(), _autocast(device, amp):
            model.test_step(batch)

    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    times = _timeit(step, args.warmup, args.iters, device)
    mean = sum(times) / len(times)
    return dict(mode='inference', precision='amp' if amp else 'fp32', batch_size=1,
                shape=list(shape), times_s=times, s_per_iter=mean, s_per_image=mean,
                images_per_s=1 / mean, peak_mem_mb=_peak_mem_mb(device))


def bench_train(model, cfg, args, device, amp):
    from mmengine.optim import build_optim_wrapper
    shape = tuple(args.shape) if len(args.shape) == 2 else (args.shape[0], ) * 2
    n = args.train_batch_size
    batch = dummy_data_batch(n, shape, args.text_len, text_max_length(cfg), with_gt=True)
    optim_cfg = cfg.optim_wrapper.copy()
    if amp:
        tmp = Config(dict(optim_wrapper=optim_cfg))
        if not device.startswith('cuda'):  # enable_amp picks by torch.cuda.is_available()
            tmp.optim_wrapper.type = 'CPUAmpOptimWrapper'
            tmp.optim_wrapper.dtype = 'bfloat16'
        else:
            enable_amp(tmp)
        optim_cfg = tmp.optim_wrapper
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # no per-parameter "paramwise_options" lines
    try:
        optim_wrapper = build_optim_wrapper(model, optim_cfg)
    finally:
        logger.setLevel(level)
    model.train()

    def step():
        model.train_step(batch, optim_wrapper)

    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    times = _timeit(step, args.warmup, args.iters, device)
    mean = sum(times) / len(times)
    return dict(mode='train', precision='amp' if amp else 'fp32', batch_size=n,
                shape=list(shape), times_s=times, s_per_iter=mean, s_per_image=mean / n,
                images_per_s=n / mean, peak_mem_mb=_peak_mem_mb(device))


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'benchmark: config {args.config!r} not found.')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise RuntimeError(f'benchmark: --device {device} but CUDA is not available; use '
                           '--device cpu.')
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precision or (['amp'] if args.amp else ['fp32'])
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    model = build_model_for_measurement(cfg, args.checkpoint, device)
    results = []
    for precision in precisions:
        amp = precision == 'amp'
        if args.mode in ('both', 'inference'):
            results.append(bench_inference(model, cfg, args, device, amp))
            print(f'inference {precision}: {results[-1]["s_per_image"]:.3f} s/image',
                  flush=True)
        if args.mode in ('both', 'train'):
            results.append(bench_train(model, cfg, args, device, amp))
            print(f'train {precision}: {results[-1]["s_per_iter"]:.3f} s/step', flush=True)

    env = dict(device=device, torch=torch.__version__, threads=torch.get_num_threads(),
               gpu=torch.cuda.get_device_name() if device.startswith('cuda') else None,
               warmup=args.warmup, iters=args.iters)
    mem = 'peak CUDA MB' if device.startswith('cuda') else 'peak RSS MB'
    line = '-' * 86
    print(line)
    print(f'{args.config} on {device} ({env["threads"]} threads), '
          f'{args.warmup} warm-up + {args.iters} timed iterations')
    print(f'{"mode":<10}{"prec.":<6}{"batch":>6}{"shape":>10}{"s/iter":>10}{"s/image":>10}'
          f'{"img/s":>9}{mem:>15}')
    print(line)
    for r in results:
        shp = 'x'.join(map(str, r['shape']))
        print(f'{r["mode"]:<10}{r["precision"]:<6}{r["batch_size"]:>6}{shp:>10}'
              f'{r["s_per_iter"]:>10.3f}{r["s_per_image"]:>10.3f}{r["images_per_s"]:>9.3f}'
              f'{r["peak_mem_mb"]:>15.0f}')
    print(line)
    out = dict(config=args.config, env=env, results=results)
    if args.out_json:
        with open(args.out_json, 'w') as f:
            json.dump(out, f, indent=2)
        print(f'saved {args.out_json}')
    return out


if __name__ == '__main__':
    main()
