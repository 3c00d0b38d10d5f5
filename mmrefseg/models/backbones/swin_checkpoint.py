# Copyright (c) mmrefseg contributors. All rights reserved.
"""Load Swin Transformer weights of any common layout into mmseg-layout Swin modules.

mmseg's ``SwinTransformer.init_weights`` does ``load_state_dict(strict=False)`` on whatever
the file holds; the official Microsoft checkpoints (``swin_base_patch4_window12_384_22k.pth``:
``{'model': {'layers.0.blocks.0.attn.qkv.weight', ...}}``) then load *nothing*, silently.
:func:`load_swin_pretrained` detects the layout and converts it:

* ``'official'`` (Microsoft; patch merging at the END of a stage, like mmseg): key renames
  ``layers→stages``, ``attn.→attn.w_msa.``, ``mlp.fc1→ffn.layers.0.0``,
  ``mlp.fc2→ffn.layers.1``, ``patch_embed.proj→patch_embed.projection``, and the
  patch-merging channel permutation (the official ``torch.cat([x0, x1, x2, x3])`` orders the
  2×2 neighbours (0,0),(1,0),(0,1),(1,1) position-major; mmcv's ``nn.Unfold`` gives
  channel-major (0,0),(0,1),(1,0),(1,1)). Same logic as mmseg's
  ``tools/model_converters/swin2mmseg.py``; additionally the final ``norm`` (applied to the
  last stage's output) becomes ``norm{last}``, and the non-persistent buffers
  (``relative_position_index``, ``attn_mask``) and the classifier ``head`` are dropped.
* ``'timm'`` (patch merging at the START of a stage): downsample indices shifted back by
  one, then as official (timm keeps the official channel order).
* ``'mmseg'``: used as is (our own / mmseg-converted checkpoints).

Then relative position bias tables are resized bicubically when the window size of the
model (from the config, never from the file name) differs, keys whose shape still differs
are dropped, the rest is loaded non-strictly, and missing / unexpected / skipped keys are
logged. A file that shares no key with the model is an error that names the file.
"""
import logging
import re
from collections import OrderedDict

import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.runner import CheckpointLoader

__all__ = [
    'detect_swin_layout', 'timm_to_official_swin', 'official_to_mmseg_swin',
    'convert_swin_state_dict', 'resize_relative_position_table',
    'resize_relative_position_tables', 'load_swin_pretrained'
]

_BUFFERS = ('relative_position_index', 'attn_mask')


def _unwrap(ckpt):
    """checkpoint dict → flat state dict without 'module.' / 'backbone.' prefixes."""
    sd = ckpt
    for key in ('state_dict', 'model'):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    sd = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in sd.items())
    if any(k.startswith('backbone.') for k in sd):  # a whole segmentor: keep its backbone
        sd = OrderedDict((k[9:], v) for k, v in sd.items() if k.startswith('backbone.'))
    return sd


def detect_swin_layout(state_dict):
    """'official' | 'timm' | 'mmseg' | None for a flat Swin state dict."""
    keys = list(state_dict)
    if any(k.startswith('stages.') for k in keys):
        return 'mmseg'
    if not any(k.startswith('layers.') for k in keys):
        return None
    if any(k.startswith('layers.0.downsample.') for k in keys):
        return 'official'
    if any(re.match(r'layers\.\d+\.downsample\.', k) for k in keys):
        return 'timm'
    return 'official'  # a single-stage model cannot be told apart; both agree then


def timm_to_official_swin(state_dict):
    """timm layout (downsample at stage start) → official layout (at stage end)."""
    out = OrderedDict()
    for k, v in state_dict.items():
        k = re.sub(r'^layers\.(\d+)\.downsample',
                   lambda m: f'layers.{int(m.group(1)) - 1}.downsample', k)
        out[k.replace('head.fc.', 'head.')] = v
    return out


