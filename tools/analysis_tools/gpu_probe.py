# Copyright (c) mmrefseg contributors. All rights reserved.
"""The checks of ``tools/gpu_check.sh``, one subcommand each (run them through the script).

    gpu_probe.py stack --out FILE       versions, GPU, whether mmcv has its CUDA ops
    gpu_probe.py ops --out FILE         nms / roi_align / point_sample on CUDA vs CPU
    gpu_probe.py tests --repo R --work W    pytest --cuda -m cuda tests
    gpu_probe.py dist --repo R --work W     1-GPU torchrun (NCCL, SyncBN) = 1 process
    gpu_probe.py bench --repo R --work W    Swin-B benchmark, batch 2 and 8, fp32/fp16/bf16
    gpu_probe.py summary --work W --out FILE --cuda 0|1

Each check prints ``DETAIL: <one line>`` last and exits 0 (PASS), 1 (FAIL) or 3 (SKIP);
its measurements go to ``<work>/<check>.json``, which ``summary`` gathers into one JSON.

``dist --backend gloo --norm BN`` runs the same four steps on a CPU (a dry run of the
check's own logic: 6 min on the 2-core dev machine under load, so not part of the suite;
measured Dec 2026: every metric equal, training losses equal).
"""
import argparse
import glob
import json
import os
import os.path as osp
import platform
import re
import shutil
import socket
import subprocess
import sys
import time

PASS, FAIL, SKIP = 0, 1, 3
TINY = 'configs/mpg_lqgnet_tiny_refer.py'
SWINB = 'configs/mpg_lqgnet_swinb_refcoco.py'
#: metric tolerance of the dist check, in percentage points: the same math runs, but
#: CUDA's atomic adds (bilinear upsampling backward, ...) sum in a varying order
DIST_TOL = 0.1


def _done(status, detail, record=None, out=None):
    if out and record is not None:
        with open(out, 'w') as f:
            json.dump(record, f, indent=2, default=str)
    print(f'DETAIL: {detail}', flush=True)
    sys.exit(status)


def _run(cmd, log, timeout, cwd=None, env=None):
    """Run ``cmd``; its output goes to ``log``; returns (exit code, output)."""
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, f'{e.stdout or ""}{e.stderr or ""}\ntimed out after {timeout} s'
    with open(log, 'w') as f:
        f.write(f'$ {" ".join(cmd)}  ({time.time() - t0:.0f} s, exit {rc})\n{out}')
    print(f'$ {" ".join(cmd)} -> exit {rc} ({time.time() - t0:.0f} s)', flush=True)
    return rc, out


def _tail(text, n=3):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return ' | '.join(lines[-n:])[-400:]


# --------------------------------------------------------------------------- stack
def _version(name):
    try:
        mod = __import__(name)
        return getattr(mod, '__version__', '?')
    except Exception as e:  # report, do not stop: the point is to say what is missing
        return f'not importable: {type(e).__name__}: {e}'


def mmcv_cuda_state():
    """(compiled CUDA version or None, message) of mmcv's compiled ops."""
    try:
        from mmcv.ops import get_compiler_version, get_compiling_cuda_version
    except Exception as e:
        return None, (f'mmcv ops not importable ({type(e).__name__}: {e}): mmcv was '
                      'installed without its compiled extension (mmcv._ext)')
    cuda = get_compiling_cuda_version()
    compiler = get_compiler_version()
    if cuda in (None, '', 'not available'):
        return None, (f'mmcv._ext was compiled WITHOUT CUDA ops (compiler {compiler}): '
                      'nms / roi_align on CUDA tensors cannot run. Rebuild mmcv 2.1.0 on the '
                      'GPU machine with nvcc: tools/gpu_setup.sh install --mmcv-cuda '
                      '(MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=<capability>)')
    return cuda, f'mmcv._ext compiled with CUDA {cuda}, {compiler}'


