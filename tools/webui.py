# Copyright (c) mmrefseg contributors. All rights reserved.
"""Try a checkpoint in the browser: pick or drop an image, type sentences, see the masks.

    pip install -e ".[demo]"      # Gradio, once
    python tools/webui.py CONFIG CKPT [--device cpu|cuda] [--port 7860] [--host 127.0.0.1]

then open http://127.0.0.1:7860. For each sentence (one per line) the page shows the mask
over the image, the mask alone as a PNG to download (8-bit grey, 255 = the referent,
0 = background, at the image's own size) and the mask prior of every LQPG layer as a heat
map (foreground probability on the absolute [0, 1] JET scale, as ``tools/demo.py`` draws
them), and how long the model took. Examples to click: the fixture photos of
``tests/data/tiny_refer`` and RefShapes val scenes (generated on first use).

The page runs exactly :func:`mmrefseg.apis.inference_model` (one call per run, all the
sentences together), one request at a time (the others wait in Gradio's queue). Bad input
(no image, a file that is not an image, an image over ``--max-pixels``, no sentence, more
than ``--max-sentences``) gets a message on the page; an unexpected error in the model gets
its one-line message on the page and its traceback in this terminal, and the server goes
on serving. It binds to 127.0.0.1 (this machine only) unless ``--host`` says otherwise,
and needs no network: Gradio's analytics and version check are off and its page is served
from the installed package.
"""
import argparse
import atexit
import logging
import os
import os.path as osp
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# before Gradio is imported anywhere: no telemetry, no version check (offline use)
os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')

import cv2  # noqa: E402
import mmcv  # noqa: E402
import numpy as np  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402

import mmrefseg  # noqa: E402,F401
from mmrefseg.apis import inference_model, init_model  # noqa: E402
from mmrefseg.utils.compat import apply_pkg_resources_fallback  # noqa: E402
from mmrefseg.visualization import RefSegLocalVisualizer  # noqa: E402

#: the Gradio release the page was built and browser-tested with (setup.py ``demo`` extra)
GRADIO_REQUIREMENT = 'gradio==6.17.3'
#: panels are drawn with this longest side at most (the mask PNG keeps the full size)
DISPLAY_SIDE = 1024
#: largest upload Gradio accepts (a 4096x4096 PNG photo is ~50 MB)
MAX_FILE_SIZE = '200mb'
#: results (mask PNGs here, drawn panels in Gradio's cache) are deleted after this long
KEEP_SECONDS = 3600
#: height of the drawn panels on the page (px)
PANEL_PX = 300
#: the panels fill their boxes (Gradio shows a small image at its own size otherwise)
PAGE_CSS = '.mmrefseg-panel img {width: 100%; height: 100%; object-fit: contain;}'
IMAGE_FORMATS = 'PNG, JPEG, BMP, TIFF, WebP, PPM/PGM'


class BadInput(ValueError):
    """A request the page refuses, with the message shown to the user."""


def _mp(pixels: int) -> str:
    return f'{pixels / 1e6:.1f} MP'


