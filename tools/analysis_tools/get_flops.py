# Copyright (c) mmrefseg contributors. All rights reserved.
"""Parameters and FLOPs of a referring segmentor, with and without the text encoder.

    python tools/analysis_tools/get_flops.py CONFIG [--shape 448 [480 ...]] [--text-len 30]
                                             [--out-json FILE] [--cfg-options k=v ...]

- Parameters: total, text encoder, and total without the text encoder (the paper's
  Table 7 counts 125.75 M *without* BERT).
- Compute: ``torch.utils.flop_counter.FlopCounterMode`` on one forward of the model
  (``mode='tensor'``: text encoder → backbone → head, batch 1, a sentence of
  ``--text-len`` real tokens). It counts matmul/conv/attention FLOPs (2 per
  multiply-add) and ignores element-wise ops, norms, softmax and resizing; we report
  **G-MACs = FLOPs / 2** - the unit of the papers' "GFLOPs" (fvcore/mmcv count MACs).
Every ``--shape`` gets its own line (one number = square input).
"""
import argparse
import json
import os.path as osp
import sys
import tempfile
from contextlib import contextmanager

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402

import mmrefseg  # noqa: E402,F401
from mmrefseg.apis.measure import (build_model_for_measurement,  # noqa: E402
                                   dummy_data_batch, flop_counter, text_max_length)

TEXT_ENCODER_ATTR = 'text_encoder'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Parameters and FLOPs of a segmentor')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', default=[448],
                        help='input sizes: one number per square size (e.g. 448 480), or '
                        'H W pairs written as HxW (e.g. 448x640)')
    parser.add_argument('--text-len', type=int, default=30,
                        help='real tokens per sentence incl. [CLS]/[SEP]')
    parser.add_argument('--out-json', help='also write the figures to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    return parser.parse_args(argv)


def _parse_shape(text) -> tuple:
    text = str(text)
    if 'x' in text:
        h, w = text.split('x')
        return int(h), int(w)
    return int(text), int(text)


def count_params(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    text = getattr(model, TEXT_ENCODER_ATTR, None)
    text_n = sum(p.numel() for p in text.parameters()) if text is not None else 0
    return dict(params_total=total, params_text_encoder=text_n,
                params_without_text_encoder=total - text_n)


@contextmanager
def _counting_inside(module, counter):
    """Run ``counter`` (a second FlopCounterMode, stacked on the outer one) during every
    forward of ``module``. Works on every torch: torch 2.1's ``FlopCounterMode(mods)``
    breaks modules that return tuples (HF BERT), newer torch ignores ``mods``."""
    if module is None:
        yield
        return

    def enter(mod, args):
        counter.__enter__()

    def leave(mod, args, output):
        counter.__exit__(None, None, None)

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def count_macs(model, shape, text_len, max_length) -> dict:
    """G-MACs of one forward (batch 1), total / text encoder / without text encoder."""
    batch = dummy_data_batch(1, shape, text_len=text_len, max_length=max_length,
                             with_gt=False)
    data = model.data_preprocessor(batch, False)
    counter, text_counter = flop_counter(), flop_counter()
    with torch.no_grad(), _counting_inside(getattr(model, TEXT_ENCODER_ATTR, None),
                                           text_counter), counter:
        model(data['inputs'], data['data_samples'], mode='tensor')
    total = counter.get_total_flops()
    text = text_counter.get_total_flops()
    return dict(input_shape=list(data['inputs'].shape[-2:]), gmacs_total=total / 2e9,
                gmacs_text_encoder=text / 2e9, gmacs_without_text_encoder=(total - text) / 2e9)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'get_flops: config {args.config!r} not found.')
    cfg = Config.fromfile(args.config)
    cfg.work_dir = tempfile.mkdtemp()
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    max_length = text_max_length(cfg, default=max(30, args.text_len))
    if args.text_len > max_length:
        raise ValueError(f'--text-len {args.text_len} exceeds the config\'s TokenizeText '
                         f'max_length={max_length}.')
    model = build_model_for_measurement(cfg).eval()
    result = dict(config=args.config, text_len=args.text_len, **count_params(model))
    result['macs'] = [count_macs(model, _parse_shape(s), args.text_len, max_length)
                      for s in args.shape]

    line = '=' * 64
    print(line)
    print(f'Config: {args.config}')
    print(f'Params total:                 {result["params_total"] / 1e6:10.2f} M')
    print(f'Params text encoder:          {result["params_text_encoder"] / 1e6:10.2f} M')
    print(f'Params without text encoder:  '
          f'{result["params_without_text_encoder"] / 1e6:10.2f} M')
    print(line)
    print(f'{"input":>10} | {"GMACs total":>12} | {"text enc.":>10} | {"w/o text enc.":>13}')
    for m in result['macs']:
        shp = 'x'.join(map(str, m['input_shape']))
        print(f'{shp:>10} | {m["gmacs_total"]:12.2f} | {m["gmacs_text_encoder"]:10.2f} | '
              f'{m["gmacs_without_text_encoder"]:13.2f}')
    print(line)
    print('MACs = FlopCounterMode FLOPs / 2 (matmul/conv/attention only); batch 1, '
          f'{args.text_len} text tokens.')
    if args.out_json:
        with open(args.out_json, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'saved {args.out_json}')
    return result


if __name__ == '__main__':
    main()
