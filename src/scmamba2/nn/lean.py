"""RMSNorm and Dropout that keep less for the backward pass than torch's own on the CPU.

On the CPU, :class:`torch.nn.RMSNorm` runs as a chain of elementwise ops, and autograd keeps the input and the
normalised input (two activations of the input's size); :class:`torch.nn.Dropout` keeps its mask as float32.
These keep the input and one scale per row, and a bool mask. Same parameters and state-dict keys as torch's
modules, the same outputs up to float rounding (RMSNorm; ~1e-6 in float32) and the same random draws (Dropout,
bit for bit): at d_model 256 x 4 layers, batch 32 x ~1,000 tokens, a training step's peak memory drops by ~0.26 GB
(``benchmarks/results/train_step.md``). Off the CPU, and under autocast, torch's own modules run (their fused GPU
kernels and dtype rules).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Dropout", "RMSNorm"]


class _RMSNormFunction(torch.autograd.Function):
    """``x / rms(x) * weight`` over the last dim, storing ``x`` and ``1 / rms`` (one value a row)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
        # The scale in at least float32 (a float16 row norm overflows above 256), without a float32 copy of x.
        acc = torch.promote_types(x.dtype, torch.float32)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc)
        rstd = norm.square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        y = x * rstd
        if weight is not None:
            y.mul_(weight)
        ctx.save_for_backward(x, rstd, weight)
        return y.to(torch.promote_types(x.dtype, weight.dtype) if weight is not None else x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, rstd, weight = ctx.saved_tensors
        xhat = x * rstd
        grad_w = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = (grad * xhat).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        if not ctx.needs_input_grad[0]:
            return None, grad_w, None
        g = grad * weight if weight is not None else grad.to(rstd.dtype)
        # d/dx of x * r(x): r * (g - xhat * mean(g * xhat)), with r = 1 / rms(x).
        dot = (g * xhat).mean(-1, keepdim=True)
        return g.sub_(xhat.mul_(dot)).mul_(rstd).to(x.dtype), grad_w, None


class RMSNorm(nn.RMSNorm):
    """:class:`torch.nn.RMSNorm` over the last dimension (``normalized_shape`` an int) whose backward pass stores
    only the input and one scale per row (on the CPU; elsewhere torch's own)."""

    def forward(self, x: Tensor) -> Tensor:
        if (len(self.normalized_shape) != 1 or x.device.type != "cpu"
                or torch.is_autocast_enabled(x.device.type)):  # torch's fused kernels / autocast's dtype rules
            return super().forward(x)
        # eps=None: the machine epsilon of the dtype the scale is computed in (float32 for half inputs), as torch's
        eps = self.eps if self.eps is not None else torch.finfo(torch.promote_types(x.dtype, torch.float32)).eps
        return _RMSNormFunction.apply(x, self.weight, eps)


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` whose backward pass stores a bool mask instead of a float one
    (:func:`torch.native_dropout`: the same draws from the generator, so the same mask)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0 or self.inplace:  # pragma: no cover - not used in the package
            return super().forward(x)
        return torch.native_dropout(x, self.p, True)[0]