class RefSegDemo:
    """What the page does with one request, without the page (tested without a browser).

    Args:
        model (nn.Module): a segmentor from :func:`mmrefseg.apis.init_model`.
        max_pixels (int): largest image (width × height) accepted. Defaults to 4096².
        max_sentences (int): most sentences in one run. Defaults to 8.
        out_dir (str, optional): where the mask PNGs are written; by default a fresh
            temporary folder, removed at exit. Files older than an hour are deleted.
    """

    def __init__(self, model, max_pixels: int = 4096 * 4096, max_sentences: int = 8,
                 out_dir: Optional[str] = None):
        if max_pixels < 1 or max_sentences < 1:
            raise ValueError(f'RefSegDemo: max_pixels={max_pixels} and max_sentences='
                             f'{max_sentences} must be >= 1.')
        self.model = model
        self.max_pixels = int(max_pixels)
        self.max_sentences = int(max_sentences)
        if out_dir is None:
            out_dir = tempfile.mkdtemp(prefix='mmrefseg-webui-')
            atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
        self.out_dir = out_dir
        os.makedirs(self.out_dir, exist_ok=True)
        # no captions on the panels: the page titles them (Gradio's labels would cover them)
        self.visualizer = RefSegLocalVisualizer(name='mmrefseg_webui', alpha=0.5,
                                                draw_text=False)
        self.num_requests = 0
        self.max_tokens, self._tokenizer = self._text_budget(model.cfg)
        self.num_priors = int(getattr(model.decode_head, 'num_layers', 0) or 0)

    @staticmethod
    def _text_budget(cfg) -> Tuple[Optional[int], object]:
        """``max_length`` and tokenizer of the config's ``TokenizeText`` (for the page's
        note when a sentence is longer than the model reads)."""
        from mmrefseg.datasets.transforms import build_tokenizer
        try:
            pipeline = cfg.test_dataloader.dataset.pipeline
        except AttributeError:
            pipeline = cfg.get('test_pipeline', []) or []
        for t in pipeline:
            if t.get('type') == 'TokenizeText':
                return (int(t.get('max_length', 30)),
                        build_tokenizer(t.get('tokenizer', 'bert-base-uncased'),
                                        t.get('do_lower_case', True)))
        return None, None

    def describe_model(self) -> str:
        cfg = self.model.cfg
        size = None
        try:
            size = tuple(cfg.model.data_preprocessor.size)
        except (AttributeError, TypeError):
            pass
        device = next(self.model.parameters()).device
        parts = [f'config `{osp.basename(getattr(cfg, "filename", "") or "?")}`',
                 f'device `{device}`']
        if size:
            parts.append(f'input {size[1]}×{size[0]}')
        if self.max_tokens:
            parts.append(f'{self.max_tokens} tokens per sentence')
        if self.num_priors:
            parts.append(f'{self.num_priors} LQPG layers')
        return ', '.join(parts)

    # ------------------------------------------------------------------ checks
    def parse_sentences(self, text: Optional[str]) -> List[str]:
        """One sentence per non-blank line (surrounding spaces dropped)."""
        sentences = [s.strip() for s in (text or '').splitlines()]
        sentences = [s for s in sentences if s]
        if not sentences:
            raise BadInput('Type at least one sentence (one per line), e.g. '
                           '"the cat on the left".')
        if len(sentences) > self.max_sentences:
            raise BadInput(f'{len(sentences)} sentences: at most {self.max_sentences} per '
                           'run (--max-sentences). Remove some lines.')
        return sentences

    def read_image(self, path: Optional[str], name: Optional[str] = None) -> np.ndarray:
        """The image as ``inference_model`` reads a file (``mmcv.imread``: H×W×3 BGR uint8,
        EXIF orientation applied), after checking from its header that it is an image of at
        most ``max_pixels``."""
        import PIL.Image
        if not path:
            raise BadInput('Pick an image first: drop one on the image box, click it to '
                           'choose a file, or click an example below.')
        name = name or osp.basename(path)
        if not osp.isfile(path):
            raise BadInput(f'The upload of "{name}" did not arrive; upload it again.')
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', PIL.Image.DecompressionBombWarning)
            try:
                with PIL.Image.open(path) as im:  # reads the header only
                    width, height = im.size
            except PIL.Image.DecompressionBombError:  # over PIL's own limit (179 MP)
                width = height = None
            except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError):
                raise BadInput(f'"{name}" is not an image this page can read. Use a '
                               f'{IMAGE_FORMATS} file.') from None
        if width is None or width * height > self.max_pixels:
            size = (f'{width}×{height} = {_mp(width * height)}' if width else
                    f'over {_mp(2 * (PIL.Image.MAX_IMAGE_PIXELS or 0))}')
            raise BadInput(f'"{name}" is {size}; this page takes at most '
                           f'{_mp(self.max_pixels)} (--max-pixels {self.max_pixels}). '
                           'Downscale it first.')
        img = mmcv.imread(path, flag='color')  # upright (EXIF applied), as inference_model
        if img is None or img.ndim != 3 or img.shape[2] != 3:
            raise BadInput(f'"{name}" could not be decoded (truncated or an unsupported '
                           f'variant). Use a {IMAGE_FORMATS} file.')
        return img

    # ------------------------------------------------------------------ request
    def run(self, path: Optional[str], text: Optional[str], name: Optional[str] = None):
        """Check the request, run :func:`inference_model` once, draw and save the results.

        Returns:
            dict: ``request`` (its number), ``sentences``, ``samples`` (``inference_model``'s output), ``overlays``
            (RGB mask-over-image panels), ``priors`` (per sentence a list of RGB heat-map
            panels), ``mask_files`` (PNG paths), ``truncated`` (per sentence: longer than
            the model's token budget), ``shape`` (H, W), ``model_seconds``,
            ``draw_seconds``.

        Raises:
            BadInput: with the message for the page.
        """
        self.num_requests += 1
        request = self.num_requests
        try:
            sentences = self.parse_sentences(text)
            img = self.read_image(path, name)
        except BadInput as e:
            print_log(f'webui: request {request} refused: {e}', logger='current')
            raise
        h, w = img.shape[:2]
        print_log(f'webui: request {request} start: {len(sentences)} sentence(s), '
                  f'{w}x{h} image', logger='current')
        t0 = time.perf_counter()
        samples = inference_model(self.model, img, sentences, return_priors=True)
        model_seconds = time.perf_counter() - t0
        print_log(f'webui: request {request} done: model {model_seconds:.3f} s',
                  logger='current')

        t1 = time.perf_counter()
        request_dir = self._fresh_request_dir(request)
        rgb = mmcv.bgr2rgb(img)
        scale = min(1.0, DISPLAY_SIDE / max(h, w))
        shown = rgb if scale == 1.0 else cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
            interpolation=cv2.INTER_AREA)
        overlays, priors, mask_files = [], [], []
        for i, (sentence, sample) in enumerate(zip(sentences, samples)):
            row = self.visualizer.draw_ref_sample(shown, sample, draw_gt=False,
                                                  text=sentence)
            panels = np.split(row, row.shape[1] // shown.shape[1], axis=1)
            overlays.append(panels[0])
            priors.append(panels[1:])
            mask = sample.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8) * 255
            mask_file = osp.join(request_dir, f'mask_{i + 1}_{_slug(sentence)}.png')
            if not cv2.imwrite(mask_file, mask):
                raise OSError(f'webui: could not write {mask_file}.')
            mask_files.append(mask_file)
        truncated = [self._too_long(s) for s in sentences]
        return dict(request=request, sentences=sentences, samples=samples, overlays=overlays, priors=priors,
                    mask_files=mask_files, truncated=truncated, shape=(h, w),
                    model_seconds=model_seconds, draw_seconds=time.perf_counter() - t1)

    def _too_long(self, sentence: str) -> bool:
        if self._tokenizer is None:
            return False
        return len(self._tokenizer(sentence, truncation=False)['input_ids']) > self.max_tokens

    def _fresh_request_dir(self, request: int) -> str:
        """A folder for this request's PNGs. Gradio serves them from there (browsers may
        fetch them long after the next request), so only folders older than
        ``KEEP_SECONDS`` are removed, as Gradio's own cache is."""
        now = time.time()
        for entry in os.listdir(self.out_dir):
            old = osp.join(self.out_dir, entry)
            if entry.startswith('request_') and now - osp.getmtime(old) > KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        path = osp.join(self.out_dir, f'request_{request:06d}')
        os.makedirs(path)
        return path