def cmd_stack(args):
    import torch
    info = dict(python=platform.python_version(), executable=sys.executable,
                torch=torch.__version__, torch_cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                else None,
                cuda_available=torch.cuda.is_available(), gpus=[])
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info['gpus'].append(dict(name=p.name, capability=f'{p.major}.{p.minor}',
                                 memory_gib=round(p.total_memory / 2**30, 1),
                                 multiprocessors=p.multi_processor_count))
    for exe, flag, key in (('nvidia-smi', '--query-gpu=driver_version --format=csv,noheader',
                            'driver'), ('nvcc', '--version', 'nvcc')):
        path = shutil.which(exe)
        if path:
            out = subprocess.run([path] + flag.split(), capture_output=True, text=True).stdout
            info[key] = out.strip().splitlines()[-1] if out.strip() else None
    for name in ('mmcv', 'mmengine', 'mmseg', 'transformers', 'tokenizers', 'numpy'):
        info[name] = _version(name)
    info['mmcv_cuda'], info['mmcv_ops'] = mmcv_cuda_state()
    missing = []
    for mod in ('mmcv._ext', 'mmseg.models', 'mmrefseg'):
        try:
            __import__(mod)
        except Exception as e:
            missing.append(f'{mod} ({type(e).__name__}: {e})')
    if not missing:
        import mmrefseg
        info['mmrefseg'] = osp.dirname(mmrefseg.__file__)
    gpu = (f'{info["gpus"][0]["name"]} ({info["gpus"][0]["memory_gib"]} GiB, sm '
           f'{info["gpus"][0]["capability"]})' if info['gpus'] else 'no CUDA device')
    detail = (f'{gpu}; python {info["python"]}, torch {info["torch"]} (CUDA '
              f'{info["torch_cuda"]}, cuDNN {info["cudnn"]}), mmcv {info["mmcv"]} '
              f'({info["mmcv_ops"]}), mmengine {info["mmengine"]}, mmseg {info["mmseg"]}, '
              f'transformers {info["transformers"]}')
    if missing:
        _done(FAIL, 'cannot import ' + '; '.join(missing) + ' -- run tools/gpu_setup.sh '
              'install first. ' + detail, info, args.out)
    _done(PASS, detail, info, args.out)


# --------------------------------------------------------------------------- ops
def cmd_ops(args):
    import torch
    cuda_ver, state = mmcv_cuda_state()
    results = dict(mmcv_ops=state)
    torch.manual_seed(0)
    xy = torch.rand(200, 2) * 50
    boxes = torch.cat([xy, xy + torch.rand(200, 2) * 30 + 1], 1)
    scores = torch.rand(200)
    feats = torch.randn(1, 4, 16, 16)
    rois = torch.tensor([[0, 1., 1., 9., 9.], [0, 4., 2., 14., 12.]])
    points = torch.rand(1, 50, 2)

    def nms_case(dev):
        from mmcv.ops import nms
        return nms(boxes.to(dev), scores.to(dev), 0.5)[1].cpu()

    def roi_align_case(dev):
        from mmcv.ops import roi_align
        return roi_align(feats.to(dev), rois.to(dev), (4, 4), 1.0, 2, 'avg', True).cpu()

    def point_sample_case(dev):
        from mmcv.ops import point_sample
        return point_sample(feats.to(dev), points.to(dev), align_corners=False).cpu()

    failed = []
    for name, case in (('nms', nms_case), ('roi_align', roi_align_case),
                       ('point_sample', point_sample_case)):
        try:
            ref, got = case('cpu'), case('cuda')
            ok = (torch.equal(ref, got) if ref.dtype == torch.long else
                  torch.allclose(ref, got, atol=1e-5, rtol=1e-4))
            results[name] = 'equal to the CPU result' if ok else 'DIFFERS from the CPU result'
        except Exception as e:
            ok = False
            results[name] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
        if not ok:
            failed.append(name)
    detail = '; '.join(f'{k}: {results[k]}' for k in ('nms', 'roi_align', 'point_sample'))
    if failed:
        _done(FAIL, f'{", ".join(failed)} failed on CUDA. {state}. {detail}', results,
              args.out)
    _done(PASS, f'{state}; {detail}', results, args.out)


# --------------------------------------------------------------------------- tests
def cmd_tests(args):
    import xml.etree.ElementTree as ET
    xml = osp.join(args.work, 'cuda_tests.xml')
    rc, out = _run([sys.executable, '-m', 'pytest', '--cuda', '-m', 'cuda', '-q', '-rA',
                    '-p', 'no:cacheprovider', f'--junitxml={xml}', 'tests'],
                   osp.join(args.work, 'logs', 'pytest_cuda.log'), args.timeout,
                   cwd=args.repo)
    cases = []
    if osp.isfile(xml):
        for case in ET.parse(xml).getroot().iter('testcase'):
            outcome = 'passed'
            for tag in ('failure', 'error', 'skipped'):
                node = case.find(tag)
                if node is not None:
                    outcome = dict(failure='failed', error='error', skipped='skipped')[tag]
                    outcome += ': ' + (node.get('message') or '')[:300]
            cases.append(dict(test=f'{case.get("classname")}::{case.get("name")}',
                              seconds=float(case.get('time', 0)), outcome=outcome))
    record = dict(exit_code=rc, tests=cases)
    n_pass = sum(c['outcome'] == 'passed' for c in cases)
    bad = [c['test'].split('.')[-1] for c in cases if c['outcome'] != 'passed']
    detail = f'{n_pass}/{len(cases)} CUDA tests passed' + (f'; not passed: {bad}' if bad
                                                           else '')
    if rc == 5 or not cases:
        _done(FAIL, f'no CUDA test ran (pytest exit {rc}): {_tail(out)}', record,
              osp.join(args.work, 'tests.json'))
    _done(PASS if rc == 0 else FAIL, detail, record, osp.join(args.work, 'tests.json'))


