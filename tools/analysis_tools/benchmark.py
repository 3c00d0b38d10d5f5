# Copyright (c) mmrefseg contributors. All rights reserved.
"""Speed, memory and share of the hardware's peak of a referring segmentor; optionally
side by side with another commit.

    python tools/analysis_tools/benchmark.py CONFIG [CHECKPOINT] [--shape 448]
        [--mode both|inference|train] [--precision fp32 fp16 bf16 amp]
        [--batch-size 1] [--train-batch-size 2] [--warmup 1] [--iters 3] [--repeat 1]
        [--device cpu|cuda] [--denormals flush keep] [--compile]
        [--ref REV | --ref-path DIR] [--out-json FILE] [--cfg-options k=v ...]

Measure on a shared machine under ``flock /tmp/mmrefseg-bench.lock`` (docs/benchmark.md).

What one *phase* (a commit × precision × mode × denormal setting) measures, in a process of
its own (``--in-process`` runs them in this one: no memory figure on CPU, no ``--ref``):

* the **matmul peak** of its precision in that process: the best FLOP/s of an N×N×N
  ``torch.mm`` over ``--peak-sizes`` (default 1024, 2048, 4096), in the phase's dtype
  (fp32, fp16, bf16; ``amp`` = bf16 on CPU, fp16 on CUDA);
* the model's **FLOPs per iteration**: ``torch.utils.flop_counter.FlopCounterMode`` with the
  rules of ``get_flops.py`` (matmul, convolution and attention; 2 FLOPs per multiply-add;
  element-wise ops, norms, softmax and resizing are not counted), over one untimed
  iteration: inference = the forward of ``test_step``; training = forward + backward of
  ``train_step`` (the backward FLOPs as executed, recomputation included; AdamW's update
  is element-wise and not counted);
* the **time** of ``--iters`` iterations after ``--warmup`` untimed ones: inference =
  data preprocessor + ``predict`` (``test_step``, batch ``--batch-size``) under
  ``torch.no_grad``; training = ``train_step`` (forward, backward, the config's optimizer;
  batch ``--train-batch-size``). Mixed precision = autocast in that dtype, the training
  step through ``enable_amp`` (as ``tools/train.py --amp``: fp16 with the loss scaler);
* the **achieved FLOP/s** = FLOPs per iteration / mean time, and its share of the peak;
* the **peak memory**: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the process's
  peak RSS minus its RSS after the imports (model, optimizer state, activations; one
  process per phase, so phases do not add up).

Random weights and a synthetic batch (random image, a sentence of ``--text-len`` tokens, a
box mask): no dataset, no downloads. ``--denormals flush`` runs the phase with
``torch.set_flush_denormal(True)``, ``keep`` without (both: two phases).

``--ref REV`` times the commit REV too, from a ``git worktree`` beside this checkout
(``<checkout>-bench-<rev>``, created on first use), with the same harness, config path,
options and environment; ``--ref-path DIR`` uses an existing checkout. Phases of the two
run interleaved (ref, this, this, ref, ... over ``--repeat`` rounds) and the report gives
every figure as the ratio this / ref, per round and its median.
"""
import argparse
import importlib.util
import json
import logging
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

