# Copyright (c) mmrefseg contributors. All rights reserved.
"""Convert an official (Microsoft) or timm Swin Transformer checkpoint to mmseg/mmrefseg keys.

Not required for training: ``BSAMSwinTransformer`` converts official checkpoints itself when
``init_cfg=dict(type='Pretrained', checkpoint=...)`` points at one. Use this tool to store a
converted copy (loadable by mmseg's plain ``SwinTransformer`` as well), e.g.

    python tools/model_converters/swin2mmrefseg.py \\
        pretrain/swin_base_patch4_window12_384_22k.pth \\
        pretrain/swin_base_patch4_window12_384_22k_mmseg.pth

Same key renames and patch-merging channel permutation as mmseg's
``tools/model_converters/swin2mmseg.py``; in addition the final ``norm`` becomes ``norm3``
(the norm of the last stage's output), non-persistent buffers and the classifier head are
dropped, and timm-layout files are accepted. ``--window-size N`` also resizes the relative
position bias tables to an N×N window (otherwise they are resized when loaded).
"""
import argparse
import os
import os.path as osp

import torch
from mmengine.runner import CheckpointLoader

from mmrefseg.models.backbones.swin_checkpoint import (convert_swin_state_dict,
                                                      resize_relative_position_table)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert official / timm Swin weights to mmseg (mmrefseg) key names.')
    parser.add_argument('src', help='source checkpoint path or URL')
    parser.add_argument('dst', help='output path (.pth)')
    parser.add_argument('--num-stages', type=int, default=4)
    parser.add_argument('--window-size', type=int, default=None,
                        help='resize relative position bias tables to this window size')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ckpt = CheckpointLoader.load_checkpoint(args.src, map_location='cpu')
    state_dict, layout = convert_swin_state_dict(ckpt, num_stages=args.num_stages)
    if layout is None:
        raise SystemExit(f'{args.src}: no Swin Transformer weights recognised (expected keys '
                         f'"layers.*" (official / timm) or "stages.*" (mmseg)).')
    if args.window_size:
        length = (2 * args.window_size - 1)**2
        for k in [k for k in state_dict if k.endswith('relative_position_bias_table')]:
            state_dict[k] = resize_relative_position_table(state_dict[k], length)
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(dict(state_dict=state_dict, meta=dict(source=args.src, layout=layout)),
               args.dst)
    print(f'{args.src} ({layout} layout, {len(state_dict)} tensors) -> {args.dst}')


if __name__ == '__main__':
    main()
