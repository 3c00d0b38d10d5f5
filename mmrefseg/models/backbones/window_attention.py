# Copyright (c) mmrefseg contributors. All rights reserved.
"""Fused (shifted-)window attention for mmseg's Swin blocks (``attn_impl='sdpa'``).

mmseg's ``ShiftWindowMSA`` / ``WindowMSA`` compute, per window of N = ws² tokens,

    softmax(q kᵀ · s + B + M) v              q, k, v: (B·nW)×h×N×d

explicitly (the N×N maps are written, kept for the backward and read back). Here the same
function runs through :func:`torch.nn.functional.scaled_dot_product_attention` with
``attn_mask = B + M``: B the relative position bias (h×N×N, gathered from the SAME
``relative_position_bias_table`` / ``relative_position_index``), M the shift mask. The module
wraps mmseg's own ``w_msa`` (qkv, proj, table, index) and ``drop`` children, so every state
dict key stays ``...attn.w_msa.*`` and every checkpoint (ours, mmseg's, the official Swin
conversion) loads into both paths.

What differs from mmseg, none of it changing the function:

* **Shift mask = -inf** instead of mmseg's -100 between tokens of different regions.
  e^-100 ≈ 3.7e-44 is a *denormal* float, which x86 CPUs process very slowly; with -inf the
  weight is exactly 0 (mmseg's weight e^-100/Σ ≤ 4e-44 is below fp32 resolution, so the
  outputs agree to the last bit that matters). Every query attends at least to itself, so
  no row is fully masked. The mask is built once per feature-map size and cached.
* **Padded windows**: as mmseg, maps are zero-padded to a multiple of the window and the
  padding tokens take part as keys (official Swin / LAVT behaviour). Their qkv is exactly
  the qkv bias (the input is zero), so the qkv projection runs on the real tokens only and
  the padding gets the bias; the output projection runs after cropping (it is per token).
  At 448² this skips 39 % of the qkv/proj work of stage 3 (28² tokens padded to 36²) and
  66 % of stage 4's (14² → 24²).
* **CPU training**: torch's CPU flash kernel takes a float mask but no gradient for it,
  and the bias table is trained, so SDPA would fall back to its math path (which keeps the
  N×N maps). :class:`_WindowSDPAFunction` runs the flash kernel forward (keeping q, k, v,
  the output and the log-sum-exp, not the maps) and computes the gradients of q, k, v and
  of the mask in the backward from the recomputed maps, a chunk of windows at a time.
  On CUDA, SDPA's memory-efficient kernel returns the mask gradient itself; torch < 2.3 has
  no CPU flash kernel with a mask and uses SDPA's math path. All paths are exact.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

__all__ = ['SDPAShiftWindowMSA', 'window_sdpa', 'shift_window_mask']

#: the N×N temporaries of the CPU backward are computed for at most this many elements at
#: a time (32 MB in fp32)
_BACKWARD_CHUNK_ELEMENTS = 8 * 2**20


def _cpu_flash_with_mask() -> bool:
    """torch's CPU flash attention with ``attn_mask`` (torch >= 2.3)."""
    op = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu', None)
    if op is None:
        return False
    try:
        return 'attn_mask' in str(op.default._schema)
    except (AttributeError, RuntimeError):
        return False


_CPU_FLASH = _cpu_flash_with_mask()