def _slug(text: str, max_len: int = 40) -> str:
    slug = re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')[:max_len].strip('_')
    return slug or 'sentence'


# ----------------------------------------------------------------------------- examples
def _items_by_image(dataset, num_images: int, per_image: int = 2) -> List[list]:
    """``[[img_path, "sentence\\nsentence"], ...]`` from a referring dataset's items."""
    grouped: 'OrderedDict[str, list]' = OrderedDict()
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        texts = grouped.setdefault(info['img_path'], [])
        if len(texts) < per_image and info['text'] not in texts:
            texts.append(info['text'])
        if len(grouped) > num_images:
            break
    return [[path, '\n'.join(texts)] for path, texts in list(grouped.items())[:num_images]]


def fixture_examples(num_images: int = 4) -> List[list]:
    """The photos of the test fixture ``tests/data/tiny_refer`` with their sentences."""
    from mmrefseg.datasets import RefCOCODataset
    root = osp.join(REPO_ROOT, 'tests', 'data', 'tiny_refer')
    examples, seen = [], set()
    for split in ('val', 'testA', 'testB', 'train'):
        ds = RefCOCODataset(data_root=root, split=split, test_mode=True, pipeline=[])
        for path, texts in _items_by_image(ds, num_images):
            if path not in seen and len(examples) < num_images:
                seen.add(path)
                examples.append([path, texts])
    return examples


