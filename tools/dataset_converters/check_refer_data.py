# Copyright (c) mmrefseg contributors. All rights reserved.
"""Check a refer-API data root (RefCOCO / RefCOCO+ / RefCOCOg) before training.

    python tools/dataset_converters/check_refer_data.py data/refer
    python tools/dataset_converters/check_refer_data.py data/refer --datasets refcocog/umd
    python tools/dataset_converters/check_refer_data.py tests/data/tiny_refer --no-size-check

Verifies the layout (``<dataset>/instances.json``, ``<dataset>/refs(<split_by>).p``, the
image folder), counts refs / sentences / images per dataset and split, compares them with
the published sizes, and finds annotations / images the refs name but the files lack and
empty sentences. It also counts the images that carry an EXIF orientation tag (read from
the file headers): the annotations refer to the pixels as stored, and so do the datasets
(``color_ignore_orientation``), so these are reported, not problems. Prints a table; exits 1
with one line per problem (0 when all is well).
"""
import argparse
import os.path as osp
import sys
from collections import defaultdict

from mmrefseg.datasets.refcoco import (DEFAULT_IMG_DIR, KNOWN_PAIRS, load_instances,
                                       load_refs_pickle, ref_sentences, refer_paths)
from mmrefseg.datasets.transforms.loading import exif_orientation

#: Published sizes (DESIGN.md "Data facts"): totals (sentences, refs, images) and the
#: sentences per split.
PUBLISHED = {
    ('refcoco', 'unc'): dict(total=(142210, 50000, 19994), sentences=dict(
        train=120624, val=10834, testA=5657, testB=5095)),
    ('refcoco+', 'unc'): dict(total=(141564, 49856, 19992), sentences=dict(
        train=120191, val=10758, testA=5726, testB=4889)),
    ('refcocog', 'umd'): dict(total=(95010, 49822, 25799), sentences=dict(
        train=80512, val=4896, test=9602)),
    ('refcocog', 'google'): dict(total=(95010, 49822, 25799), sentences=dict(
        train=85474, val=9536)),
}
SPLIT_ORDER = ('train', 'val', 'test', 'testA', 'testB', 'testC')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('data_root', help='DATA_ROOT (holds <dataset>/ and images/)')
    parser.add_argument(
        '--datasets', nargs='+', metavar='DATASET/SPLIT_BY',
        help='which to check, e.g. refcoco/unc refcocog/umd (default: every known pair '
             'whose refs pickle exists)')
    parser.add_argument('--img-dir', default=DEFAULT_IMG_DIR,
                        help=f'image folder relative to DATA_ROOT (default {DEFAULT_IMG_DIR})')
    parser.add_argument('--no-size-check', action='store_true',
                        help='do not compare the counts with the published sizes')
    parser.add_argument('--decode-images', action='store_true',
                        help='also decode every image and check its size (slow)')
    return parser.parse_args(argv)


def check_pair(data_root, dataset, split_by, img_dir, size_check, decode_images):
    """Rows of the table, the problems and the notes for one (dataset, split_by)."""
    name = f'{dataset}/{split_by}'
    ann_path, ref_path = refer_paths(data_root, dataset, split_by)
    try:
        refs = load_refs_pickle(ref_path)
        instances = load_instances(ann_path)
    except (OSError, ValueError) as e:
        return [], [f'{name}: {e}'], []
    problems, notes = [], []
    anns = {a['id']: a for a in instances['annotations']}
    images = {im['id']: im for im in instances['images']}
    per_split = defaultdict(lambda: dict(refs=0, sentences=0, images=set()))
    files = {}
    for ref in refs:
        c = per_split[ref['split']]
        c['refs'] += 1
        c['sentences'] += len(ref['sentences'])
        c['images'].add(ref['image_id'])
        for sent_id, text in ref_sentences(ref):
            if not text.strip():
                problems.append(f'{name}: {ref_path}: ref_id {ref["ref_id"]} has an empty '
                                f'sentence (sent_id {sent_id}).')
        ann = anns.get(ref['ann_id'])
        if ann is None:
            problems.append(f'{name}: {ref_path}: ref_id {ref["ref_id"]} names ann_id '
                            f'{ref["ann_id"]}, which {ann_path} lacks (files from different '
                            'downloads?).')
            continue
        image = images.get(ann['image_id'])
        if image is None:
            problems.append(f'{name}: {ann_path}: annotation {ann["id"]} names image_id '
                            f'{ann["image_id"]}, not in its "images" list.')
            continue
        files[image['file_name']] = image
    folder = osp.join(data_root, img_dir)
    if not osp.isdir(folder):
        problems.append(f'{name}: image folder {folder} not found (COCO train2014 images go '
                        'there; see docs/dataset_prepare.md, or pass --img-dir).')
    else:
        missing = sorted(f for f in files if not osp.isfile(osp.join(folder, f)))
        if missing:
            shown = ', '.join(missing[:10]) + (' ...' if len(missing) > 10 else '')
            problems.append(f'{name}: {len(missing)} of {len(files)} images missing from '
                            f'{folder}: {shown}')
        notes += [f'{name}: {n}' for n in _exif_note(folder, files, missing)]
        if decode_images:
            problems += [f'{name}: {p}' for p in _decode_all(folder, files, missing)]

    published = PUBLISHED.get((dataset, split_by))
    rows = []
    for split in sorted(per_split, key=lambda s: (SPLIT_ORDER + (s,)).index(s)):
        c = per_split[split]
        pub = published['sentences'].get(split) if published else None
        rows.append([name, split, c['refs'], c['sentences'], len(c['images']),
                     '-' if pub is None else pub])
        if size_check and pub is not None and pub != c['sentences']:
            problems.append(f'{name}: split {split} has {c["sentences"]} sentences, the '
                            f'published size is {pub}.')
    total = (sum(c['sentences'] for c in per_split.values()), len(refs),
             len({r['image_id'] for r in refs}))
    rows.append([name, 'total', total[1], total[0], total[2],
                 '-' if not published else '{} / {} / {}'.format(*published['total'])])
    if size_check and published and total != published['total']:
        problems.append(f'{name}: {total[0]} sentences / {total[1]} refs / {total[2]} images; '
                        'published: {} / {} / {}.'.format(*published['total']))
    return rows, problems, notes