THIS_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PRECISIONS = ('fp32', 'fp16', 'bf16', 'amp')


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
    parser.add_argument('--repeat', type=int, default=1,
                        help='rounds of every phase (interleaved with --ref)')
    parser.add_argument('--batch-size', type=int, default=1, help='inference batch')
    parser.add_argument('--train-batch-size', type=int, default=2)
    parser.add_argument('--mode', choices=['both', 'inference', 'train'], default='both')
    parser.add_argument('--amp', action='store_true', help='same as --precision amp')
    parser.add_argument('--precision', nargs='+', choices=PRECISIONS, default=None,
                        help='precisions to run (default fp32); amp = bf16 on CPU, fp16 '
                        'on CUDA')
    parser.add_argument('--device', default=None,
                        help='cpu or cuda[:N] (default: cuda if available)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch\'s choice)')
    parser.add_argument('--denormals', nargs='+', choices=['flush', 'keep'],
                        default=['flush'], help='torch.set_flush_denormal(True) (flush) '
                        'or not (keep); both = two phases (default flush)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile train_step / test_step (as mmengine\'s '
                        'compile=True); the compilation runs in the warm-up')
    parser.add_argument('--peak-sizes', type=int, nargs='+', default=[1024, 2048, 4096],
                        help='N of the N×N×N matmuls of the peak (best one counts)')
    parser.add_argument('--no-peak', action='store_true', help='skip the matmul peak')
    parser.add_argument('--no-flops', action='store_true', help='skip the FLOP count')
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument('--ref', help='git revision to time side by side (git worktree)')
    ref.add_argument('--ref-path', help='checkout of another commit to time side by side')
    parser.add_argument('--in-process', action='store_true',
                        help='run the phases in this process (no CPU memory figure)')
    parser.add_argument('--out-json', help='write the results to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action='append', default=None,
                        help='override config settings, xxx=yyy')
    parser.add_argument('--worker', help=argparse.SUPPRESS)  # internal: one phase
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.iters < 1 or args.repeat < 1:
        parser.error('--warmup must be >= 0, --iters and --repeat >= 1')
    if args.in_process and (args.ref or args.ref_path):
        parser.error('--ref / --ref-path need a process per phase (drop --in-process)')
    args.precision = args.precision or (['amp'] if args.amp else ['fp32'])
    args.cfg_options = [o for group in (args.cfg_options or []) for o in group]
    return args


# ------------------------------------------------------------------ one phase (worker side)
def _import_target(root):
    """Put ``root`` (the checkout to measure) first on sys.path and import its package."""
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    import mmrefseg  # noqa: F401
    if osp.dirname(osp.dirname(osp.abspath(mmrefseg.__file__))) != osp.abspath(root):
        raise RuntimeError(f'benchmark: imported mmrefseg from {mmrefseg.__file__}, not from '
                           f'{root}; run without another mmrefseg on PYTHONPATH.')