def refshapes_examples(cfg, num_images: int = 6,
                       data_root: Optional[str] = None) -> List[list]:
    """RefShapes val scenes with their sentences: the config's val set when it is
    RefShapes (the quick-start's, same cache), else the first scenes of the default val
    split, generated on first use into ``data_root`` (RefShapes' default cache
    ``~/.cache/mmrefseg/refshapes`` when None)."""
    from mmseg.registry import DATASETS
    from mmrefseg.datasets import RefShapesDataset
    try:
        ds_cfg = cfg.val_dataloader.dataset.copy()
    except AttributeError:
        ds_cfg = None
    if ds_cfg is not None and ds_cfg.get('type') == 'RefShapesDataset':
        ds_cfg.update(pipeline=[], split='val', shuffle_text=False)
        dataset = DATASETS.build(ds_cfg)
    else:
        dataset = RefShapesDataset(split='val', num_images=num_images, data_root=data_root,
                                   pipeline=[])
    return _items_by_image(dataset, num_images)


def gather_examples(cfg, num_images: int) -> List[Tuple[str, List[list]]]:
    """``[(label, examples), ...]``; a source that cannot be read is left out (logged)."""
    sources = [('Photos (tests/data/tiny_refer)', lambda: fixture_examples(num_images)),
               ('RefShapes val scenes', lambda: refshapes_examples(cfg, num_images))]
    out = []
    for label, get in sources:
        if num_images < 1:
            break
        try:
            examples = get()
        except (OSError, KeyError, ValueError, TypeError) as e:
            print_log(f'webui: no "{label}" examples ({type(e).__name__}: {e})',
                      logger='current', level=logging.WARNING)
            continue
        if examples:
            out.append((label, examples))
    return out


