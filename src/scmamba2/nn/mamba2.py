"""The Mamba2 mixer: input projection, causal depthwise conv, SSD scan, gated RMSNorm, output projection.

Parameter names and shapes follow the reference Mamba2 layout (``in_proj``, ``conv1d``, ``dt_bias``,
``A_log``, ``D``, ``norm.weight``, ``out_proj``), so the same state dict runs on the pure-PyTorch path
(:func:`scmamba2.nn.ssd.ssd_chunked`) and on the fused CUDA kernels (:mod:`scmamba2.nn._kernels`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _kernels
from .causal_conv import causal_conv_silu
from .gated_norm import gated_norm_sum
from .ssd import ssd_chunked

__all__ = ["GatedRMSNorm", "Mamba2Block", "MANUAL_BACKWARD_MAX_LEN"]

# Sequences longer than this run the scan's backward through autograd even with ``manual_backward``. The limit dates
# from the segment-sum form, whose hand-written backward was 1.1-1.2x slower on one long cell and peaked higher
# (backbone.md, 8k / 16k fwd+bwd); with the factored form it is level (benchmarks/results/scan_backward.md), and
# long training cells are tiled below it anyway (``tile_len``).
MANUAL_BACKWARD_MAX_LEN = 4096
# Scans of more than MANUAL_BACKWARD_MAX_LEN tokens use chunks of at least this length: on one long cell under
# autograd, chunks of 32 hold twice the chunk states of 64 and were ~1.1x slower (16k fwd+bwd 4.6 vs 4.2 s);
# up to that length 32 is as fast or faster (benchmarks/results/chunk_size.md).
LONG_SCAN_CHUNK = 64


class GatedRMSNorm(nn.Module):
    """RMSNorm of ``y * silu(z)`` (gate before norm), normalised per group of ``group_size`` channels.

    Parameters
    ----------
    dim : int
        Number of channels.
    group_size : int, optional
        Channels normalised together; ``dim`` (one group) when omitted. Must divide ``dim``.
    eps : float
        Added to the mean square.
    """

    def __init__(self, dim: int, group_size: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.group_size = dim if group_size is None else group_size
        if dim % self.group_size != 0:
            raise ValueError(f"group_size {self.group_size} must divide dim {dim}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        """Return ``rmsnorm(y * silu(z)) * weight`` in the dtype of ``y``; ``y, z`` are ``(..., dim)`` (``z`` may
        broadcast against ``y``). Computed in float32 (float64 for float64 inputs)."""
        recording = torch.is_grad_enabled() and (y.requires_grad or z.requires_grad or self.weight.requires_grad)
        fp = torch.promote_types(y.dtype, torch.float32)  # float32, or float64 for float64 inputs
        if not recording:  # inference: the same arithmetic, in place on one buffer
            gated = F.silu(z.to(fp))
            gated = gated.mul_(y) if gated.shape == y.shape else gated * y  # z may broadcast against y
            grouped = gated.unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
            inv_rms = grouped.square().mean(-1, keepdim=True).add_(self.eps).rsqrt_()
            return grouped.mul_(inv_rms).flatten(-2).mul_(self.weight.to(fp)).to(y.dtype)
        gated = y.to(fp) * F.silu(z.to(fp))
        grouped = gated.unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
        normed = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed.flatten(-2) * self.weight.to(fp)).to(y.dtype)

    def summed(self, ys: list[Tensor], z: Tensor) -> Tensor:
        """``sum(self(y, z) for y in ys)`` (a bidirectional layer's two directions, one gate). Under autograd on
        the CPU in the compute dtype (no autocast) through :func:`~scmamba2.nn.gated_norm.gated_norm_sum`, which
        keeps only the inputs and one scale per row for the backward pass; the same values either way."""
        fp = torch.promote_types(ys[0].dtype, torch.float32)
        recording = torch.is_grad_enabled() and any(t.requires_grad for t in (*ys, z, self.weight))
        if recording and z.device.type == "cpu" and all(t.dtype == fp for t in (*ys, z, self.weight)):
            with torch.autocast("cpu", enabled=False):  # elementwise only: the inputs' dtype, under autocast too
                return gated_norm_sum(list(ys), z, self.weight, self.group_size, self.eps)
        out = self(ys[0], z)
        for y in ys[1:]:
            out = out + self(y, z)
        return out


class Mamba2Block(nn.Module):
    """Mamba2 mixer (no residual, no outer norm): ``(b, l, d_model) -> (b, l, d_model)``, causal in ``l``.

    Parameters
    ----------
    d_model : int
        Model width.
    d_state : int
        SSM state size ``n`` per group.
    d_conv : int
        Width of the causal depthwise convolution.
    expand : int
        ``d_inner = expand * d_model``.
    headdim : int
        Channels per head ``p``; ``nheads = d_inner // headdim``.
    ngroups : int
        Number of ``(B, C)`` groups shared by the heads; must divide ``nheads``.
    chunk_size : int
        Chunk length of the SSD scan (a speed knob: the output does not depend on it).
    dt_min, dt_max, dt_init_floor : float
        ``dt`` at initialisation is log-uniform in ``[dt_min, dt_max]``, floored at ``dt_init_floor``;
        ``dt_bias`` stores its inverse softplus.
    A_init_range : tuple of float
        ``A = -exp(A_log)`` with ``exp(A_log)`` uniform in this range at initialisation.
    bias : bool
        Bias in ``in_proj`` and ``out_proj``.
    conv_bias : bool
        Bias in ``conv1d``.
    norm_eps : float
        Epsilon of the gated RMSNorm.
    use_kernels : bool or None
        ``None``: use the fused CUDA kernels when installed and the input is on CUDA; ``True``: the same,
        but fail at construction if they are not installed; ``False``: always the pure-PyTorch path.
    tile_len : int or None
        Pure-PyTorch path: without autograd recording, sequences longer than this run in tiles of ``tile_len``
        tokens with the SSM and conv states carried across, so peak memory depends on ``tile_len``, not on the
        sequence length; the bidirectional layer also tiles training this way (:mod:`scmamba2.nn.bidirectional`).
        None disables tiling. The output does not depend on it.
    manual_backward : bool
        The pure-PyTorch scan under autograd uses its hand-written backward pass
        (:func:`~scmamba2.nn.ssd.ssd_chunked`; default) on sequences of up to :data:`MANUAL_BACKWARD_MAX_LEN`
        tokens: ~40 % fewer bytes per token kept for the backward pass at the same speed. Longer sequences, and
        every sequence with False, let autograd differentiate the scan (same gradients up to rounding).

    Notes
    -----
    ``dt_bias``, ``A_log`` and ``D`` carry ``_no_weight_decay = True`` as a hint for optimiser grouping.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range: tuple[float, float] = (1, 16),
        bias: bool = False,
        conv_bias: bool = True,
        norm_eps: float = 1e-5,
        use_kernels: bool | None = None,
        tile_len: int | None = 4096,
        manual_backward: bool = True,
    ) -> None:
        super().__init__()
        self.manual_backward = manual_backward
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.ngroups = ngroups
        self.chunk_size = chunk_size
        if self.d_inner % headdim != 0:
            raise ValueError(
                f"d_inner = expand * d_model = {self.d_inner} is not divisible by headdim = {headdim}; "
                "choose d_model, expand and headdim so that it is"
            )
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups != 0:
            raise ValueError(f"nheads = {self.nheads} is not divisible by ngroups = {ngroups}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if use_kernels and not _kernels.HAS_KERNELS:
            raise RuntimeError(
                "use_kernels=True but mamba_ssm (its Triton SSD scan) is not importable; "
                "install them with `pip install scmamba2[cuda]` or pass use_kernels=None"
            )
        self.use_kernels = use_kernels
        if tile_len is not None and tile_len < 1:
            raise ValueError(f"tile_len must be >= 1 or None, got {tile_len}")
        self.tile_len = tile_len

        self.conv_dim = self.d_inner + 2 * ngroups * d_state  # channels of x, B, C
        d_in_proj = self.d_inner + self.conv_dim + self.nheads  # [z, x, B, C, dt]
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim, padding=d_conv - 1, bias=conv_bias
        )

        # dt_bias = softplus^{-1}(dt), dt log-uniform in [dt_min, dt_max].
        log_dt = torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        A = torch.empty(self.nheads).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // ngroups, eps=norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def in_proj_as(self, h: Tensor, dtype: torch.dtype, rows: slice | None = None) -> Tensor:
        """``in_proj(h)`` (only its outputs ``rows``, when given) in ``dtype``. Under bfloat16 autocast on the CPU the
        matmul runs in bfloat16 and its output comes back to ``dtype``: the conv, the scan's elementwise steps and the
        gated norm run faster, and sum more exactly, in float32 there (``benchmarks/results/train_step.md``)."""
        if rows is None:
            out = self.in_proj(h)  # the module itself (its hooks run)
        else:
            out = F.linear(h, self.in_proj.weight[rows], None if self.in_proj.bias is None else self.in_proj.bias[rows])
        return out.to(dtype) if out.dtype != dtype and h.device.type == "cpu" else out

    def out_proj_both(self, mixed: Tensor) -> Tensor:
        """``out_proj`` of the two directions' summed gated-norm outputs ``mixed``: one matmul, the bias added once
        for each direction (the sum of the two directions' ``out_proj``)."""
        out = self.out_proj(mixed)
        return out if self.out_proj.bias is None else out + self.out_proj.bias

    def _fused(self, u: Tensor) -> bool:
        return self.use_kernels is not False and _kernels.kernels_usable(u)

    def forward(self, u: Tensor) -> Tensor:
        """Mix along the sequence, causally.

        Parameters
        ----------
        u : Tensor
            ``(b, l, d_model)``.

        Returns
        -------
        Tensor
            ``(b, l, d_model)``; output ``t`` depends only on inputs ``<= t``.

        Notes
        -----
        Without autograd recording (``torch.no_grad`` / ``inference_mode``) on the pure-PyTorch path, a
        sequence longer than ``self.tile_len`` is processed ``tile_len`` tokens at a time, carrying the SSM
        state and the causal-conv context (last ``d_conv - 1`` inputs) from tile to tile: the result
        equals the untiled one, and the large ``in_proj`` activations exist for one tile at a time.
        """
        batch, length, _ = u.shape
        tile = self.tile_len
        if self._fused(u):
            return self._mix_fused(u)
        if tile is None or length <= tile or torch.is_grad_enabled():
            return self._mix(u)[0]
        out = u.new_empty(batch, length, self.d_model)
        state = None
        for start in range(0, length, tile):
            out[:, start : start + tile], state = self._mix(u[:, start : start + tile], state)
        return out

    def _mix_fused(self, u: Tensor) -> Tensor:
        """The block on the fused CUDA kernels (same parameters as :meth:`_mix`)."""
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        return self.out_proj(self.norm(self.conv_scan(xbc, dt)[0], z))

    def conv_scan(
        self, xbc: Tensor, dt: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """The sequence-mixing middle of the block, on inputs already projected by ``in_proj``.

        Parameters
        ----------
        xbc : Tensor
            ``(b, l, conv_dim)``: the ``x, B, C`` channels of ``in_proj``'s output.
        dt : Tensor
            ``(b, l, nheads)``: the raw ``dt`` channels (before ``dt_bias`` and softplus).
        state : tuple, optional
            ``(conv_context, ssm_state)`` from the previous call (pure-PyTorch path only); None starts a
            sequence.

        Returns
        -------
        y : Tensor
            ``(b, l, d_inner)``: the scan output with the ``D`` skip, before the gated norm.
        new_state : tuple or None
            The state after the last position (None on the fused path).

        Notes
        -----
        ``in_proj`` acts on each position alone, so a caller that needs the block on a sequence and on its
        reversal (the bidirectional layer) can project once and reverse the projection.
        """
        batch, length, _ = xbc.shape
        h, p, g, n = self.nheads, self.headdim, self.ngroups, self.d_state
        fp = torch.promote_types(xbc.dtype, torch.float32)  # decays in float32, or float64 for float64 inputs
        A = -torch.exp(self.A_log.to(fp))  # (h,)
        if state is None and self._fused(xbc):
            if _kernels.conv_kernel_usable(self.d_conv):
                xbc = _kernels.causal_conv_silu(xbc, self.conv1d.weight, self.conv1d.bias)
            else:  # the fused scan without causal_conv1d: the block's own convolution
                xbc = self._causal_conv_silu(xbc, None)
            x, B, C = torch.split(xbc, [self.d_inner, g * n, g * n], dim=-1)
            y = _kernels.chunk_scan(
                x.reshape(batch, length, h, p),
                dt,
                A,
                B.reshape(batch, length, g, n),
                C.reshape(batch, length, g, n),
                self.chunk_size,
                D=self.D,
                dt_bias=self.dt_bias,
            )
            return y.reshape(batch, length, self.d_inner), None
        context, ssm_state = (None, None) if state is None else state
        # Conv context for the next tile: the last d_conv - 1 inputs (with the previous context in front).
        keep = self.d_conv - 1
        recent = xbc[:, max(xbc.shape[1] - keep, 0) :]  # a view: F.pad copies even when it pads nothing
        recent = recent if context is None else torch.cat([context, recent], dim=1)
        if recent.shape[1] < keep:
            recent = F.pad(recent, (0, 0, keep - recent.shape[1], 0))  # zeros before the sequence start
        next_context = recent[:, recent.shape[1] - keep :].clone()  # (b, d_conv - 1, conv_dim)
        xbc = self._causal_conv_silu(xbc, context)  # (b, l, conv_dim)
        x, B, C = torch.split(xbc, [self.d_inner, g * n, g * n], dim=-1)
        dt = F.softplus(dt.to(fp) + self.dt_bias.to(fp))  # (b, l, h)
        y, ssm_state = ssd_chunked(
            x.reshape(batch, length, h, p),
            dt,
            A,
            B.reshape(batch, length, g, n),
            C.reshape(batch, length, g, n),
            self.chunk_size if length <= MANUAL_BACKWARD_MAX_LEN else max(self.chunk_size, LONG_SCAN_CHUNK),
            initial_state=ssm_state,
            return_final_state=True,
            D=self.D,
            manual_backward=self.manual_backward and length <= MANUAL_BACKWARD_MAX_LEN,
        )  # (b, l, h, p), D skip included
        return y.reshape(batch, length, self.d_inner), (next_context, ssm_state)

    def _causal_conv_silu(self, xbc: Tensor, context: Tensor | None) -> Tensor:
        """``silu(causal depthwise conv(xbc))`` with ``context`` (``(b, d_conv - 1, conv_dim)``) as left input.

        ``context`` None means zeros (the start of a sequence); see :mod:`scmamba2.nn.causal_conv`.
        """
        return causal_conv_silu(xbc, self.conv1d.weight, self.conv1d.bias, context)

    def _mix(
        self, u: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Pure-PyTorch block on ``u`` (``(b, l, d_model)``), continuing from ``state`` when given.

        ``state`` is ``(conv_context (b, d_conv - 1, conv_dim), ssm_state (b, h, p, n))`` as returned by
        the previous call on the preceding tokens; None starts a sequence. Returns ``(y, new_state)``.
        """
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        y, new_state = self.conv_scan(xbc, dt, state)
        return self.out_proj(self.norm(y, z)), new_state

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, nheads={self.nheads}, headdim={self.headdim}, "
            f"d_state={self.d_state}, ngroups={self.ngroups}, chunk_size={self.chunk_size}"
        )
