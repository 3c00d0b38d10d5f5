# Copyright (c) mmrefseg contributors. All rights reserved.
"""RefCOCO / RefCOCO+ / RefCOCOg as distributed by the ``refer`` API.

Layout (``data_root`` = ``DATA_ROOT``)::

    DATA_ROOT/<dataset>/instances.json        # COCO images / annotations / categories
    DATA_ROOT/<dataset>/refs(<split_by>).p    # pickled list of refs (Python 2, protocol 2)
    DATA_ROOT/images/mscoco/images/train2014/ # the COCO train2014 images

Choices (LAVT's where the paper is silent):

- **Split semantics** are those of ``refer.REFER.getRefIds``: ``testA`` / ``testB`` select
  the refs whose ``split`` contains that letter, ``test`` every split containing ``"test"``,
  ``train`` / ``val`` match exactly.
- **Items.** ``sentence_mode='all'`` (the default with ``test_mode=True``): one item per
  (ref, sentence), so every sentence of every ref is scored. ``sentence_mode='random'`` (the
  training default): one item per ref, and each access draws one of the ref's sentences,
  so an epoch is one pass over the refs (LAVT). The draw is a function of
  ``(seed, epoch, index)``: deterministic, a fresh sentence every epoch, the same again
  after a resume (mid-epoch too). The epoch comes with the index, from
  :class:`~mmrefseg.datasets.samplers.EpochTaggedSampler` (our configs' training sampler;
  the index carries the epoch to every dataloader worker, persistent or not); ``seed`` is
  ``sentence_seed``, or the sampler's seed (the run's ``randomness.seed``) when
  ``sentence_seed=None``. An index without an epoch (mmengine's plain ``DefaultSampler``)
  counts as epoch 0 when ``sentence_seed`` is set, and falls back to ``random.choice``
  (not resumable) when it is None.
- **Text** is the ``raw`` sentence (LAVT); ``text_key='sent'`` takes the refer API's
  lower-cased, punctuation-free version instead.
- **Image name** comes from ``instances.json`` (a ref's ``file_name`` is *not* a file: it is
  ``COCO_train2014_<image id>_<ann id>.jpg``); ``height`` / ``width`` too.
- The raw COCO ``segmentation`` (polygons or RLE) stays in the data list (it is serialized
  with it); :class:`~mmrefseg.datasets.transforms.LoadRefAnnotations` decodes it.
- **Pixels as stored.** The annotations (and the refer API, and LAVT through PIL) refer to
  the pixels as stored in the file, so the pipeline must load images with
  ``LoadImageFromFile(color_type='color_ignore_orientation')``: mmcv's default ``'color'``
  applies a JPEG's EXIF orientation tag and would rotate the image against its mask. The
  dataset refuses a pipeline that would (``check_refer_data.py`` counts tagged images).
"""
import gc
import json
import logging
import os.path as osp
import pickle
import random
from typing import List, Optional, Sequence, Tuple

from mmengine.logging import print_log
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .transforms.loading import check_pixels_as_stored

VALID_DATASETS = ('refcoco', 'refcoco+', 'refcocog')
VALID_SPLIT_BYS = ('unc', 'umd', 'google')
VALID_SPLITS = ('train', 'val', 'testA', 'testB', 'test')
#: (dataset, split_by) pairs released with the refer API.
KNOWN_PAIRS = (('refcoco', 'unc'), ('refcoco', 'google'), ('refcoco+', 'unc'),
               ('refcocog', 'umd'), ('refcocog', 'google'))
DEFAULT_IMG_DIR = 'images/mscoco/images/train2014'


def _check_choice(name: str, value, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f'RefCOCODataset: unknown {name}={value!r}; valid values are '
                         f'{", ".join(repr(v) for v in valid)}.')


def refer_paths(data_root: str, dataset: str, split_by: str) -> Tuple[str, str]:
    """``(instances.json, refs(<split_by>).p)`` paths of one refer dataset."""
    folder = osp.join(data_root, dataset)
    return osp.join(folder, 'instances.json'), osp.join(folder, f'refs({split_by}).p')


