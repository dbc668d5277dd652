"""The sum of gated RMSNorms over the scan directions, with a hand-written backward pass.

The bidirectional layer needs ``sum_k rmsnorm(y_k * silu(z)) * weight`` for its two directions' scan outputs
``y_k`` and the shared gate ``z``. Under autograd, torch runs this as a chain of elementwise operations that keeps
most of its intermediates (the stacked outputs, the gated values, the normalised values) for the backward pass.
:func:`gated_norm_sum` keeps only the inputs and one scale per row and direction, and recomputes the rest in a
backward pass of fewer, larger steps (``benchmarks/results/train_step.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gated_norm_sum"]


class _GatedNormSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, weight: Tensor, eps: float, group: int, *ys: Tensor) -> Tensor:
        gate = F.silu(z)
        out, scales = None, []
        for y in ys:
            gated = (y * gate).unflatten(-1, (-1, group))  # (..., groups, group)
            norm = torch.linalg.vector_norm(gated, dim=-1, keepdim=True)
            scale = norm.square_().div_(group).add_(eps).rsqrt_()  # 1 / rms, one per row and group
            scales.append(scale)
            out = gated.mul_(scale) if out is None else out.addcmul_(gated, scale)
        ctx.group = group
        ctx.save_for_backward(z, weight, *ys, *scales)
        return out.flatten(-2).mul_(weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, weight, *rest = ctx.saved_tensors
        k = len(rest) // 2
        ys, scales, group = rest[:k], rest[k:], ctx.group
        gate = F.silu(z)
        grad_w = (grad * weight).unflatten(-1, (-1, group))  # gradient of the normalised sum
        d_weight = torch.zeros_like(weight, dtype=grad.dtype)
        d_gate = torch.zeros_like(z)
        d_ys = []
        for y, scale in zip(ys, scales):
            normed = (y * gate).unflatten(-1, (-1, group)).mul_(scale)
            d_weight += (grad * normed.flatten(-2)).flatten(0, -2).sum(0)
            # d/d(gated) of gated * scale(gated): scale * (g - normed * mean(g * normed)) per group.
            dot = (grad_w * normed).mean(-1, keepdim=True)
            d_gated = normed.mul_(dot).neg_().add_(grad_w).mul_(scale).flatten(-2)
            d_ys.append(d_gated * gate)
            d_gate.addcmul_(d_gated, y)
        d_z = torch.ops.aten.silu_backward(d_gate, z)  # d_gate * silu'(z), one fused pass
        return (d_z, d_weight.to(weight.dtype), None, None, *d_ys)


def gated_norm_sum(ys: list[Tensor], z: Tensor, weight: Tensor, group: int, eps: float) -> Tensor:
    """``sum_k rmsnorm(ys[k] * silu(z)) * weight``, the RMS taken per ``group`` channels; every tensor
    ``(..., dim)`` of one shape and dtype (the compute dtype: float32 or float64), ``weight`` ``(dim,)``."""
    return _GatedNormSum.apply(z, weight, eps, group, *ys)
