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
    out = x * w[:, k - 1]
    for j in range(k - 1):
        shift = k - 1 - j  # w_j reads the input `shift` positions back
        if shift < length:
            out[:, shift:].addcmul_(x[:, : length - shift], w[:, j])
    if bias is not None:
        out.add_(bias.to(out.dtype))
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
        d_w = [None] * k
        d_w[k - 1] = (g * x).sum((0, 1))
        for j in range(k - 1):
            shift = k - 1 - j
            if shift < length:
                d_x[:, : length - shift].addcmul_(g[:, shift:], w[:, j])
                d_w[j] = (g[:, shift:] * x[:, : length - shift]).sum((0, 1))
            else:
                d_w[j] = torch.zeros_like(d_w[k - 1])
        d_bias = g.sum((0, 1)).to(weight.dtype) if ctx.has_bias else None
        return d_x, torch.stack(d_w, 1).unsqueeze(1).to(weight.dtype), d_bias


def causal_conv_silu(x: Tensor, weight: Tensor, bias: Tensor | None, context: Tensor | None = None) -> Tensor:
    """``silu(causal depthwise conv(x))`` for ``x`` ``(b, l, channels)``, ``weight`` ``(channels, 1, k)`` (an
    ``nn.Conv1d``'s), with ``context`` ``(b, k - 1, channels)`` as the input before ``x`` (None: zeros)."""
    if context is not None:  # a later tile of a long sequence: the context's outputs are dropped
        k = weight.shape[-1]
        return causal_conv_silu(torch.cat([context.to(x.dtype), x], dim=1), weight, bias)[:, k - 1 :].contiguous()
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _CausalConvSilu.apply(x, weight, bias)
    return F.silu(_conv(x, weight.squeeze(1).to(x.dtype), bias), inplace=True)
