# Copyright (c) mmrefseg contributors. All rights reserved.
"""RefShapes: a synthetic referring-segmentation dataset generated in code.

No download, no GPU: every image is drawn from a seed, so a new user can check the whole
pipeline (transforms, model, metric, tools) on a laptop CPU. Each *item* is one object of a
scene plus one sentence that identifies it uniquely, in exactly the item format of
:class:`RefCOCODataset` (``docs/interfaces.md``, "Data item"), plus a ``template`` field.

Scene (``img_size`` × ``img_size``, default 128):
    a smooth greyish background with bounded noise, 2-6 objects drawn from
    ``SHAPES`` × ``COLOURS`` × two size classes (bounding-box side 24-30 px "small",
    40-50 px "big"), possibly touching or overlapping (every object keeps >= 75 % of its
    pixels visible; objects of one colour never touch). Masks are the *visible* pixels, exactly the pixels painted with the
    object's colour (so ``mask.sum()`` is the object's pixel count in the PNG).

Sentences (``TEMPLATES``), each checked for uniqueness over the scene:
    ``shape``         "the triangle"
    ``colour``        "the red object"
    ``colour_shape``  "the red circle"
    ``size``          "the small red circle"            (size word needed)
    ``superlative``   "the biggest triangle"            (>= 2 candidates, area ratio >= 1.4)
    ``position``      "the blue square on the left"     (>= 2 candidates, margin >= 10 px)
    ``relation``      "the circle above the green square" (anchor unique; >= 2 candidates)
A target gets the first template, in an order drawn by ``TEMPLATE_WEIGHTS``, that identifies
it; scenes with repeated colours / shapes often leave only a positional one, so positional /
relational sentences make about 44 % of the items with the default weights (>= 30 %).

Splits: ``train`` and ``val`` never contain the colour-shape pairs in ``HELD_OUT``;
every ``test`` target is one of them (compositional generalisation).

Control: ``shuffle_text=True`` gives every item the sentence of an item from *another*
image (a fixed derangement of the images), so the language carries no information.

Cache: the PNGs and a ``refs.json`` are written once under
``<data_root>/<version>_s<seed>_<split>_<n>_<img_size>/`` (``data_root`` defaults to
``~/.cache/mmrefseg/refshapes``) and regenerated deterministically when absent. Image
``i`` of a split depends only on ``(seed, split, i, img_size)``, not on ``num_images``.
"""
import json
import os
import os.path as osp
import shutil
import uuid
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

__all__ = ['RefShapesDataset', 'render_scene', 'describe', 'SHAPES', 'COLOURS', 'HELD_OUT',
           'TEMPLATES', 'GENERATOR_VERSION']

GENERATOR_VERSION = 'v1'
SHAPES = ('circle', 'square', 'triangle', 'diamond')
COLOURS: Dict[str, tuple] = {
    'red': (215, 40, 40),
    'green': (40, 165, 60),
    'blue': (45, 75, 215),
    'yellow': (230, 200, 35),
    'purple': (140, 55, 180),
}
#: colour-shape pairs that appear only in the ``test`` split.
HELD_OUT = (('yellow', 'triangle'), ('blue', 'circle'), ('purple', 'square'))
SIZE_RANGES = {'small': (24, 30), 'big': (40, 50)}  # bounding-box side in px at 128 px
TEMPLATES = ('shape', 'colour', 'colour_shape', 'size', 'superlative', 'position',
             'relation')
SPATIAL_TEMPLATES = ('position', 'relation')
#: relative weight of each template when a target's sentence is drawn.
TEMPLATE_WEIGHTS = dict(shape=1.0, colour=1.0, colour_shape=1.0, size=1.0, superlative=1.5,
                        position=1.0, relation=1.0)
POSITIONS = {  # word -> (axis, sign): the target has the smallest sign * coordinate
    'on the left': ('cx', 1), 'on the right': ('cx', -1),
    'at the top': ('cy', 1), 'at the bottom': ('cy', -1)}
RELATIONS = {  # word -> (axis, sign): sign * (target - anchor) < 0
    'to the left of': ('cx', 1), 'to the right of': ('cx', -1),
    'above': ('cy', 1), 'below': ('cy', -1)}