# --------------------------------------------------------------------------- dist
def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def test_metrics(work_dir):
    """Metrics of the last ``tools/test.py`` run in ``work_dir``: mmengine's LoggerHook
    dumps them to ``<work_dir>/<timestamp>/<timestamp>.json``."""
    files = sorted(f for f in glob.glob(osp.join(work_dir, '*', '*.json'))
                   if re.fullmatch(r'\d{8}_\d{6}\.json', osp.basename(f)))
    for path in reversed(files):
        with open(path) as f:
            lines = [json.loads(ln) for ln in f if ln.strip()]
        for rec in reversed(lines):
            metrics = {k: v for k, v in rec.items()
                       if isinstance(v, (int, float)) and re.search(r'IoU|P@|Prec', k)}
            if metrics:
                return metrics
    return {}


def train_losses(work_dir):
    out = []
    for path in glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')):
        with open(path) as f:
            out += [json.loads(ln) for ln in f if ln.strip()]
    return [r['loss'] for r in sorted(out, key=lambda r: r.get('step', 0)) if 'loss' in r]


def cmd_dist(args):
    record_file = osp.join(args.work, 'dist.json')
    args.work = osp.join(args.work, 'dist')
    os.makedirs(args.work, exist_ok=True)
    env = dict(os.environ, PORT=_free_port())
    opts = ['--cfg-options', f'model.backbone.norm_cfg.type={args.norm}',
            f'model.decode_head.norm_cfg.type={args.norm}',
            f'env_cfg.dist_cfg.backend={args.backend}']
    w = {k: osp.join(args.work, k) for k in ('dist_train', 'dist_test', 'train', 'test')}
    logs = {k: osp.join(args.work, f'{k}.log') for k in w}
    steps = [
        ('dist_train', ['bash', 'tools/dist_train.sh', TINY, '1', '--work-dir',
                        w['dist_train']] + opts),
        ('dist_test', ['bash', 'tools/dist_test.sh', TINY,
                       osp.join(w['dist_train'], 'iter_4.pth'), '1', '--work-dir',
                       w['dist_test']] + opts),
        ('train', [sys.executable, 'tools/train.py', TINY, '--work-dir', w['train']] + opts),
        ('test', [sys.executable, 'tools/test.py', TINY, osp.join(w['train'], 'iter_4.pth'),
                  '--work-dir', w['test']] + opts),
    ]
    record = dict(config=TINY, options=opts[1:], tolerance_pct_points=DIST_TOL)
    for name, cmd in steps:
        rc, out = _run(cmd, logs[name], args.timeout, cwd=args.repo, env=env)
        record[f'{name}_exit'] = rc
        if rc != 0:
            _done(FAIL, f'{name} failed (exit {rc}): {_tail(out)}', record,
                  record_file)
    with open(logs['dist_train']) as f:
        dist_log = f.read()
    record['backend'] = args.backend if args.backend in dist_log.lower() else None
    record['distributed'] = bool(re.search(r'Distributed training: True', dist_log))
    dumped = glob.glob(osp.join(w['dist_train'], '*.py'))
    record['norm_in_config'] = bool(dumped) and f"'{args.norm}'" in open(dumped[0]).read()
    a, b = test_metrics(w['dist_test']), test_metrics(w['test'])
    record.update(dist_metrics=a, single_metrics=b, dist_losses=train_losses(w['dist_train']),
                  single_losses=train_losses(w['train']))
    common = sorted(set(a) & set(b))
    if not common:
        _done(FAIL, f'no metrics to compare (dist: {sorted(a)}, single: {sorted(b)})', record,
              record_file)
    diff = max(abs(a[k] - b[k]) for k in common)
    record['max_metric_diff'] = diff
    losses = list(zip(record['dist_losses'], record['single_losses']))
    record['max_loss_diff'] = max((abs(x - y) for x, y in losses), default=None)
    key = next((k for k in common if 'oIoU' in k), common[0])
    detail = (f'torchrun 1 process ({record["backend"]}, {args.norm} in the config: '
              f'{record["norm_in_config"]}) vs no launcher: {key} {a[key]:.2f} vs '
              f'{b[key]:.2f}, max |diff| over {len(common)} metrics {diff:.3g} (tolerance '
              f'{DIST_TOL}), max training-loss diff {record["max_loss_diff"]}')
    ok = diff <= DIST_TOL and record['distributed'] and record['norm_in_config'] \
        and record['backend'] is not None
    _done(PASS if ok else FAIL, detail, record, record_file)


