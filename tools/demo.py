# Copyright (c) mmrefseg contributors. All rights reserved.
"""Segment what sentences refer to in one image and save the picture.

    python tools/demo.py IMAGE CONFIG [CHECKPOINT] --texts "the cat on the left" "the remote" \
        --out-file demo.png [--device cpu] [--opacity 0.5]

One row per sentence: the predicted mask over the image with the sentence, then the
mask prior of every LQPG layer as a heat map (the view of the paper's Figs. 5-7;
``--no-priors``: the mask only, and the priors are not computed).
Without CHECKPOINT the model has its initial (untrained) weights - useful only to check
the installation. A photo is read upright (its EXIF orientation tag applied, as a viewer
shows it), since that is the view the sentences describe ("on the left").
"""
import argparse
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import mmcv  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

import mmrefseg  # noqa: E402,F401
from mmrefseg.apis import inference_model, init_model  # noqa: E402
from mmrefseg.utils.compat import apply_pkg_resources_fallback  # noqa: E402
from mmrefseg.visualization import RefSegLocalVisualizer  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Referring segmentation demo: masks and mask priors for sentences')
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', default=None, help='checkpoint file')
    parser.add_argument('--texts', nargs='+', required=True,
                        help='one or more referring expressions (quote each one)')
    parser.add_argument('--out-file', default='demo_result.png', help='output picture')
    parser.add_argument('--device', default='cpu', help='device, e.g. cpu or cuda:0')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of the mask overlay, in (0, 1]')
    parser.add_argument('--normalize-priors', action='store_true',
                        help='stretch each prior heat map to its own min-max')
    parser.add_argument('--no-priors', action='store_true',
                        help='draw the masks only (the priors are then not computed)')
    parser.add_argument('--show', action='store_true', help='also show the picture')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.img):
        raise FileNotFoundError(f'demo: image {args.img!r} not found.')
    apply_pkg_resources_fallback()  # only acts without pkg_resources (setuptools >= 82)
    model = init_model(args.config, args.checkpoint, device=args.device,
                       cfg_options=args.cfg_options)

    visualizer = RefSegLocalVisualizer(alpha=args.opacity,
                                       normalize_priors=args.normalize_priors,
                                       draw_priors=not args.no_priors)
    results = inference_model(model, args.img, args.texts,
                              return_priors=visualizer.draw_priors)
    image = mmcv.imread(args.img, flag='color', channel_order='rgb')  # upright, as inference
    drawn = visualizer.draw_samples(image, results, draw_gt=False)
    mmcv.imwrite(mmcv.rgb2bgr(drawn), args.out_file)
    if args.show:
        visualizer.show(drawn, win_name='demo')
    for text, res in zip(args.texts, results):
        area = int(res.pred_sem_seg.data.sum())
        n_priors = res.mask_priors.data.shape[0] if 'mask_priors' in res else 0
        print(f'{text!r}: mask {area} px of {image.shape[0]}x{image.shape[1]}, '
              f'{n_priors} mask priors')
    print(f'saved {args.out_file} ({drawn.shape[1]}x{drawn.shape[0]})')


if __name__ == '__main__':
    main()