MARGIN = 10  # px (at 128 px) by which a positional / relational answer must win
MIN_VISIBLE = 0.75  # each object keeps at least this share of its pixels visible
COLOUR_JITTER = 12  # per-channel jitter of an object's base colour (bounded)
TEXTURE_NOISE = 10  # per-pixel uniform noise amplitude on objects and background


# ----------------------------------------------------------------------------- drawing
def _shape_mask(shape: str, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """Rasterise one shape: bool ``size``×``size`` mask of its full (unoccluded) area."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy, h = xs - cx, ys - cy, side / 2.0
    if shape == 'circle':
        return dx * dx + dy * dy <= h * h
    if shape == 'square':
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == 'diamond':
        return np.abs(dx) + np.abs(dy) <= h
    if shape == 'triangle':  # apex up, base at the bottom: |dx| <= (dy + h) / 2
        return (dy <= h) & (dy >= -h) & (2 * np.abs(dx) <= dy + h)
    raise ValueError(f'refshapes: unknown shape {shape!r}; expected one of {SHAPES}')


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth greyish texture: a random 4×4 field upsampled bilinearly, plus noise."""
    grid = rng.uniform(105, 160, size=(4, 4, 1)) + rng.uniform(-12, 12, size=(4, 4, 3))
    t = np.linspace(0, 3, size)
    i0 = np.clip(np.floor(t).astype(int), 0, 2)
    f = (t - i0)[:, None]
    rows = grid[i0] * (1 - f[..., None]) + grid[i0 + 1] * f[..., None]  # size×4×3
    cols = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]
    return cols + rng.uniform(-TEXTURE_NOISE, TEXTURE_NOISE, size=(size, size, 3))


def _allowed_pairs(split: str) -> List[tuple]:
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    return [p for p in pairs if p not in HELD_OUT]


def render_scene(seed: int, split: str, index: int, img_size: int = 128) -> dict:
    """Draw scene ``index`` of ``split``.

    Returns:
        dict: ``image`` (uint8 H×W×3 RGB), ``objects`` (list of dicts with ``shape``,
        ``colour``, ``size`` ('small'/'big'), ``side``, ``cx``, ``cy`` (px), ``area``
        (visible pixels), ``mask`` (bool H×W, visible pixels)).
    """
    split_code = zlib.crc32(split.encode())
    rng = np.random.default_rng([seed, split_code, index, img_size])
    scale = img_size / 128.0
    n_obj = int(rng.integers(2, 7))
    # a small palette per scene makes repeated colours / shapes (hence positional and
    # relational sentences) common.
    pairs = _allowed_pairs(split)
    colours = list(rng.choice(list(COLOURS), size=int(rng.integers(2, 4)), replace=False))
    shapes = list(rng.choice(SHAPES, size=int(rng.integers(2, 4)), replace=False))
    specs = []
    if split == 'test':  # one or two held-out objects per test scene: the targets
        for _ in range(int(rng.integers(1, 3))):
            c, s = HELD_OUT[int(rng.integers(len(HELD_OUT)))]
            specs.append((str(c), str(s)))
    while len(specs) < n_obj:
        c, s = str(rng.choice(colours)), str(rng.choice(shapes))
        if (c, s) in pairs:
            specs.append((c, s))
        elif rng.random() < 0.2:  # rarely the pool yields only held-out pairs
            specs.append(tuple(pairs[int(rng.integers(len(pairs)))]))

    objects = []
    for colour, shape in specs:
        for _ in range(50):  # rejection sampling of a placement with limited overlap
            size_cls = 'small' if rng.random() < 0.5 else 'big'
            lo, hi = SIZE_RANGES[size_cls]
            side = float(rng.uniform(lo, hi)) * scale
            cx = float(rng.uniform(side / 2 + 1, img_size - side / 2 - 1))
            cy = float(rng.uniform(side / 2 + 1, img_size - side / 2 - 1))
            m = _shape_mask(shape, cx, cy, side, img_size)
            # the new object is painted on top: it may hide <= 25 % of any earlier one.
            # Objects of one colour keep >= 3 px apart, or their boundary would vanish.
            grown = _shape_mask(shape, cx, cy, side + 6, img_size)
            ok = True
            for o in objects:
                vis = o['mask'] & ~m
                if (vis.sum() < MIN_VISIBLE * o['full_area']
                        or (o['colour'] == colour and (o['mask'] & grown).any())):
                    ok = False
                    break
            if ok:
                break
        else:
            continue  # no room: drop this object
        for o in objects:
            o['mask'] = o['mask'] & ~m
        objects.append(dict(shape=shape, colour=colour, size=size_cls, side=side, cx=cx,
                            cy=cy, mask=m, full_area=int(m.sum())))

    img = _background(rng, img_size)
    for o in objects:
        base = np.array(COLOURS[o['colour']], np.float32)
        base = base + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3)
        noise = rng.uniform(-TEXTURE_NOISE, TEXTURE_NOISE, size=(int(o['mask'].sum()), 3))
        img[o['mask']] = base + noise
        o['area'] = int(o['mask'].sum())
    return dict(image=np.clip(np.rint(img), 0, 255).astype(np.uint8), objects=objects)