def _unfold_reduction_order(x):
    out_channels, in_channels = x.shape
    x = x.reshape(out_channels, 4, in_channels // 4)
    return x[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(out_channels, in_channels)


def _unfold_norm_order(x):
    in_channels = x.shape[0]
    x = x.reshape(4, in_channels // 4)
    return x[[0, 2, 1, 3], :].transpose(0, 1).reshape(in_channels)


def official_to_mmseg_swin(state_dict, num_stages=4):
    """Official Microsoft Swin keys → mmseg ``SwinTransformer`` keys (see module doc)."""
    out = OrderedDict()
    for k, v in state_dict.items():
        if k.startswith('head') or any(b in k for b in _BUFFERS):
            continue
        new_k, new_v = k, v
        if k.startswith('layers'):
            if 'attn.' in k:
                new_k = k.replace('attn.', 'attn.w_msa.')
            elif 'mlp.fc1.' in k:
                new_k = k.replace('mlp.fc1.', 'ffn.layers.0.0.')
            elif 'mlp.fc2.' in k:
                new_k = k.replace('mlp.fc2.', 'ffn.layers.1.')
            elif 'downsample.reduction.' in k:
                new_v = _unfold_reduction_order(v)
            elif 'downsample.norm.' in k:
                new_v = _unfold_norm_order(v)
            new_k = new_k.replace('layers', 'stages', 1)
        elif k.startswith('patch_embed.proj.'):
            new_k = k.replace('patch_embed.proj.', 'patch_embed.projection.')
        elif k in ('norm.weight', 'norm.bias'):  # final norm = norm of the last stage
            new_k = f'norm{num_stages - 1}.' + k.split('.')[1]
        out[new_k] = new_v
    return out


def convert_swin_state_dict(ckpt, num_stages=4):
    """Any supported checkpoint (dict) → (mmseg-layout state dict, detected layout)."""
    sd = _unwrap(ckpt)
    layout = detect_swin_layout(sd)
    if layout == 'timm':
        sd = timm_to_official_swin(sd)
    if layout in ('official', 'timm'):
        sd = official_to_mmseg_swin(sd, num_stages=num_stages)
    return sd, layout


def resize_relative_position_table(table, length):
    """Bicubic resize of one ``relative_position_bias_table`` ((2w-1)²×heads) to ``length``
    rows, as the official Swin and mmseg do."""
    (l1, heads), s1, s2 = table.shape, int(table.shape[0]**0.5), int(length**0.5)
    if l1 == length:
        return table
    out = F.interpolate(
        table.float().permute(1, 0).reshape(1, heads, s1, s1), size=(s2, s2), mode='bicubic')
    return out.reshape(heads, length).permute(1, 0).contiguous().to(table.dtype)


def resize_relative_position_tables(state_dict, model_state):
    """Resize every table of ``state_dict`` to the model's window (from the config).
    Returns the list of resized keys."""
    resized = []
    for k in [k for k in state_dict if k.endswith('relative_position_bias_table')]:
        if k not in model_state:
            continue
        (l1, h1), (l2, h2) = state_dict[k].shape, model_state[k].shape
        if h1 != h2 or l1 == l2:
            continue
        state_dict[k] = resize_relative_position_table(state_dict[k], l2)
        resized.append(k)
    return resized


def _reshape_abs_pos_embed(state_dict, model):
    """(1, HW, C) official absolute position embedding → mmseg's (1, C, H, W)."""
    pe = state_dict.get('absolute_pos_embed')
    if pe is None or not hasattr(model, 'absolute_pos_embed'):
        return
    target = model.absolute_pos_embed
    if pe.dim() == 3 and target.dim() == 4 and pe.shape[1] == target.shape[2] * target.shape[3]:
        state_dict['absolute_pos_embed'] = pe.reshape(
            1, target.shape[2], target.shape[3], -1).permute(0, 3, 1, 2).contiguous()


def load_swin_pretrained(model, filename, num_stages=4, logger='current'):
    """Convert and load the Swin weights in ``filename`` into ``model`` (mmseg layout).

    Returns a dict with ``layout``, ``loaded``, ``missing``, ``unexpected``, ``skipped``
    (shape mismatch) and ``resized`` key lists.
    """
    ckpt = CheckpointLoader.load_checkpoint(filename, map_location='cpu', logger=logger)
    if not isinstance(ckpt, dict):
        raise TypeError(f'{filename}: expected a (dict) checkpoint, got {type(ckpt).__name__}.')
    sd, layout = convert_swin_state_dict(ckpt, num_stages=num_stages)
    model_state = model.state_dict()
    resized = resize_relative_position_tables(sd, model_state)
    _reshape_abs_pos_embed(sd, model)
    skipped = [k for k in sd if k in model_state and sd[k].shape != model_state[k].shape]
    for k in skipped:
        print_log(f'{filename}: skip {k}: checkpoint shape {tuple(sd[k].shape)} != model '
                  f'{tuple(model_state[k].shape)}', logger=logger, level=logging.WARNING)
        sd.pop(k)
    loaded = [k for k in sd if k in model_state]
    if not loaded:
        first = list(_unwrap(ckpt))[:5]
        raise RuntimeError(
            f'{filename}: no weight of this file matches the Swin backbone (layout detected: '
            f'{layout}; first keys {first}; {len(skipped)} keys with another shape). Use an '
            f'official Swin checkpoint (keys "layers.*", e.g. '
            f'swin_base_patch4_window12_384_22k.pth), a timm or an mmseg one, whose '
            f'embed_dims/depths/num_heads match the config.')
    incompatible = model.load_state_dict(sd, strict=False)
    missing = list(incompatible.missing_keys)
    unexpected = list(incompatible.unexpected_keys)
    missing = [k for k in missing if not k.endswith(_BUFFERS)]  # derived buffers
    swin_missing = [k for k in missing if k.startswith(('patch_embed', 'stages', 'norm'))]
    other_missing = [k for k in missing if k not in swin_missing]
    print_log(
        f'Loaded {len(loaded)} Swin tensors from {filename} (layout: {layout}); '
        f'resized relative position tables: {len(resized)}; shape-mismatched: {len(skipped)}; '
        f'missing Swin keys: {swin_missing}; unexpected keys: {unexpected}; '
        f'{len(other_missing)} non-Swin (fusion) tensors keep their own init.',
        logger=logger)
    return dict(layout=layout, loaded=loaded, missing=missing, unexpected=unexpected,
                skipped=skipped, resized=resized)