def _flop_counter():
    """This checkout's FLOP counter (its measure.py, loaded by path: the same rules for
    every commit measured)."""
    path = osp.join(THIS_REPO, 'mmrefseg', 'apis', 'measure.py')
    spec = importlib.util.spec_from_file_location('_mmrefseg_bench_measure', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.flop_counter()


def _rss_mb():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return 0.0


def autocast_dtype(precision, device):
    """torch dtype of a precision (None = fp32)."""
    import torch
    if precision == 'fp32':
        return None
    if precision == 'amp':
        return torch.float16 if device.startswith('cuda') else torch.bfloat16
    return dict(fp16=torch.float16, bf16=torch.bfloat16)[precision]


def matmul_peak(dtype, device, sizes, min_time=0.3):
    """Best FLOP/s of N×N×N ``torch.mm`` over ``sizes`` → (GFLOP/s, {N: GFLOP/s})."""
    import torch
    dtype = dtype or torch.float32
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        c = torch.mm(a, b)
        _sync(device)
        reps, t0 = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=c)
            reps += 1
            _sync(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time and reps >= 2:
                break
        per_size[n] = 2 * n**3 * reps / elapsed / 1e9
        del a, b, c
    return max(per_size.values()), per_size


def _sync(device):
    import torch
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def _build(spec):
    """The target's config, model and synthetic batches."""
    from mmengine.config import Config, DictAction
    from mmrefseg.apis.measure import build_model_for_measurement
    cfg = Config.fromfile(spec['config'])
    if spec['cfg_options']:
        parser = argparse.ArgumentParser()
        parser.add_argument('--o', nargs='+', action=DictAction)
        cfg.merge_from_dict(parser.parse_args(['--o'] + spec['cfg_options']).o)
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model = build_model_for_measurement(cfg, spec['checkpoint'], spec['device'])
    finally:
        logger.setLevel(level)
    return cfg, model


def _optim_wrapper(model, cfg, precision, device):
    """The config's optimizer, mixed precision as ``tools/train.py --amp`` sets it."""
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper
    tmp = Config(dict(optim_wrapper=cfg.optim_wrapper.copy()))
    dtype = autocast_dtype(precision, device)
    if dtype is not None:
        from mmrefseg.engine.runner_utils import enable_amp
        tmp.amp_dtype = str(dtype).replace('torch.', '')
        enable_amp(tmp)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # no per-parameter "paramwise_options" lines
    try:
        wrapper = build_optim_wrapper(model, tmp.optim_wrapper)
    finally:
        logger.setLevel(level)
    got = getattr(wrapper, 'cast_dtype', None)
    if dtype is not None and got is not None and got != dtype:
        raise RuntimeError(f'this commit\'s --amp trains in {got}, not {dtype}')
    return wrapper


def run_phase(spec):
    """Run one phase in this process; returns its result dict."""
    import torch
    device, precision, mode = spec['device'], spec['precision'], spec['mode']
    torch.set_flush_denormal(spec['denormals'] == 'flush')
    if spec['threads']:
        torch.set_num_threads(spec['threads'])
    from mmrefseg.apis.measure import dummy_data_batch, text_max_length
    rss0 = _rss_mb()
    res = dict(commit=spec['name'], mode=mode, precision=precision,
               denormals=spec['denormals'], compile=spec['compile'])
    dtype = autocast_dtype(precision, device)
    if not spec['no_peak']:
        res['peak_gflops'], res['peak_gflops_per_size'] = matmul_peak(
            dtype, device, spec['peak_sizes'])
    cfg, model = _build(spec)
    shape = tuple(spec['shape'])
    n = spec['train_batch_size'] if mode == 'train' else spec['batch_size']
    batch = dummy_data_batch(n, shape, spec['text_len'], text_max_length(cfg),
                             with_gt=mode == 'train')
    amp = (torch.autocast(device.split(':')[0], dtype=dtype) if dtype is not None else
           nullcontext())
    if mode == 'train':
        wrapper = _optim_wrapper(model, cfg, precision, device)
        model.train()
        calls = [model.train_step]

        def step():
            calls[-1](batch, wrapper)
    else:
        model.eval()
        calls = [model.test_step]

        def step():
            with torch.no_grad(), amp:
                calls[-1](batch)

    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    if not spec['no_flops']:
        counter = _flop_counter()
        with counter:
            step()
        res['gflop_per_iter'] = counter.get_total_flops() / 1e9
    if spec['compile']:
        calls.append(torch.compile(calls[0]))
    t0 = time.perf_counter()
    for _ in range(spec['warmup']):
        step()
    _sync(device)
    res['warmup_s'] = time.perf_counter() - t0
    times, cpu_times = [], []
    for _ in range(spec['iters']):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    mean = sum(times) / len(times)
    res.update(batch_size=n, shape=list(shape), times_s=times, s_per_iter=mean,
               s_per_image=mean / n, images_per_s=n / mean, cpu_times_s=cpu_times,
               cpu_s_per_iter=sum(cpu_times) / len(cpu_times))
    if 'gflop_per_iter' in res:
        res['achieved_gflops'] = res['gflop_per_iter'] / mean
        if 'peak_gflops' in res:
            res['share_of_peak'] = res['achieved_gflops'] / res['peak_gflops']
    if device.startswith('cuda'):
        res['peak_mem_mb'] = torch.cuda.max_memory_allocated() / 2**20
    elif spec['isolated']:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        res['peak_mem_mb'] = peak - rss0
        res['rss_imports_mb'] = rss0
    return res


def _worker_main(spec_file):
    with open(spec_file) as f:
        spec = json.load(f)
    _import_target(spec['root'])
    try:
        res = run_phase(spec)
    except Exception as err:  # reported in the table, the other phases go on
        import traceback
        traceback.print_exc()
        res = dict(commit=spec['name'], mode=spec['mode'], precision=spec['precision'],
                   denormals=spec['denormals'], error=f'{type(err).__name__}: {err}')
    with open(spec['result_file'], 'w') as f:
        json.dump(res, f)


# ------------------------------------------------------------------ orchestration
def ref_worktree(rev, repo=THIS_REPO):
    """A ``git worktree`` of ``rev`` beside ``repo`` (created if missing) → its path."""
    def git(*cmd, cwd=repo):
        return subprocess.run(['git', *cmd], cwd=cwd, check=True, capture_output=True,
                              text=True).stdout.strip()

    try:
        sha = git('rev-parse', '--verify', f'{rev}^{{commit}}')
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        raise RuntimeError(f'benchmark: --ref {rev!r} is not a commit of the git checkout '
                           f'{repo} ({err}); use --ref-path DIR for a plain folder.') from err
    path = f'{repo.rstrip(os.sep)}-bench-{sha[:10]}'
    if osp.isdir(path):
        if git('rev-parse', 'HEAD', cwd=path) != sha:
            raise RuntimeError(f'benchmark: {path} exists but is not at {sha}; remove it '
                               f'(git worktree remove {path}).')
    else:
        git('worktree', 'add', '--detach', path, sha)
    return path


def _target_config(config, root):
    """The config path inside another checkout (same path relative to the repo)."""
    absolute = osp.abspath(config)
    if absolute.startswith(THIS_REPO + os.sep):
        return osp.join(root, osp.relpath(absolute, THIS_REPO))
    return absolute


def _phases(args, targets):
    modes = ['inference', 'train'] if args.mode == 'both' else [args.mode]
    phases = []
    for rnd in range(args.repeat):
        for precision in args.precision:
            for mode in modes:
                for denormals in args.denormals:
                    order = targets if rnd % 2 == 0 else targets[::-1]
                    for name, root in order:
                        phases.append(dict(name=name, root=root, round=rnd,
                                           precision=precision, mode=mode,
                                           denormals=denormals))
    return phases


def _run_isolated(spec, env):
    with tempfile.TemporaryDirectory() as tmp:
        spec = dict(spec, result_file=osp.join(tmp, 'result.json'))
        spec_file = osp.join(tmp, 'spec.json')
        with open(spec_file, 'w') as f:
            json.dump(spec, f)
        proc = subprocess.run([sys.executable, osp.abspath(__file__), spec['config'],
                               '--worker', spec_file], env=env, cwd=spec['root'],
                              capture_output=True, text=True)
        if osp.isfile(spec['result_file']):
            with open(spec['result_file']) as f:
                return json.load(f)
        tail = (proc.stderr or proc.stdout)[-2000:]
        return dict(commit=spec['name'], mode=spec['mode'], precision=spec['precision'],
                    denormals=spec['denormals'],
                    error=f'worker exited with {proc.returncode}: {tail}')


def _fmt(value, spec):
    return format(value, spec) if isinstance(value, (int, float)) else '-'


def _ratios(results, ref_name):
    """this / ref per (precision, mode, denormals) and round, and the median."""
    table = []
    keys = sorted({(r['precision'], r['mode'], r['denormals']) for r in results},
                  key=lambda k: (PRECISIONS.index(k[0]), k[1], k[2]))
    for key in keys:
        rows = {}
        for r in results:
            if (r['precision'], r['mode'], r['denormals']) == key and 'error' not in r:
                rows.setdefault(r['round'], {})[r['commit']] = r
        time_r, cpu_r, mem_r = [], [], []
        for pair in rows.values():
            if 'this' in pair and ref_name in pair:
                time_r.append(pair['this']['s_per_iter'] / pair[ref_name]['s_per_iter'])
                cpu_r.append(pair['this']['cpu_s_per_iter'] / pair[ref_name]['cpu_s_per_iter'])
                if 'peak_mem_mb' in pair['this'] and 'peak_mem_mb' in pair[ref_name]:
                    mem_r.append(pair['this']['peak_mem_mb'] / pair[ref_name]['peak_mem_mb'])
        if time_r:
            table.append(dict(precision=key[0], mode=key[1], denormals=key[2],
                              time_ratios=time_r, time_ratio=statistics.median(time_r),
                              cpu_ratios=cpu_r, cpu_ratio=statistics.median(cpu_r),
                              mem_ratios=mem_r,
                              mem_ratio=statistics.median(mem_r) if mem_r else None))
    return table


def _print_report(args, env, results, ratios):
    mem = 'peak CUDA MB' if env['device'].startswith('cuda') else 'peak RSS MB'
    line = '-' * 118
    print(line)
    print(f'{args.config} on {env["device"]} ({env["threads"]} threads, torch '
          f'{env["torch"]}), {args.warmup} warm-up + {args.iters} timed iterations, '
          f'{args.repeat} round(s)')
    print(f'{"commit":<12}{"rnd":>4} {"mode":<10}{"prec.":<6}{"denorm":<7}{"batch":>5}'
          f'{"s/iter":>9}{"img/s":>8}{"GFLOP/it":>10}{"GFLOP/s":>9}{"peak":>9}{"share":>7}'
          f'{mem:>14}')
    print(line)
    for r in results:
        if 'error' in r:
            print(f'{r["commit"]:<12}{r.get("round", 0):>4} {r["mode"]:<10}'
                  f'{r["precision"]:<6}{r["denormals"]:<7} ERROR {r["error"][-300:]}')
            continue
        share = r.get('share_of_peak')
        print(f'{r["commit"]:<12}{r.get("round", 0):>4} {r["mode"]:<10}{r["precision"]:<6}'
              f'{r["denormals"]:<7}{r["batch_size"]:>5}{r["s_per_iter"]:>9.3f}'
              f'{r["images_per_s"]:>8.3f}{_fmt(r.get("gflop_per_iter"), ".1f"):>10}'
              f'{_fmt(r.get("achieved_gflops"), ".1f"):>9}'
              f'{_fmt(r.get("peak_gflops"), ".0f"):>9}'
              f'{(_fmt(100 * share, ".1f") + "%") if share is not None else "-":>7}'
              f'{_fmt(r.get("peak_mem_mb"), ".0f"):>14}')
    print(line)
    if ratios:
        print(f'this / {ratios[0]["ref"]} (median over rounds; < 1 = this is faster / '
              f'smaller)')
        for t in ratios:
            mem_ratio = _fmt(t['mem_ratio'], '.3f')
            print(f'  {t["mode"]:<10}{t["precision"]:<6}{t["denormals"]:<7} time '
                  f'{t["time_ratio"]:.3f} {[round(x, 3) for x in t["time_ratios"]]}  CPU '
                  f'time {t["cpu_ratio"]:.3f} {[round(x, 3) for x in t["cpu_ratios"]]}  '
                  f'peak memory {mem_ratio}')
        print(line)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return _worker_main(args.worker)
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'benchmark: config {args.config!r} not found.')
    import torch
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise RuntimeError(f'benchmark: --device {device} but CUDA is not available; use '
                           '--device cpu.')
    shape = args.shape * 2 if len(args.shape) == 1 else args.shape[:2]
    targets = [('this', THIS_REPO)]
    ref_name = None
    if args.ref or args.ref_path:
        root = ref_worktree(args.ref) if args.ref else osp.abspath(args.ref_path)
        if not osp.isdir(osp.join(root, 'mmrefseg')):
            raise FileNotFoundError(f'benchmark: {root} is not an mmrefseg checkout.')
        ref_name = 'ref'
        targets = [(ref_name, root), ('this', THIS_REPO)]
    base = dict(checkpoint=args.checkpoint, device=device, shape=shape,
                text_len=args.text_len, warmup=args.warmup, iters=args.iters,
                batch_size=args.batch_size, train_batch_size=args.train_batch_size,
                threads=args.threads, compile=args.compile, peak_sizes=args.peak_sizes,
                no_peak=args.no_peak, no_flops=args.no_flops, cfg_options=args.cfg_options,
                isolated=not args.in_process)
    env_vars = dict(os.environ)
    env_vars.pop('PYTHONPATH', None)  # the worker puts its checkout first itself
    results = []
    if args.in_process:
        _import_target(THIS_REPO)
    for phase in _phases(args, targets):
        spec = dict(base, **phase, config=_target_config(args.config, phase['root']))
        if args.in_process:
            res = run_phase(spec)
        else:
            res = _run_isolated(spec, env_vars)
        res['round'] = phase['round']
        results.append(res)
        status = res.get('error', f'{res.get("s_per_iter", 0):.3f} s/iter')
        print(f'[{phase["name"]} round {phase["round"]}] {phase["mode"]} '
              f'{phase["precision"]} denormals={phase["denormals"]}: {status}', flush=True)
    ratios = _ratios(results, ref_name) if ref_name else []
    for t in ratios:
        t['ref'] = args.ref or args.ref_path
    env = dict(device=device, torch=torch.__version__,
               threads=args.threads or torch.get_num_threads(),
               gpu=torch.cuda.get_device_name(device) if device.startswith('cuda') else None,
               cpu=_cpu_name(), warmup=args.warmup, iters=args.iters, repeat=args.repeat,
               ref=args.ref or args.ref_path, this=THIS_REPO, argv=sys.argv[1:])
    _print_report(args, env, results, ratios)
    out = dict(config=args.config, env=env, results=results, ratios=ratios)
    if args.out_json:
        with open(args.out_json, 'w') as f:
            json.dump(out, f, indent=2)
        print(f'saved {args.out_json}')
    return out


def _cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


if __name__ == '__main__':
    main()