def _exif_note(folder, files, missing):
    """One note counting the images with an EXIF orientation tag other than 1."""
    skip = set(missing)
    tags = defaultdict(list)
    for file_name in files:
        if file_name not in skip:
            tag = exif_orientation(osp.join(folder, file_name))
            if tag != 1:
                tags[tag].append(file_name)
    if not tags:
        return
    n = sum(len(v) for v in tags.values())
    detail = ', '.join(f'{k}: {len(v)}' for k, v in sorted(tags.items()))
    shown = ', '.join(sorted(f for v in tags.values() for f in v)[:5])
    yield (f'{n} of {len(files) - len(skip)} images carry an EXIF orientation tag other '
           f'than 1 (tag: count {detail}; e.g. {shown}). Their annotations refer to the '
           "pixels as stored, which is how the datasets read them (color_type="
           "'color_ignore_orientation'); a viewer shows them rotated.")


def _decode_all(folder, files, missing):
    import cv2
    skip = set(missing)
    for file_name, image in files.items():
        if file_name in skip:
            continue
        path = osp.join(folder, file_name)
        # as stored (the annotations' pixels), not rotated by an EXIF orientation tag
        img = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            yield f'{path} cannot be decoded (corrupt?): re-download it.'
        elif img.shape[:2] != (image['height'], image['width']):
            yield (f'{path} is {img.shape[0]}×{img.shape[1]}, instances.json says '
                   f'{image["height"]}×{image["width"]}.')


def main(argv=None) -> int:
    args = parse_args(argv)
    root = args.data_root
    if not osp.isdir(root):
        print(f'ERROR: data root {root} is not a directory. Expected DATA_ROOT/<dataset>/'
              'instances.json, refs(<split_by>).p and DATA_ROOT/images/mscoco/images/'
              'train2014 (docs/dataset_prepare.md).', file=sys.stderr)
        return 1
    if args.datasets:
        pairs = []
        for spec in args.datasets:
            parts = spec.replace(':', '/').split('/')
            if len(parts) != 2 or tuple(parts) not in KNOWN_PAIRS:
                print(f'ERROR: unknown --datasets entry {spec!r}; known: '
                      f'{" ".join(f"{d}/{s}" for d, s in KNOWN_PAIRS)}.', file=sys.stderr)
                return 1
            pairs.append(tuple(parts))
    else:
        pairs = [p for p in KNOWN_PAIRS if osp.isfile(refer_paths(root, *p)[1])]
        if not pairs:
            print(f'ERROR: no refer dataset under {root}: expected e.g. '
                  f'{refer_paths(root, "refcoco", "unc")[1]} (docs/dataset_prepare.md).',
                  file=sys.stderr)
            return 1
    from prettytable import PrettyTable
    table = PrettyTable(['dataset', 'split', 'refs', 'sentences', 'images',
                         'published sentences (total: sent. / refs / images)'])
    problems, notes = [], []
    for dataset, split_by in pairs:
        rows, found, noted = check_pair(root, dataset, split_by, args.img_dir,
                                        not args.no_size_check, args.decode_images)
        for row in rows:
            table.add_row(row)
        problems += found
        notes += noted
    print(table.get_string())
    for note in notes:
        print(f'note: {note}')
    if problems:
        print(f'\n{len(problems)} problem(s):', file=sys.stderr)
        for p in problems:
            print(f'  - {p}', file=sys.stderr)
        return 1
    print('\nOK: layout, annotations and images are consistent.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
