"""The Mamba2 block's depthwise causal convolution and SiLU, channels-last, with a hand-written backward pass.

``out_t = silu(bias + sum_j w_j * x_{t + j - (k - 1)})``, zeros before the sequence start. ``k`` shifted
multiply-adds on ``(b, l, channels)`` run faster on the CPU than ``torch.nn.functional.conv1d`` with its two
transposes, need no padded copy of the input, and leave the output token-major and contiguous, as the scan's
matmuls want it (a transposed output made them copy ``x``; ``benchmarks/results/train_step.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv_silu"]


def _conv(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """The convolution of ``x`` ``(b, l, channels)`` with ``w`` ``(channels, k)``, before the activation."""
    k, length = w.shape[1], x.shape[1]
    out = x * w[:, k - 1] if bias is None else torch.addcmul(bias.to(x.dtype), x, w[:, k - 1])
    for j in range(k - 1):
        shift = k - 1 - j  # w_j reads the input `shift` positions back
        if shift < length:
            out[:, shift:].addcmul_(x[:, : length - shift], w[:, j])
    return out


class _CausalConvSilu(torch.autograd.Function):
    """Keeps the input and the pre-activation; the backward pass runs the same multiply-adds shifted the other way."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        pre = _conv(x, weight.squeeze(1).to(x.dtype), bias)
        ctx.save_for_backward(x, weight, pre)
        ctx.has_bias = bias is not None
        return F.silu(pre)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, pre = ctx.saved_tensors
        k, length = weight.shape[-1], x.shape[1]
        g = torch.ops.aten.silu_backward(grad, pre)  # grad * silu'(pre), one fused pass
        w = weight.squeeze(1).to(g.dtype)
        d_x = g * w[:, k - 1]
        for j in range(k - 1):
            shift = k - 1 - j
            if shift < length:
                d_x[:, : length - shift].addcmul_(g[:, shift:], w[:, j])
        d_w, d_bias = _weight_grads(g, x, k)
        return d_x, d_w.unsqueeze(1).to(weight.dtype), d_bias.to(weight.dtype) if ctx.has_bias else None


def _weight_grads(g: Tensor, x: Tensor, k: int, block_tokens: int = 1024) -> tuple[Tensor, Tensor]:
    """``d_w[:, j] = sum_{b, t} g[b, t] * x[b, t - (k - 1 - j)]`` ``(channels, k)`` and ``sum_{b, t} g[b, t]``, over
    blocks of about ``block_tokens`` tokens (whole rows when they are shorter), so that each product lives in one
    small reused buffer in the cache instead of a fresh full-size tensor (the conv's forward + backward 1.27-1.38x at
    the training shapes, one thread; ``benchmarks/results/train_step.md``)."""
    batch, length, channels = g.shape
    d_w, d_bias = g.new_zeros(k, channels), g.new_zeros(channels)
    rows = max(1, block_tokens // max(length, 1))
    span = block_tokens if rows == 1 else length  # tokens a block: part of a row, or whole rows
    buf = g.new_empty(rows * min(span, length) * channels)
    for r in range(0, batch, rows):
        for t0 in range(0, length, span):
            t1 = min(t0 + span, length)
            for j in range(k):
                lo = max(t0, k - 1 - j)  # the first position whose input k - 1 - j back exists
                if lo >= t1:
                    continue
                gb, xb = g[r : r + rows, lo:t1], x[r : r + rows, lo - (k - 1 - j) : t1 - (k - 1 - j)]
                d_w[j] += torch.mul(gb, xb, out=buf[: gb.numel()].view(gb.shape)).sum((0, 1))
            d_bias += g[r : r + rows, t0:t1].sum((0, 1))  # the block is still in the cache
    return d_w.t(), d_bias


def causal_conv_silu(x: Tensor, weight: Tensor, bias: Tensor | None, context: Tensor | None = None) -> Tensor:
    """``silu(causal depthwise conv(x))`` for ``x`` ``(b, l, channels)``, ``weight`` ``(channels, 1, k)`` (an
    ``nn.Conv1d``'s), with ``context`` ``(b, k - 1, channels)`` as the input before ``x`` (None: zeros)."""
    if context is not None:  # a later tile of a long sequence: the context's outputs are dropped
        k = weight.shape[-1]
        return causal_conv_silu(torch.cat([context.to(x.dtype), x], dim=1), weight, bias)[:, k - 1 :].contiguous()
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _CausalConvSilu.apply(x, weight, bias)
    return F.silu(_conv(x, weight.squeeze(1).to(x.dtype), bias), inplace=True)