def load_refs_pickle(path: str) -> List[dict]:
    """Read a refer-API ``refs(*.p)`` pickle (written by Python 2).

    Python 2 ``str`` objects are decoded as UTF-8; a pickle with non-UTF-8 byte strings
    falls back to latin-1 (every byte maps to one character, nothing is lost).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{path} not found. Download the refer annotations (see docs/dataset_prepare.md) '
            f'so that DATA_ROOT/<dataset>/refs(<split_by>).p exists, or fix data_root. Known '
            f'(dataset, split_by) pairs: {", ".join(f"{d}/{s}" for d, s in KNOWN_PAIRS)}.')
    for encoding in ('utf-8', 'latin1'):
        try:
            with open(path, 'rb') as f:
                refs = pickle.load(f, encoding=encoding)
            break
        except UnicodeDecodeError:
            continue
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
                KeyError, TypeError, ValueError) as e:  # truncated / not a pickle (see the
            # pickle docs: load raises these for corrupt data besides UnpicklingError)
            raise ValueError(f'{path} is not a readable refs pickle ({type(e).__name__}: '
                             f'{e}). Re-download it (docs/dataset_prepare.md).') from e
    if not isinstance(refs, list) or (refs and not isinstance(refs[0], dict)):
        raise ValueError(f'{path} does not hold a list of ref dicts (got '
                         f'{type(refs).__name__}). Is it a refer-API refs(*.p) file?')
    return refs


def _json_loads(data: bytes):
    """``orjson.loads`` when installed (about 3× faster on RefCOCO's 100 MB), else json."""
    try:
        import orjson
    except ImportError:
        return json.loads(data)
    return orjson.loads(data)


def load_instances(path: str) -> dict:
    """Read ``instances.json`` with a clear error when it is missing or broken."""
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{path} not found. Download the refer annotations (see docs/dataset_prepare.md) '
            f'so that DATA_ROOT/<dataset>/instances.json exists, or fix data_root.')
    try:
        with open(path, 'rb') as f:
            instances = _json_loads(f.read())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f'{path} is not valid JSON ({e}). Re-download it '
                         f'(docs/dataset_prepare.md).') from e
    for key in ('images', 'annotations'):
        if key not in instances:
            raise ValueError(f'{path} has no "{key}" list: not a COCO-style instances file.')
    return instances


def select_refs(refs: List[dict], split: str) -> List[dict]:
    """Refs of one split, with the refer API's semantics (see module docstring)."""
    if split in ('testA', 'testB'):
        return [r for r in refs if split[-1] in r['split']]
    if split == 'test':
        return [r for r in refs if 'test' in r['split']]
    return [r for r in refs if r['split'] == split]


def ref_sentences(ref: dict, text_key: str = 'raw') -> List[Tuple[int, str]]:
    """``[(sent_id, text), ...]`` of a ref; ``text_key`` falls back to ``'sent'``."""
    out = []
    for s in ref['sentences']:
        text = s.get(text_key, s.get('sent'))
        out.append((int(s['sent_id']), text if isinstance(text, str) else ''))
    return out