# --------------------------------------------------------------------------- bench
def cmd_bench(args):
    record_file = osp.join(args.work, 'bench.json')
    args.work = osp.join(args.work, 'bench')
    os.makedirs(args.work, exist_ok=True)
    script = 'tools/analysis_tools/benchmark.py'
    rc, out = _run([sys.executable, script, '--help'], osp.join(args.work, 'help.log'), 120,
                   cwd=args.repo)
    needed = ['--batch-size', '--precision', 'fp16', 'bf16', '--device', '--out-json']
    missing = [n for n in needed if n not in out]
    if rc != 0 or missing:
        _done(FAIL, f'{script} lacks the agreed interface ({missing or _tail(out)}): '
              '--precision fp32 fp16 bf16, --batch-size N, --train-batch-size N', {},
              record_file)
    rows, notes = [], []
    for batch in (2, 8):
        runs = [('fp32', 'fp16', 'bf16')]
        for attempt in (0, 1):
            failed = []
            for precisions in runs:
                tag = f'b{batch}_{"_".join(precisions)}'
                js = osp.join(args.work, f'{tag}.json')
                rc, out = _run([sys.executable, script, SWINB, '--device', 'cuda', '--shape',
                                '448', '--mode', 'both', '--precision', *precisions,
                                '--batch-size', str(batch), '--train-batch-size', str(batch),
                                '--warmup', '2', '--iters', '5', '--out-json', js],
                               osp.join(args.work, f'{tag}.log'), args.timeout, cwd=args.repo)
                if rc == 0 and osp.isfile(js):
                    with open(js) as f:
                        rows += json.load(f).get('results', [])
                elif re.search(r'out of memory|OutOfMemoryError', out):
                    failed.append(precisions)
                else:
                    _done(FAIL, f'batch {batch} {precisions}: exit {rc}: {_tail(out)}',
                          dict(results=rows), record_file)
            if not failed:
                break
            if attempt == 0 and len(runs[0]) > 1:  # OOM: find which precisions fit
                runs = [(p, ) for p in failed[0]]
            else:
                notes += [f'batch {batch} {p[0]}: out of memory' for p in failed]
                break
    fits8 = {r['precision']: True for r in rows if r.get('batch_size') == 8
             and r.get('mode') == 'train'}
    for note in notes:
        fits8[note.split()[2].rstrip(':')] = False
    record = dict(config=SWINB, shape=448, results=rows, oom=notes, batch8_train_fits=fits8)
    summary = ', '.join(
        f'{r.get("mode")} b{r.get("batch_size")} {r.get("precision")} '
        f'{r.get("images_per_s", 0):.1f} img/s {r.get("peak_mem_mb", 0) / 1024:.1f} GiB'
        for r in rows)
    _done(PASS, f'{summary}; batch 8 training fits: {fits8}', record,
          record_file)


# --------------------------------------------------------------------------- summary
def cmd_summary(args):
    checks = []
    with open(osp.join(args.work, 'results.tsv')) as f:
        for line in f:
            name, status, seconds, detail = line.rstrip('\n').split('\t', 3)
            entry = dict(name=name, status=status, seconds=int(seconds), detail=detail)
            data = osp.join(args.work, f'{name}.json')
            if osp.isfile(data):
                with open(data) as g:
                    entry['data'] = json.load(g)
            checks.append(entry)
    out = dict(cuda=bool(int(args.cuda)), host=platform.node(),
               date=time.strftime('%Y-%m-%d %H:%M:%S %Z'), checks=checks,
               failed=[c['name'] for c in checks if c['status'] == 'FAIL'])
    with open(args.out, 'w') as f:
        json.dump(out, f, indent=2, default=str)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='cmd', required=True)
    for name in ('stack', 'ops'):
        p = sub.add_parser(name)
        p.add_argument('--out', required=True)
    for name in ('tests', 'dist', 'bench'):
        p = sub.add_parser(name)
        p.add_argument('--repo', required=True)
        p.add_argument('--work', required=True)
        p.add_argument('--timeout', type=int, default=300, help='per subprocess')
        if name == 'dist':  # gloo + BN: the same check on a CPU (tests/test_tools)
            p.add_argument('--backend', default='nccl')
            p.add_argument('--norm', default='SyncBN')
    p = sub.add_parser('summary')
    p.add_argument('--work', required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--cuda', default='0')
    args = parser.parse_args(argv)
    globals()[f'cmd_{args.cmd}'](args)


if __name__ == '__main__':
    main()