# ----------------------------------------------------------------------------- language
def _matches(desc: dict, o: dict) -> bool:
    return all(o[k] == v for k, v in desc.items())


def _phrase(desc: dict) -> str:
    words = [desc.get('size'), desc.get('colour'), desc.get('shape', 'object')]
    return ' '.join(w for w in words if w)


def _sub_descs(t: dict, keys: Sequence[str]) -> List[dict]:
    out = [{}]
    for k in keys:
        out += [dict(d, **{k: t[k]}) for d in out]
    return out


def _unique_desc(o: dict, objs: List[dict], keys=('shape', 'colour')) -> Optional[dict]:
    """The shortest description (over ``keys``) that matches only ``o``, or None."""
    for d in sorted(_sub_descs(o, keys), key=len):
        if d and [x for x in objs if _matches(d, x)] == [o]:
            return d
    return None


def _try_template(name: str, t: dict, objs: List[dict], rng) -> Optional[str]:
    """A sentence of template ``name`` that identifies ``t`` uniquely in ``objs``, or None."""
    only = lambda d: [x for x in objs if _matches(d, x)] == [t]  # noqa: E731
    if name == 'shape':
        return f'the {t["shape"]}' if only({'shape': t['shape']}) else None
    if name == 'colour':
        return f'the {t["colour"]} object' if only({'colour': t['colour']}) else None
    if name == 'colour_shape':
        d = {'colour': t['colour'], 'shape': t['shape']}
        return f'the {_phrase(d)}' if only(d) else None
    descs = _sub_descs(t, ('shape', 'colour'))
    rng.shuffle(descs)
    if name == 'size':
        for d in descs:
            if d and not only(d) and only(dict(d, size=t['size'])):
                return f'the {_phrase(dict(d, size=t["size"]))}'
        return None
    if name == 'superlative':
        for d in descs:
            cands = [x for x in objs if _matches(d, x)]
            others = [x for x in cands if x is not t]
            if not others:
                continue
            if t['area'] >= 1.4 * max(x['area'] for x in others):
                return f'the biggest {_phrase(d)}'
            if 1.4 * t['area'] <= min(x['area'] for x in others):
                return f'the smallest {_phrase(d)}'
        return None
    if name == 'position':
        words = list(POSITIONS)
        rng.shuffle(words)
        for d in descs:
            others = [x for x in objs if _matches(d, x) and x is not t]
            if not others:
                continue
            for w in words:
                axis, sign = POSITIONS[w]
                if all(sign * (x[axis] - t[axis]) >= MARGIN for x in others):
                    return f'the {_phrase(d)} {w}'
        return None
    if name == 'relation':
        words = list(RELATIONS)
        rng.shuffle(words)
        anchors = [a for a in objs if a is not t]
        rng.shuffle(anchors)
        for d in descs:
            for a in anchors:
                ad = _unique_desc(a, objs)
                others = [x for x in objs if _matches(d, x) and x is not t and x is not a]
                if ad is None or not others:
                    continue
                for w in words:
                    axis, sign = RELATIONS[w]
                    if (sign * (t[axis] - a[axis]) <= -MARGIN
                            and all(sign * (x[axis] - a[axis]) >= 4 for x in others)):
                        return f'the {_phrase(d)} {w} the {_phrase(ad)}'
        return None
    raise ValueError(f'refshapes: unknown template {name!r}; expected one of {TEMPLATES}')