@DATASETS.register_module()
class RefCOCODataset(BaseSegDataset):
    """RefCOCO-family referring segmentation dataset (refer-API files).

    Args:
        data_root (str): ``DATA_ROOT`` (see module docstring).
        dataset (str): ``'refcoco'``, ``'refcoco+'`` or ``'refcocog'``.
        split_by (str): ``'unc'``, ``'umd'`` or ``'google'``.
        split (str): ``'train'``, ``'val'``, ``'testA'``, ``'testB'`` or ``'test'``.
        pipeline (list): data pipeline (see docs/interfaces.md).
        img_dir (str): image folder, relative to ``data_root`` or absolute.
            Defaults to ``'images/mscoco/images/train2014'``.
        sentence_mode (str, optional): ``'random'`` (one item per ref, one random sentence
            per access) or ``'all'`` (one item per sentence). Defaults to ``'all'`` when
            ``test_mode`` else ``'random'``.
        sentence_seed (int, optional): with ``'random'``, the seed of the draw, which is a
            function of ``(seed, epoch, index)``. Defaults to None: the sampler's seed
            (``EpochTaggedSampler``), or ``random.choice`` for an untagged index.
        text_key (str): sentence field used as text, ``'raw'`` (LAVT) or ``'sent'``.
        skip_empty_sentences (bool): drop empty sentences (and refs left with none)
            instead of raising. Defaults to False.
        test_mode (bool): evaluation dataset. Defaults to False.
        **kwargs: passed to :class:`mmseg.datasets.BaseSegDataset`.

    Each item (``get_data_info``) has ``img_path, segmentation, height, width, text,
    ref_id, sent_id, ann_id, image_id, category_id, seg_fields, reduce_zero_label``.
    """

    METAINFO = dict(classes=('background', 'object'), palette=[[0, 0, 0], [255, 0, 0]])

    def __init__(self,
                 data_root: str,
                 dataset: str = 'refcoco',
                 split_by: str = 'unc',
                 split: str = 'train',
                 pipeline: Sequence = (),
                 img_dir: str = DEFAULT_IMG_DIR,
                 sentence_mode: Optional[str] = None,
                 sentence_seed: Optional[int] = None,
                 text_key: str = 'raw',
                 skip_empty_sentences: bool = False,
                 test_mode: bool = False,
                 **kwargs) -> None:
        _check_choice('dataset', dataset, VALID_DATASETS)
        _check_choice('split_by', split_by, VALID_SPLIT_BYS)
        _check_choice('split', split, VALID_SPLITS)
        if sentence_mode is None:
            sentence_mode = 'all' if test_mode else 'random'
        _check_choice('sentence_mode', sentence_mode, ('random', 'all'))
        _check_choice('text_key', text_key, ('raw', 'sent'))
        if sentence_seed is not None and not isinstance(sentence_seed, int):
            raise TypeError(f'RefCOCODataset: sentence_seed must be an int or None, got '
                            f'{sentence_seed!r}.')
        self.dataset = dataset
        self.split_by = split_by
        self.split = split
        self.img_dir = img_dir
        self.sentence_mode = sentence_mode
        self.sentence_seed = sentence_seed
        self.text_key = text_key
        self.skip_empty_sentences = skip_empty_sentences
        self._warned_untagged = False
        check_pixels_as_stored(pipeline, 'RefCOCODataset')
        super().__init__(
            data_root=data_root, pipeline=list(pipeline), test_mode=test_mode, **kwargs)

    # ------------------------------------------------------------------ loading
    def load_data_list(self) -> List[dict]:
        """Read the refs pickle and ``instances.json`` into the data list.

        The cyclic garbage collector is paused meanwhile: the millions of small objects of a
        parsed ``instances.json`` otherwise trigger repeated full collections (≈ 2× slower).
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._load_data_list()
        finally:
            if gc_was_enabled:
                gc.enable()

    def _load_data_list(self) -> List[dict]:
        ann_path, ref_path = refer_paths(self.data_root, self.dataset, self.split_by)
        refs = load_refs_pickle(ref_path)
        refs = select_refs(refs, self.split)
        if not refs:
            all_splits = sorted({r['split'] for r in load_refs_pickle(ref_path)})
            raise ValueError(f'{ref_path}: split {self.split!r} selects no refs; this file '
                             f'has splits {all_splits}.')
        instances = load_instances(ann_path)
        need_anns = {r['ann_id'] for r in refs}
        anns = {a['id']: a for a in instances['annotations'] if a['id'] in need_anns}
        images = {im['id']: im for im in instances['images']}
        del instances
        img_dir = osp.join(self.data_root, self.img_dir)

        data_list = []
        for ref in refs:
            ref_id, ann_id = int(ref['ref_id']), int(ref['ann_id'])
            ann = anns.get(ann_id)
            if ann is None:
                raise KeyError(
                    f'{ref_path}: ref_id {ref_id} names ann_id {ann_id}, which {ann_path} '
                    'lacks. The pickle and instances.json come from different downloads: '
                    f'take both from the same {self.dataset} archive.')
            image = images.get(ann['image_id'])
            if image is None:
                raise KeyError(f'{ann_path}: annotation {ann_id} names image_id '
                               f'{ann["image_id"]}, which is not in its "images" list. '
                               'Re-download instances.json.')
            sentences = ref_sentences(ref, self.text_key)
            empty = [sid for sid, text in sentences if not text.strip()]
            if empty:
                if not self.skip_empty_sentences:
                    raise ValueError(
                        f'{ref_path}: ref_id {ref_id} has an empty sentence (sent_id '
                        f'{empty[0]}). Fix the file, or pass skip_empty_sentences=True to '
                        'drop empty sentences (and refs left with none).')
                sentences = [(sid, t) for sid, t in sentences if t.strip()]
            if not sentences:
                if self.skip_empty_sentences:
                    continue
                raise ValueError(f'{ref_path}: ref_id {ref_id} has no sentences. Fix the '
                                 'file, or pass skip_empty_sentences=True to drop it.')
            base = dict(
                img_path=osp.join(img_dir, image['file_name']),
                segmentation=ann['segmentation'],
                height=int(image['height']),
                width=int(image['width']),
                ref_id=ref_id,
                ann_id=ann_id,
                image_id=int(ann['image_id']),
                category_id=int(ref.get('category_id', ann.get('category_id', -1))),
                seg_fields=[],
                reduce_zero_label=False)
            if self.sentence_mode == 'all':
                for sent_id, text in sentences:
                    data_list.append(dict(base, text=text, sent_id=sent_id))
            else:
                data_list.append(dict(base, sentences=sentences))
        return data_list

    def get_data_info(self, idx: int) -> dict:
        """The ``idx``-th item; in ``'random'`` mode one of the ref's sentences, drawn as a
        function of ``(seed, epoch, idx)`` (``idx`` may carry the epoch: ``EpochIndex``)."""
        info = super().get_data_info(int(idx))
        sentences = info.pop('sentences', None)
        if sentences is not None:
            info['sent_id'], info['text'] = self._draw_sentence(sentences, idx,
                                                                info['sample_idx'])
        return info

    def _draw_sentence(self, sentences, idx, sample_idx: int):
        epoch, seed = getattr(idx, 'epoch', None), self.sentence_seed
        if seed is None:
            seed = getattr(idx, 'seed', None)
            if seed is None:  # untagged index, no seed: fresh (worker-seeded) draw
                return random.choice(sentences)
        if epoch is None and not self.test_mode and not self._warned_untagged:
            self._warned_untagged = True
            print_log(
                f'RefCOCODataset: sentence_seed={seed} but the index carries no epoch (the '
                'sampler is not EpochTaggedSampler), so every epoch draws the same sentence '
                "of each ref. Use train_dataloader.sampler=dict(type='EpochTaggedSampler', "
                'shuffle=True).', logger='current', level=logging.WARNING)
        rng = random.Random(f'{seed}-{epoch or 0}-{sample_idx}')
        return rng.choice(sentences)

    def prepare_data(self, idx: int):
        """Run the pipeline; a missing / unreadable image gets an error naming it."""
        import cv2
        info = self.get_data_info(idx)
        try:
            return self.pipeline(info)
        except (OSError, AssertionError, cv2.error) as e:
            # what mmcv's LoadImageFromFile raises for a missing file (FileNotFoundError)
            # or undecodable bytes ("failed to load image" assertion, cv2 / PIL errors)
            img_path = info['img_path']
            where = f'(ref_id {info["ref_id"]}, image_id {info["image_id"]})'
            if not osp.isfile(img_path):
                raise FileNotFoundError(
                    f'image {img_path} {where} is missing. Put the COCO train2014 images in '
                    f'{osp.join(self.data_root, self.img_dir)} (or set img_dir) and run '
                    'tools/dataset_converters/check_refer_data.py.') from e
            if 'failed to load image' in str(e) or _unreadable(img_path):
                raise OSError(f'image {img_path} {where} cannot be decoded (corrupt or '
                              'truncated file). Re-download it.') from e
            raise


def _unreadable(path: str) -> bool:
    import cv2
    try:
        return cv2.imread(path, cv2.IMREAD_UNCHANGED) is None
    except cv2.error:
        return True

