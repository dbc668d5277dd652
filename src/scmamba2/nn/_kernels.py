"""The one import guard for the optional fused CUDA kernels (``pip install scmamba2[cuda]``).

``HAS_KERNELS`` is True when ``mamba_ssm``'s Triton SSD scan imports; it is what makes the fused path. The
causal convolution uses ``causal_conv1d``'s kernel where that imports too (``HAS_CONV_KERNEL``, widths 2-4)
and the block's own PyTorch convolution otherwise, so a machine with Triton but no compiled ``causal_conv1d``
still gets the fused scan. The wrappers below take the parameters of :class:`scmamba2.nn.mamba2.Mamba2Block`
as they are (no new names), so a checkpoint works unchanged on either path. Nothing else in the package imports
these libraries.
"""

from __future__ import annotations

from torch import Tensor

try:  # pragma: no cover - depends on the optional CUDA extras
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _mamba_chunk_scan_combined

    HAS_KERNELS = True
except Exception:  # ImportError, or a broken install raising at import time
    _mamba_chunk_scan_combined = None
    HAS_KERNELS = False

try:  # pragma: no cover - depends on the optional CUDA extras
    from causal_conv1d import causal_conv1d_fn as _causal_conv1d_fn

    HAS_CONV_KERNEL = True
except Exception:  # ImportError, or a broken CUDA build raising at import time
    _causal_conv1d_fn = None
    HAS_CONV_KERNEL = False

__all__ = ["HAS_CONV_KERNEL", "HAS_KERNELS", "causal_conv_silu", "chunk_scan", "conv_kernel_usable",
           "kernels_usable"]


def kernels_usable(tensor: Tensor) -> bool:
    """Whether the fused scan can run on ``tensor`` (mamba_ssm installed and a CUDA tensor)."""
    return HAS_KERNELS and tensor.is_cuda


def conv_kernel_usable(d_conv: int) -> bool:
    """Whether ``causal_conv1d``'s kernel is installed and takes this convolution width."""
    return HAS_CONV_KERNEL and 2 <= d_conv <= 4


def causal_conv_silu(xbc: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Causal depthwise conv + SiLU with the fused kernel.

    Parameters
    ----------
    xbc : Tensor
        ``(b, l, d)`` channels-last activations.
    weight : Tensor
        ``Conv1d.weight`` of shape ``(d, 1, w)``.
    bias : Tensor or None
        ``Conv1d.bias`` of shape ``(d,)``.

    Returns
    -------
    Tensor
        ``(b, l, d)``.
    """
    out = _causal_conv1d_fn(xbc.transpose(1, 2).contiguous(), weight.squeeze(1), bias, activation="silu")
    return out.transpose(1, 2)


def chunk_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, D: Tensor, dt_bias: Tensor
) -> Tensor:
    """Fused SSD scan including ``softplus(dt + dt_bias)`` and the ``D`` skip.

    Shapes as in :func:`scmamba2.nn.ssd.ssd_chunked`, except that ``dt`` is the raw projection (before
    bias and softplus). Returns ``y`` of shape ``(b, l, h, p)``.
    """
    return _mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, z=None, dt_bias=dt_bias, dt_softplus=True, return_final_states=False
    )