def describe(target: dict, objects: List[dict], rng: np.random.Generator,
             weights: Optional[dict] = None) -> Optional[tuple]:
    """Draw a template (by ``weights``) and a sentence for ``target``.

    Returns ``(sentence, template)`` or None when no template identifies the target.
    """
    weights = dict(TEMPLATE_WEIGHTS, **(weights or {}))
    names = [n for n in TEMPLATES if weights.get(n, 0) > 0]
    p = np.array([weights[n] for n in names], float)
    order = [names[i] for i in rng.choice(len(names), size=len(names), replace=False,
                                           p=p / p.sum())]
    for name in order:
        s = _try_template(name, target, objects, rng)
        if s is not None:
            return s, name
    return None


# ----------------------------------------------------------------------------- dataset
@DATASETS.register_module()
class RefShapesDataset(BaseSegDataset):
    """Synthetic referring segmentation (see the module docstring).

    Args:
        split (str): 'train', 'val' or 'test'.
        num_images (int): scenes in this split. Defaults to 2000.
        refs_per_image (int): referred objects per scene (fewer if a scene has fewer
            describable targets). Defaults to 2.
        seed (int): generator seed. Defaults to 0.
        img_size (int): side of the square images in px. Defaults to 128.
        shuffle_text (bool): control: each item gets the sentence of an item of another
            image. Defaults to False.
        template_weights (dict, optional): override ``TEMPLATE_WEIGHTS`` (0 disables one).
        data_root (str, optional): cache root; defaults to ``~/.cache/mmrefseg/refshapes``.
        **kwargs: passed to :class:`mmseg.datasets.BaseSegDataset` (``pipeline``, ...).
    """
    METAINFO = dict(classes=('background', 'object'), palette=[[0, 0, 0], [255, 255, 255]])
    SPLITS = ('train', 'val', 'test')

    def __init__(self, split: str = 'train', num_images: int = 2000, refs_per_image: int = 2,
                 seed: int = 0, img_size: int = 128, shuffle_text: bool = False,
                 template_weights: Optional[dict] = None, data_root: Optional[str] = None,
                 **kwargs):
        if split not in self.SPLITS:
            raise ValueError(f'RefShapesDataset: split={split!r} is not one of '
                             f'{self.SPLITS}.')
        if int(num_images) < 1 or int(refs_per_image) < 1:
            raise ValueError(f'RefShapesDataset: num_images={num_images} and '
                             f'refs_per_image={refs_per_image} must be >= 1.')
        if int(img_size) < 64:
            raise ValueError(f'RefShapesDataset: img_size={img_size} is too small for '
                             'objects of >= 24 px at 128; use img_size >= 64.')
        if shuffle_text and int(num_images) < 2:
            raise ValueError('RefShapesDataset: shuffle_text=True needs num_images >= 2 '
                             '(sentences come from another image).')
        bad = set(template_weights or {}) - set(TEMPLATES)
        if bad:
            raise ValueError(f'RefShapesDataset: unknown template(s) {sorted(bad)} in '
                             f'template_weights; expected names from {TEMPLATES}.')
        self.split, self.num_images = split, int(num_images)
        self.refs_per_image, self.seed = int(refs_per_image), int(seed)
        self.img_size, self.shuffle_text = int(img_size), bool(shuffle_text)
        self.template_weights = dict(template_weights or {})
        root = data_root or osp.join(osp.expanduser('~'), '.cache', 'mmrefseg', 'refshapes')
        tw = ''
        if self.template_weights:
            tw = '_w' + format(zlib.crc32(json.dumps(self.template_weights,
                                                     sort_keys=True).encode()), 'x')
        self.cache_dir = osp.join(
            root, f'{GENERATOR_VERSION}_s{self.seed}_{split}_{self.num_images}_'
            f'{self.img_size}_r{self.refs_per_image}{tw}')
        kwargs.setdefault('img_suffix', '.png')
        kwargs.setdefault('reduce_zero_label', False)
        super().__init__(data_root=None, **kwargs)

    # -- generation ---------------------------------------------------------------
    def _generate(self, out_dir: str) -> None:
        os.makedirs(osp.join(out_dir, 'images'))
        import cv2
        from pycocotools import mask as mask_utils
        scenes, refs = [], []
        for i in range(self.num_images):
            scene = render_scene(self.seed, self.split, i, self.img_size)
            name = f'{i:06d}.png'
            cv2.imwrite(osp.join(out_dir, 'images', name), scene['image'][..., ::-1])
            objs = scene['objects']
            rng = np.random.default_rng([self.seed, zlib.crc32(self.split.encode()), i, 7])
            order = list(rng.permutation(len(objs)))
            if self.split == 'test':  # test targets: held-out colour-shape pairs only
                order = [k for k in order if (objs[k]['colour'], objs[k]['shape']) in HELD_OUT]
            n_ref = 0
            for k in order:
                if n_ref == self.refs_per_image:
                    break
                got = describe(objs[k], objs, rng, self.template_weights)
                if got is None:
                    continue
                rle = mask_utils.encode(np.asfortranarray(objs[k]['mask'].astype(np.uint8)))
                rle['counts'] = rle['counts'].decode('ascii')
                refs.append(dict(image_id=i, obj_index=int(k), text=got[0], template=got[1],
                                 segmentation=rle))
                n_ref += 1
            scenes.append(dict(
                image_id=i, file_name=name,
                objects=[{k: (round(v, 2) if isinstance(v, float) else v)
                          for k, v in o.items() if k != 'mask'} for o in objs]))
        with open(osp.join(out_dir, 'refs.json'), 'w') as f:
            json.dump(dict(version=GENERATOR_VERSION, seed=self.seed, split=self.split,
                           img_size=self.img_size, held_out=HELD_OUT, scenes=scenes,
                           refs=refs), f)

    def _ensure_cache(self) -> dict:
        ann = osp.join(self.cache_dir, 'refs.json')
        if not osp.isfile(ann):
            parent = osp.dirname(self.cache_dir)
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as e:
                raise OSError(f'RefShapesDataset: cannot create the cache folder {parent} '
                              f'({e}); pass a writable data_root=...') from e
            tmp = f'{self.cache_dir}.tmp-{uuid.uuid4().hex[:8]}'
            try:
                self._generate(tmp)
                try:
                    os.rename(tmp, self.cache_dir)  # atomic; loses to a concurrent writer
                except OSError:
                    if not osp.isfile(ann):
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        with open(ann) as f:
            return json.load(f)

    def load_data_list(self) -> List[dict]:
        meta = self._ensure_cache()
        self.scenes = meta['scenes']
        refs = meta['refs']
        texts = [(r['text'], r['template']) for r in refs]
        if self.shuffle_text:  # Sattolo: a random cyclic permutation has no fixed point
            rng = np.random.default_rng([self.seed, 99])
            perm = list(range(self.num_images))
            for i in range(self.num_images - 1, 0, -1):
                j = int(rng.integers(0, i))
                perm[i], perm[j] = perm[j], perm[i]
            by_img: Dict[int, list] = {}
            for r in refs:
                by_img.setdefault(r['image_id'], []).append((r['text'], r['template']))
            texts = []
            slot: Dict[int, int] = {}
            for r in refs:
                k = slot[r['image_id']] = slot.get(r['image_id'], -1) + 1
                src = perm[r['image_id']]
                while not by_img.get(src):  # a scene without refs: walk the cycle on
                    src = perm[src]
                pool = by_img[src]
                texts.append(pool[k % len(pool)])
        data_list = []
        size = self.img_size
        for ref_id, (r, (text, template)) in enumerate(zip(refs, texts)):
            scene = self.scenes[r['image_id']]
            obj = scene['objects'][r['obj_index']]
            data_list.append(dict(
                img_path=osp.join(self.cache_dir, 'images', scene['file_name']),
                segmentation=r['segmentation'], height=size, width=size, text=text,
                template=template, ref_id=ref_id, sent_id=ref_id,
                ann_id=r['image_id'] * 16 + r['obj_index'], image_id=r['image_id'],
                category_id=SHAPES.index(obj['shape']) + 1, label_map=self.label_map,
                seg_fields=[], reduce_zero_label=False))
        return data_list
