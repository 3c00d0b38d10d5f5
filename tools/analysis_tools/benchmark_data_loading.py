# Copyright (c) mmrefseg contributors. All rights reserved.
"""Time and memory of building a RefCOCO-size data list (RefCOCODataset construction).

    python tools/analysis_tools/benchmark_data_loading.py            # synthetic, full size
    python tools/analysis_tools/benchmark_data_loading.py --data-root data/refer \
        --dataset refcoco --split-by unc                               # real data

Without ``--data-root`` a synthetic refer-format dataset of RefCOCO's size is written to a
temporary folder first (default 50,000 refs / 142,000 sentences / 20,000 images /
197,000 annotations with 24-point polygons, about RefCOCO's ``instances.json``). Each
measurement runs in a fresh process: wall time of ``RefCOCODataset(...)`` (read the pickle
and ``instances.json``, build and serialize the data list) and the process's peak RSS,
next to the RSS after the imports alone. Images are not read.
"""
import argparse
import json
import os
import os.path as osp
import pickle
import random
import shutil
import subprocess
import sys
import tempfile

SPLITS = (('train', 0.848), ('val', 0.076), ('testA', 0.040), ('testB', 0.036))

CHILD = r'''
import json, resource, sys, time
def rss_mb():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS'):
                return int(line.split()[1]) / 1024
import mmrefseg  # noqa
from mmrefseg.datasets import RefCOCODataset
base = rss_mb()
kw = json.loads(sys.argv[1])
t, c = time.perf_counter(), time.process_time()
ds = RefCOCODataset(**kw)
build, cpu = time.perf_counter() - t, time.process_time() - c
t = time.perf_counter()
n = min(len(ds), 20000)
for i in range(n):
    ds.get_data_info(i)
access = (time.perf_counter() - t) / n * 1e6
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(items=len(ds), build_s=build, cpu_s=cpu, access_us=access,
                      rss_after_import_mb=base, rss_now_mb=rss_mb(), peak_rss_mb=peak)))
'''


def make_synthetic(root, n_refs, n_sents, n_images, n_anns, n_points, seed=0):
    """Write ``root/refcoco/{instances.json, refs(unc).p}`` of the requested size."""
    rng = random.Random(seed)
    os.makedirs(osp.join(root, 'refcoco'), exist_ok=True)
    images = [dict(id=i, file_name=f'COCO_train2014_{i:012d}.jpg', height=480, width=640)
              for i in range(1, n_images + 1)]
    anns = []
    for a in range(1, n_anns + 1):
        cx, cy, r = rng.uniform(50, 590), rng.uniform(50, 430), rng.uniform(10, 50)
        poly = []
        for _ in range(n_points):
            poly += [round(cx + rng.uniform(-r, r), 2), round(cy + rng.uniform(-r, r), 2)]
        anns.append(dict(id=a, image_id=(a - 1) % n_images + 1, category_id=1, iscrowd=0,
                         area=round(3.14 * r * r, 2), bbox=[cx - r, cy - r, 2 * r, 2 * r],
                         segmentation=[poly]))
    with open(osp.join(root, 'refcoco', 'instances.json'), 'w') as f:
        json.dump(dict(images=images, annotations=anns, categories=[dict(id=1, name='x')]), f)
    # sentences per ref: n_sents // n_refs, plus one for the first n_sents % n_refs refs
    refs, sent_id = [], 0
    ann_ids = rng.sample(range(1, n_anns + 1), n_refs)
    bounds = []
    acc = 0
    for split, share in SPLITS:
        acc += share
        bounds.append((round(acc * n_refs), split))
    for ref_id, ann_id in enumerate(ann_ids):
        split = next((s for b, s in bounds if ref_id < b), 'train')
        k = n_sents // n_refs + (ref_id < n_sents % n_refs)
        sents = []
        for _ in range(k):
            words = [rng.choice(('man', 'left', 'the', 'red', 'shirt', 'dog', 'on', 'right'))
                     for _ in range(rng.randint(2, 9))]
            sents.append(dict(tokens=words, raw=' '.join(words), sent=' '.join(words),
                              sent_id=sent_id))
            sent_id += 1
        image_id = (ann_id - 1) % n_images + 1
        refs.append(dict(ref_id=ref_id, ann_id=ann_id, image_id=image_id, category_id=1,
                         split=split, sent_ids=[s['sent_id'] for s in sents], sentences=sents,
                         file_name=f'COCO_train2014_{image_id:012d}_{ann_id}.jpg'))
    with open(osp.join(root, 'refcoco', 'refs(unc).p'), 'wb') as f:
        pickle.dump(refs, f, protocol=2)
    return sum(len(r['sentences']) for r in refs)


def measure(kwargs):
    out = subprocess.run([sys.executable, '-c', CHILD, json.dumps(kwargs)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data-root', help='real refer data root (default: synthetic)')
    p.add_argument('--dataset', default='refcoco')
    p.add_argument('--split-by', default='unc')
    p.add_argument('--refs', type=int, default=50000)
    p.add_argument('--sentences', type=int, default=142000)
    p.add_argument('--images', type=int, default=20000)
    p.add_argument('--anns', type=int, default=197000)
    p.add_argument('--points', type=int, default=24, help='points per synthetic polygon')
    p.add_argument('--splits', nargs='+', default=['train', 'val'])
    p.add_argument('--keep', help='write the synthetic data here and keep it')
    args = p.parse_args(argv)

    tmp = None
    root = args.data_root
    if root is None:
        root = args.keep or tempfile.mkdtemp(prefix='refer_bench_')
        tmp = None if args.keep else root
        n = make_synthetic(root, args.refs, args.sentences, args.images, args.anns,
                           args.points)
        size = os.path.getsize(osp.join(root, 'refcoco', 'instances.json')) / 2**20
        print(f'synthetic data in {root}: {args.refs} refs, {n} sentences, {args.images} '
              f'images, {args.anns} annotations (instances.json {size:.0f} MB)')
    try:
        print(f'{"split":>6} {"mode":>6} {"items":>7} {"build s":>8} {"CPU s":>6} {"get µs":>7} '
              f'{"RSS import MB":>13} {"peak RSS MB":>11}')
        for split in args.splits:
            for mode in ('random', 'all'):
                r = measure(dict(data_root=root, dataset=args.dataset,
                                 split_by=args.split_by, split=split, sentence_mode=mode))
                print(f'{split:>6} {mode:>6} {r["items"]:>7} {r["build_s"]:>8.1f} '
                      f'{r["cpu_s"]:>6.1f} {r["access_us"]:>7.1f} '
                      f'{r["rss_after_import_mb"]:>13.0f} {r["peak_rss_mb"]:>11.0f}')
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