class _WindowSDPAFunction(torch.autograd.Function):
    """softmax(q kᵀ·s + mask) v with a trainable mask, CPU flash forward, map-free storage.

    q, k, v: B×h×N×d; mask: 1×h×N×N (broadcast over B). Returns B×h×N×d. Keeps q, k, v and
    the log-sum-exp (not the maps, not the output). The backward recomputes
    P = exp(q kᵀ·s + mask - lse) per chunk of B and returns dq, dk, dv and
    d mask = Σ_B dS with dS = P ⊙ (dP - D), dP = dO vᵀ, D = rowsum(P ⊙ dP) (= rowsum(dO ⊙ O)).
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=mask.detach(), scale=scale)
        ctx.save_for_backward(q, k, v, mask, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, mask, lse = ctx.saved_tensors
        scale = ctx.scale
        b, h, n, _ = q.shape
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dmask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        step = max(1, _BACKWARD_CHUNK_ELEMENTS // (h * n * n))
        m32 = mask.float()
        for i in range(0, b, step):
            sl = slice(i, i + step)
            qi, ki, vi, doi = q[sl], k[sl], v[sl], dout[sl].to(q.dtype)
            s = torch.matmul(qi, ki.transpose(-2, -1)).float().mul_(scale).add_(m32)
            p = s.sub_(lse[sl].float().unsqueeze(-1)).exp_()  # P, in place of S
            dv[sl] = torch.matmul(p.to(q.dtype).transpose(-2, -1), doi)
            dp = torch.matmul(doi, vi.transpose(-2, -1)).float()
            rowdot = (p * dp).sum(-1, keepdim=True)  # D = rowsum(P ⊙ dP)
            ds = dp.sub_(rowdot).mul_(p)  # dS = P ⊙ (dP - D)
            dmask += ds.sum(0, keepdim=True)
            ds_lp = ds.to(q.dtype)
            dq[sl] = torch.matmul(ds_lp, ki).mul_(scale)
            dk[sl] = torch.matmul(ds_lp.transpose(-2, -1), qi).mul_(scale)
        return dq, dk, dv, dmask.to(mask.dtype), None


def window_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float,
                dropout_p: float = 0.0) -> Tensor:
    """``softmax(q kᵀ·scale + mask) v`` through the fastest exact kernel available.

    Args:
        q, k, v (Tensor): B×h×N×d.
        mask (Tensor): 1×h×N×N float (bias + shift mask), broadcast over B.
        scale (float): the q·k scale (``qk_scale`` or d^-0.5).
        dropout_p (float): attention dropout (training only). Default 0.

    Returns:
        Tensor: B×h×N×d.
    """
    if (_CPU_FLASH and q.device.type == 'cpu' and dropout_p == 0.0 and mask.requires_grad
            and torch.is_grad_enabled()):
        return _WindowSDPAFunction.apply(q, k, v, mask.to(q.dtype), scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype),
                                          dropout_p=dropout_p, scale=scale)


def shift_window_mask(h_pad: int, w_pad: int, window_size: int, shift_size: int,
                      device=None) -> Tensor:
    """The SW-MSA mask of a cyclically shifted padded map: nW×N×N bool, True = masked.

    Same regions as mmseg's ``ShiftWindowMSA`` (its -100 entries are the True ones here).
    """
    img_mask = torch.zeros((h_pad, w_pad), dtype=torch.int64, device=device)
    slices = (slice(0, -window_size), slice(-window_size, -shift_size),
              slice(-shift_size, None))
    cnt = 0
    for hs in slices:
        for ws in slices:
            img_mask[hs, ws] = cnt
            cnt += 1
    nwh, nww = h_pad // window_size, w_pad // window_size
    regions = img_mask.view(nwh, window_size, nww, window_size).permute(0, 2, 1, 3).reshape(
        nwh * nww, window_size * window_size)  # nW×N, row-major windows as mmseg's
    return regions.unsqueeze(1) != regions.unsqueeze(2)


class SDPAShiftWindowMSA(BaseModule):
    """(S)W-MSA through SDPA, with the parameters of an mmseg ``ShiftWindowMSA``.

    Args:
        msa (mmseg ShiftWindowMSA): the module whose children (``w_msa``: qkv, proj,
            relative position bias table / index, dropouts; ``drop``: DropPath) this one
            takes over; its ``window_size`` and ``shift_size`` are kept.

    Shapes:
        forward(query B×HW×C, hw_shape (H, W)) → B×HW×C, the same function as mmseg's.
    """

    def __init__(self, msa):
        super().__init__()
        self.window_size = msa.window_size
        self.shift_size = msa.shift_size
        self.w_msa = msa.w_msa
        self.drop = msa.drop
        self._mask_cache = {}

    def _bias(self) -> Tensor:
        """The relative position bias, h×N×N."""
        w = self.w_msa
        n = self.window_size**2
        table = w.relative_position_bias_table[w.relative_position_index.view(-1)]
        return table.view(n, n, -1).permute(2, 0, 1)

    def _shift_mask(self, h_pad: int, w_pad: int, device) -> Tensor:
        """nW×1×N×N float: 0 within a region, -inf across regions (cached per size)."""
        key = (h_pad, w_pad, str(device))
        mask = self._mask_cache.get(key)
        if mask is None:
            masked = shift_window_mask(h_pad, w_pad, self.window_size, self.shift_size,
                                       device=device)
            mask = torch.zeros(masked.shape, device=device).masked_fill_(
                masked, float('-inf')).unsqueeze(1)
            self._mask_cache[key] = mask
        return mask

    def forward(self, query: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        b, n_tok, c = query.shape
        h, w = hw_shape
        if n_tok != h * w:
            raise ValueError(f'SDPAShiftWindowMSA: {n_tok} tokens for a {h}×{w} map.')
        ws, shift = self.window_size, self.shift_size
        msa = self.w_msa
        heads = msa.num_heads
        pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
        x = query.view(b, h, w, c)
        if pad_r or pad_b:
            # zero tokens: their qkv is the bias; project the real tokens only
            qkv = F.pad(F.linear(x, msa.qkv.weight), (0, 0, 0, pad_r, 0, pad_b))
            if msa.qkv.bias is not None:
                qkv = qkv + msa.qkv.bias
        else:
            qkv = msa.qkv(x)  # B×H×W×3C
        h_pad, w_pad = h + pad_b, w + pad_r
        if shift:
            qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
        nwh, nww = h_pad // ws, w_pad // ws
        n_win, n = nwh * nww, ws * ws
        # B×Hp×Wp×3C → 3 × B × (nW·h) × N × d (window-major, then head: mmseg's order)
        qkv = qkv.view(b, nwh, ws, nww, ws, 3, heads, c // heads).permute(5, 0, 1, 3, 6, 2, 4,
                                                                          7)
        q, k, v = qkv.reshape(3, b, n_win * heads, n, c // heads).unbind(0)
        bias = self._bias()  # h×N×N
        if shift:
            mask = (bias.unsqueeze(0) + self._shift_mask(h_pad, w_pad, query.device)).reshape(
                1, n_win * heads, n, n)
        else:  # the same bias for every window: B·nW windows × h heads
            q, k, v = (t.reshape(b * n_win, heads, n, c // heads) for t in (q, k, v))
            mask = bias.unsqueeze(0)
        drop_p = msa.attn_drop.p if self.training else 0.0
        out = window_sdpa(q, k, v, mask, msa.scale, drop_p)
        # windows → map: B×(nW·h)×N×d → B×Hp×Wp×C
        out = out.reshape(b, nwh, nww, heads, ws, ws, c // heads).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(b, h_pad, w_pad, c)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        if pad_r or pad_b:
            out = out[:, :h, :w, :]
        out = msa.proj_drop(msa.proj(out.reshape(b, h * w, c)))
        return self.drop(out)

