# Copyright (c) mmrefseg contributors. All rights reserved.
"""Swin's MLP (mmcv ``FFN``: fc1 → GELU → fc2) keeping half the activations for the backward.

mmcv's FFN keeps two B×HW×4C tensors per block for the backward: the GELU's input (for the
GELU) and its output (for fc2's weight gradient). :class:`LeanFFN` keeps the GELU's input
only and recomputes the GELU (element-wise) in the backward of fc2 (:class:`_GeluLinear`),
so the function, the parameters and the state dict keys (``ffn.layers.*``) are mmcv's. Swin's
MLPs hold the largest activations of the backbone (4C per token), so this cuts the
backbone's activation memory by ~20 % at the cost of one more GELU per block.

Used by ``BSAMSwinTransformer(lean_ffn=True)`` (the default) when the FFN has no dropout
between GELU and fc2 (``drop_rate=0``, the paper's setting); otherwise mmcv's forward runs.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

__all__ = ['LeanFFN', 'gelu_linear']


class _GeluLinear(torch.autograd.Function):
    """``F.linear(F.gelu(h), weight, bias)`` that saves ``h`` (not ``gelu(h)``).

    Under autocast the linear runs in the autocast dtype, as ``F.linear`` would; the
    backward mirrors it (low-precision matmuls, gradients cast back to the inputs' dtypes).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, approximate):
        out = F.linear(F.gelu(h, approximate=approximate), weight, bias)
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.approximate = approximate
        ctx.compute_dtype = out.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight = ctx.saved_tensors
        cdt = ctx.compute_dtype
        g = F.gelu(h, approximate=ctx.approximate).to(cdt)  # recomputed
        dy = grad_out.to(cdt)
        dy2 = dy.reshape(-1, dy.shape[-1])
        grad_w = dy2.t().mm(g.reshape(-1, g.shape[-1])).to(weight.dtype)
        grad_b = dy2.sum(0).to(ctx.bias_dtype) if ctx.has_bias else None
        dg = dy.matmul(weight.to(cdt)).to(h.dtype)
        grad_h = torch.ops.aten.gelu_backward(dg, h, approximate=ctx.approximate)
        return grad_h, grad_w, grad_b, None


def gelu_linear(h, linear: nn.Linear, approximate: str = 'none'):
    """``linear(gelu(h))``, saving only ``h`` for the backward when a gradient is recorded."""
    if torch.is_grad_enabled() and (h.requires_grad or linear.weight.requires_grad):
        return _GeluLinear.apply(h, linear.weight, linear.bias, approximate)
    return linear(F.gelu(h, approximate=approximate))


class LeanFFN(BaseModule):
    """mmcv ``FFN`` (2 layers, GELU, no dropout inside) with the lean backward.

    Args:
        ffn (mmcv FFN): the module whose children (``layers``, ``dropout_layer``, ``gamma2``)
            this one takes over (same parameters and keys).

    Shapes: forward(x B×N×C, identity B×N×C | None) → B×N×C, as mmcv's ``FFN``.
    """

    def __init__(self, ffn):
        super().__init__()
        self.layers = ffn.layers
        self.dropout_layer = ffn.dropout_layer
        self.gamma2 = ffn.gamma2
        self.add_identity = ffn.add_identity
        self._approximate = self.layers[0][1].approximate

    @staticmethod
    def supports(ffn) -> bool:
        """2 layers, GELU, no dropout before fc2 (``Sequential(Linear, GELU, Dropout),
        Linear, Dropout``)."""
        layers = getattr(ffn, 'layers', None)
        try:
            fc1, act, drop = layers[0]
            return (len(layers) == 3 and isinstance(fc1, nn.Linear) and isinstance(act, nn.GELU)
                    and isinstance(drop, nn.Dropout) and drop.p == 0
                    and isinstance(layers[1], nn.Linear))
        except (TypeError, ValueError, IndexError):
            return False

    def forward(self, x, identity=None):
        fc1, fc2, drop = self.layers[0][0], self.layers[1], self.layers[2]
        out = drop(gelu_linear(fc1(x), fc2, self._approximate))
        out = self.gamma2(out)
        if not self.add_identity:
            return self.dropout_layer(out)
        return (x if identity is None else identity) + self.dropout_layer(out)

