# Copyright (c) mmrefseg contributors. All rights reserved.
"""Pixel accuracy and the non-ignored pixel count, computed on the device (no sync).

mmseg 1.2.2's ``accuracy(pred, target, ignore_index=...)`` selects the valid pixels with a
boolean mask (``correct[:, target != ignore_index]``): on a GPU the size of the result
must be known on the host, so every call waits for the device. Its ``cross_entropy``
with ``avg_non_ignore=True`` likewise counts the valid pixels with ``.item()``. The same
numbers, as device tensors:
"""
import torch
from torch import Tensor

__all__ = ['accuracy', 'non_ignored_count']


def non_ignored_count(label: Tensor, ignore_index=None) -> Tensor:
    """``label.numel() - (label == ignore_index).sum()`` as a 0-dim device tensor: mmseg's
    ``avg_factor`` of ``cross_entropy(avg_non_ignore=True)`` without its ``.item()``."""
    if ignore_index is None:
        return torch.full((), label.numel(), dtype=torch.long, device=label.device)
    return label.numel() - (label == ignore_index).sum()


def accuracy(pred: Tensor, target: Tensor, ignore_index=None) -> Tensor:
    """Top-1 pixel accuracy in percent, as mmseg's ``accuracy(topk=1)``: shape (1,).

    Args:
        pred (Tensor): logits B×C×H×W.
        target (Tensor): labels B×H×W.
        ignore_index (int | None): label excluded from both counts. Default None.
    """
    eps = torch.finfo(torch.float32).eps
    label = pred.topk(1, dim=1)[1].squeeze(1)  # B×H×W, as mmseg (topk, not argmax)
    correct = label == target
    if ignore_index is not None:
        valid = target != ignore_index
        correct = correct & valid
        total = valid.sum() + eps
    else:
        total = target.numel() + eps
    return (correct.reshape(-1).float().sum(0, keepdim=True) + eps) * (100.0 / total)