# ----------------------------------------------------------------------------- the page
def build_app(demo: RefSegDemo, examples: Sequence[Tuple[str, List[list]]] = (),
              title: str = 'mmrefseg: referring segmentation'):
    """The Gradio page around ``demo`` (call ``.launch()`` on the result)."""
    import gradio as gr
    from gradio.utils import get_upload_folder, is_in_or_equal

    slots = []  # per sentence: (box, title, overlay, mask, priors)

    with gr.Blocks(title=title, analytics_enabled=False,
                   delete_cache=(KEEP_SECONDS, KEEP_SECONDS)) as app:
        gr.Markdown(f'## {title}\n{demo.describe_model()}. One sentence per line; each '
                    'is segmented on its own.')
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label='Image (drop, paste or click to choose)',
                                 type='filepath', sources=['upload', 'clipboard'],
                                 elem_id='image', height=320)
            with gr.Column(scale=1):
                text = gr.Textbox(label='Sentences, one per line', lines=4, max_lines=12,
                                  placeholder='the cat on the left\nthe remote',
                                  elem_id='sentences')
                run = gr.Button('Segment', variant='primary', elem_id='run')
                status = gr.Markdown('', elem_id='status')
        with gr.Row():
            for k, (label, items) in enumerate(examples):
                with gr.Column(scale=1):
                    gr.Examples(examples=items, inputs=[image, text], label=label,
                                examples_per_page=6, elem_id=f'examples-{k}')
        n_priors = max(1, demo.num_priors)
        for i in range(demo.max_sentences):
            with gr.Column(visible=False, elem_id=f'result-{i}') as box:
                head = gr.Markdown(elem_id=f'title-{i}')
                with gr.Row(equal_height=True):
                    overlay = gr.Image(label='mask over the image', format='png',
                                       interactive=False, elem_id=f'overlay-{i}',
                                       buttons=['download', 'fullscreen'], height=PANEL_PX,
                                       scale=1, elem_classes='mmrefseg-panel')
                    mask = gr.Image(label='mask (PNG, 255 = referent)', type='filepath',
                                    format='png', interactive=False, elem_id=f'mask-{i}',
                                    buttons=['download', 'fullscreen'], height=PANEL_PX,
                                    scale=1, elem_classes='mmrefseg-panel')
                    priors = gr.Gallery(label='mask prior of LQPG layer 1, 2, ... '
                                        '(foreground probability: blue 0 → red 1)',
                                        format='png', columns=n_priors, rows=1,
                                        elem_id=f'priors-{i}', buttons=['download'],
                                        interactive=False, height=PANEL_PX,
                                        object_fit='contain', scale=n_priors)
            slots.append((box, head, overlay, mask, priors))

        def respond(image_payload, sentences_text):
            path = name = None
            if isinstance(image_payload, dict):
                path, name = image_payload.get('path'), image_payload.get('orig_name')
            hidden = []
            for _ in slots:
                hidden += [gr.Column(visible=False), '', None, None, None]
            try:
                if path and not is_in_or_equal(path, get_upload_folder()):
                    # only files that came through Gradio's upload (or its cached
                    # examples): a client must not make the server read its own files
                    demo.num_requests += 1
                    raise BadInput(f'"{name or osp.basename(path)}" was not uploaded '
                                   'through this page; upload it again.')
                res = demo.run(path, sentences_text, name)
            except BadInput as e:
                return [f'**Cannot run:** {e} (request {demo.num_requests})'] + hidden
            except Exception as e:  # noqa: BLE001 - the server must keep serving
                traceback.print_exc()
                return [f'**The model failed on this input:** {type(e).__name__}: '
                        f'{_first_line(e)} (the traceback is in the server\'s terminal; '
                        f'request {demo.num_requests})'] + hidden
            h, w = res['shape']
            n = len(res['sentences'])
            out = [f'**{n} sentence{"s" if n > 1 else ""}** on a {w}×{h} image: the model '
                   f'took **{res["model_seconds"]:.2f} s** (`inference_model`, all '
                   f'sentences), drawing {res["draw_seconds"]:.2f} s '
                   f'(request {res["request"]})']
            for i, _ in enumerate(slots):
                if i >= n:
                    out += [gr.Column(visible=False), '', None, None, None]
                    continue
                sample = res['samples'][i]
                area = int(sample.pred_sem_seg.data.sum())
                note = (f' — longer than the model\'s {demo.max_tokens} tokens: the end '
                        'was cut' if res['truncated'][i] else '')
                head_md = (f'### {i + 1}. "{res["sentences"][i]}"\nmask: {area} px '
                           f'({100 * area / (h * w):.1f} % of the image){note}')
                gallery = [(p, f'prior {k + 1}') for k, p in enumerate(res['priors'][i])]
                out += [gr.Column(visible=True), head_md, res['overlays'][i],
                        res['mask_files'][i], gallery]
            return out

        outputs = [status]
        for slot in slots:
            outputs += list(slot)
        run.click(respond, inputs=[image, text], outputs=outputs, preprocess=False,
                  concurrency_limit=1, concurrency_id='model', api_name='segment')
    app.queue(default_concurrency_limit=1, api_open=False)
    return app


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ''


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Web page to try a referring-segmentation checkpoint (Gradio)')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to bind; 0.0.0.0 serves other machines too')
    parser.add_argument('--port', type=int, default=7860, help='port (default 7860)')
    parser.add_argument('--max-pixels', type=int, default=4096 * 4096,
                        help='largest image accepted, width x height (default 4096²)')
    parser.add_argument('--max-sentences', type=int, default=8,
                        help='most sentences per run (default 8)')
    parser.add_argument('--num-examples', type=int, default=6,
                        help='example images per source on the page (0: none)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        import gradio as gr
    except ImportError:
        sys.exit('tools/webui.py needs Gradio: pip install -e ".[demo]" (from the repository '
                 f'root), or pip install "{GRADIO_REQUIREMENT}".')
    for f, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(f):
            sys.exit(f'tools/webui.py: {what} file {f!r} not found.')
    apply_pkg_resources_fallback()  # only acts without pkg_resources (setuptools >= 82)
    model = init_model(args.config, args.checkpoint, device=args.device,
                       cfg_options=args.cfg_options)
    demo = RefSegDemo(model, max_pixels=args.max_pixels, max_sentences=args.max_sentences)
    examples = gather_examples(model.cfg, args.num_examples)
    app = build_app(demo, examples)
    allowed = sorted({osp.dirname(p) for _, items in examples for p, _ in items})
    app.launch(server_name=args.host, server_port=args.port, share=False,
               inbrowser=False, show_error=False, ssr_mode=False, quiet=True,
               max_file_size=MAX_FILE_SIZE, allowed_paths=allowed,
               footer_links=['gradio'], prevent_thread_lock=True, css=PAGE_CSS)
    print_log(f'webui: Gradio {gr.__version__}, serving http://{args.host}:{args.port} '
              '(Ctrl+C stops it)', logger='current')
    # SIGTERM stops it like Ctrl+C (the server closes, the temporary folder is removed)
    signal.signal(signal.SIGTERM, _interrupt)
    app.block_thread()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == '__main__':
    main()
