"""Bidirectional Mamba2: one shared mixer run forwards and on the per-sample reversed sequence.

Sequences are right-padded. Both directions are causal scans over a sequence whose padding sits at the
end (``reverse_valid`` keeps it there), so valid positions never see padding in either direction and a
sample's output does not depend on how much padding it carries.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .lean import Dropout, RMSNorm
from .long_inference import shared_projection_sweeps
from .long_training import tiled_training_mix
from .mamba2 import Mamba2Block

__all__ = ["BiMamba2Encoder", "BiMamba2Layer", "maybe_compile", "reverse_valid", "valid_lengths"]

logger = logging.getLogger(__name__)


def maybe_compile(fn, **compile_kwargs):
    """``torch.compile(fn)`` that falls back to eager ``fn`` (with a logged warning) if compiling fails.

    Compilation happens lazily at the first call, so the fallback is decided there: if the compiled
    function raises, the call is repeated eagerly and every later call stays eager.
    """
    try:
        compiled = torch.compile(fn, **compile_kwargs)
    except Exception as err:  # e.g. an unsupported Python version
        logger.warning("torch.compile unavailable (%s); running eagerly", err)
        return fn
    failed = False

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except Exception as err:
                failed = True
                logger.warning("torch.compile of %s failed (%s: %s); falling back to eager", fn, type(err).__name__, err)
        return fn(*args, **kwargs)

    return wrapper


def valid_lengths(padding_mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """Number of valid positions per sample, checking that padding is a suffix.

    Parameters
    ----------
    padding_mask : Tensor or None
        ``(b, l)`` bool, True = padding; None means no padding.
    batch, length : int
        Expected shape.
    device : torch.device
        Device of the result when ``padding_mask`` is None.

    Returns
    -------
    Tensor
        ``(b,)`` int64 lengths.

    Raises
    ------
    ValueError
        If the mask has the wrong shape, or a sample has padding before a valid position (left or
        interior padding).
    """
    if padding_mask is None:
        return torch.full((batch,), length, dtype=torch.long, device=device)
    if padding_mask.shape != (batch, length):
        raise ValueError(f"padding_mask must have shape {(batch, length)}, got {tuple(padding_mask.shape)}")
    pad = padding_mask.bool()
    if length > 1 and (pad[:, :-1] & ~pad[:, 1:]).any():
        raise ValueError(
            "padding_mask must mark right padding only (True only after the last valid position of each "
            "sample); found padding before a valid position. Right-pad the sequences."
        )
    return length - pad.sum(dim=1)


def reverse_valid(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse, per sample, the first ``lengths[i]`` positions along dim 1; padding stays at the end.

    Parameters
    ----------
    x : Tensor
        ``(b, l, ...)``.
    lengths : Tensor
        ``(b,)`` integer valid lengths, each in ``[0, l]``.

    Returns
    -------
    Tensor
        Same shape as ``x``. The map is an involution: ``reverse_valid(reverse_valid(x, n), n) == x``.

    On the CPU the rows are flipped one by one (``flip`` of the whole batch when no row is padded), and the
    gradient is the same reversal of the incoming gradient (a permutation that is its own inverse): 2.5-5x
    faster than the ``gather`` used elsewhere, whose backward is a scatter.
    """
    if x.device.type == "cpu":
        return _ReverseValid.apply(x, lengths)
    return _reverse_gather(x, lengths)


def _reverse_gather(x: Tensor, lengths: Tensor) -> Tensor:
    batch, length = x.shape[:2]
    pos = torch.arange(length, device=x.device).expand(batch, length)  # (b, l)
    n = lengths.to(device=x.device, dtype=torch.long).unsqueeze(1)  # (b, 1)
    index = torch.where(pos < n, n - 1 - pos, pos)  # (b, l): mirrored inside the valid part
    index = index.reshape(batch, length, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, index)


def _reverse_rows(x: Tensor, lengths: list[int]) -> Tensor:
    if all(n == x.shape[1] for n in lengths):
        return x.flip(1)
    out = torch.empty_like(x)
    for i, n in enumerate(lengths):
        out[i, :n] = x[i, :n].flip(0)
        out[i, n:] = x[i, n:]
    return out


class _ReverseValid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lengths: Tensor) -> Tensor:
        ctx.lengths = [int(n) for n in lengths.tolist()]
        return _reverse_rows(x, ctx.lengths)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _reverse_rows(grad, ctx.lengths), None


class BiMamba2Layer(nn.Module):
    """Pre-norm residual bidirectional Mamba2 layer: ``x + dropout(fwd(norm x) + bwd(norm x))``.

    One :class:`Mamba2Block` (one set of weights) runs on ``norm(x)`` and on its per-sample reversal: one
    ``in_proj`` of ``norm(x)`` (reversed for the backward direction), one conv + scan over the doubled batch,
    the backward output reversed back, the two gated norms summed, one ``out_proj``. This equals the sum of
    the block run on each direction. Outputs at padded positions are zero.

    Parameters
    ----------
    d_model, d_state, d_conv, expand, headdim, chunk_size :
        Passed to :class:`Mamba2Block`.
    dropout : float
        Dropout on the mixer output, before the residual sum.
    norm_eps : float
        Epsilon of the pre-norm and of the block's gated norm.
    use_kernels : bool or None
        Passed to :class:`Mamba2Block`.
    tile_len : int or None
        Passed to :class:`Mamba2Block`: sequences longer than this are scanned ``tile_len`` tokens at a time,
        carrying the state. In inference the tiles are swept twice so that both directions still share each
        tile's projections (:mod:`scmamba2.nn.long_inference`; a padded batch sweeps once per direction); in
        training each tile's scan uses the hand-written backward, sequences of one length run every step on
        tile-sized tensors (:mod:`scmamba2.nn.long_training`), and beyond the ``recompute_tokens`` budget each
        tile's conv + scan is also recomputed in the backward pass, so one long cell trains in memory linear in
        its length with a small constant.
    recompute_tokens : int or None
        Training memory: a batch of more than this many tokens (padding included) runs the pre-norm, ``in_proj``,
        the conv, the scan and the gated norm (whose intermediates are most of a layer's activation memory) under
        activation checkpointing in slices of about ``slice_tokens`` tokens (whole sequences; at most this
        many), so the layer stores little more than its input and ``out_proj``'s input, and the backward pass
        holds one slice's intermediates at a time, at ~0.85x the step's speed
        (``benchmarks/results/train_step.md``). A batch within it stores everything. None (default) never
        recomputes.
    manual_backward : bool
        Passed to :class:`Mamba2Block`: the scan's hand-written backward pass (default; False = autograd).
    slice_tokens : int or None
        Without autograd (validation, inference), a batch of more tokens than this runs the projections, the
        conv, the scan and the gated norm in slices of about this many tokens (whole sequences), so a forward
        pass holds one slice's intermediates at a time (same result, no recomputation); the slices recomputed
        under ``recompute_tokens`` are of this size too. None: the whole batch at once, and recomputed slices
        of ``recompute_tokens``.
    """

    mixer = "add"

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        chunk_size: int = 64,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        use_kernels: bool | None = None,
        tile_len: int | None = 4096,
        recompute_tokens: int | None = None,
        slice_tokens: int | None = 4096,
        manual_backward: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("recompute_tokens", recompute_tokens), ("slice_tokens", slice_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        self.recompute_tokens = recompute_tokens
        self.slice_tokens = slice_tokens
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.block = Mamba2Block(
            d_model,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            headdim=headdim,
            chunk_size=chunk_size,
            norm_eps=norm_eps,
            use_kernels=use_kernels,
            tile_len=tile_len,
            manual_backward=manual_backward,
        )
        self.dropout = Dropout(dropout)

    def _normed(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """The pre-norm of ``x``, with finite zeros at padding (nan/inf there could not leak through 0 * nan)."""
        h = self.norm(x)
        return h if padding_mask is None else h.masked_fill(padding_mask.unsqueeze(-1), 0.0)

    def _mix_both(self, x: Tensor, padding_mask: Tensor | None, lengths: Tensor) -> Tensor:
        """``fwd(h) + reverse(fwd(reverse(h)))`` of the block for ``h = norm(x)``, ``(b, l, d_model)``, with one
        ``in_proj`` and one ``out_proj``.

        Both projections act per position, so ``in_proj(reverse(h)) = reverse(in_proj(h))`` and the two
        directions' ``out_proj`` outputs sum to ``out_proj`` of the summed inputs: the projections, most of
        the block's arithmetic, run on ``b`` sequences rather than ``2b``. Only the conv, the scan and the
        gated norm run on the doubled batch. Under autograd, a batch of more than ``recompute_tokens`` tokens
        runs the pre-norm, ``in_proj`` and on to the gated norm in slices of about ``slice_tokens`` tokens (whole
        sequences), each recomputed in the backward pass (:func:`torch.utils.checkpoint.checkpoint`) from the
        slice of ``x``, which the residual sum keeps anyway; without autograd, a batch of more than
        ``slice_tokens`` tokens runs in slices of about that many, projections included.
        """
        block = self.block
        batch, length = x.shape[:2]
        recording = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        tokens = self.recompute_tokens if recording else self.slice_tokens  # more than this: slices
        size = min(t for t in (tokens, self.slice_tokens) if t is not None) if tokens is not None else None
        per_slice = batch if size is None else max(1, size // max(length, 1))  # whole sequences a slice
        pieces = [(s, s + per_slice, None if padding_mask is None else padding_mask[s : s + per_slice])
                  for s in range(0, batch, per_slice)]
        if not recording and per_slice < batch:
            # Without autograd the projections run per slice too: one slice's in_proj output at a time.
            out = x.new_empty(batch, length, block.out_proj.out_features)
            for a, b, mask in pieces:
                out[a:b] = self._mix_both(x[a:b], mask, lengths[a:b])
            return out
        if not recording or tokens is None or batch * length <= tokens:  # within the budget: store everything
            tile = block.tile_len
            if (recording and tile is not None and length > tile and not block._fused(x)
                    and bool((lengths == length).all())):
                return tiled_training_mix(self, x)  # long sequences of one length: tile-sized steps throughout
            mixed = _project_both(self, x, padding_mask, lengths)
        else:
            # Recomputed in the backward pass from the slice's input alone (the norm and in_proj included: their
            # outputs, 1x and 4.6x the input's size, are then not stored for the whole batch).
            # x.split, not x[a:b]: the gradient of the slices is then one cat, where each x[a:b] would give back a
            # zero-filled gradient of the whole x (11 full-size fills and sums a layer at 32 x 1,026 tokens).
            parts = [checkpoint(_project_both, self, xs, mask, lengths[a:b], True, use_reentrant=False)
                     for xs, (a, b, mask) in zip(x.split(per_slice), pieces)]
            mixed = parts[0] if len(parts) == 1 else torch.cat(parts)
        return block.out_proj_both(mixed)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Apply the layer.

        Parameters
        ----------
        x : Tensor
            ``(b, l, d_model)``.
        padding_mask : Tensor or None
            ``(b, l)`` bool, True = padding, right padding only.

        Returns
        -------
        Tensor
            ``(b, l, d_model)``, zero at padded positions.
        """
        batch, length, _ = x.shape
        lengths = valid_lengths(padding_mask, batch, length, x.device)
        tile = self.block.tile_len
        if not torch.is_grad_enabled() and tile is not None and length > tile and not self.block._fused(x):
            # Long-sequence inference, tile by tile (the pure path; the fused one does not tile, so it keeps the
            # doubled batch). Sequences of one length: both directions share each tile's projections
            # (nn/long_inference.py); a padded batch: one direction at a time, accumulated in place.
            h = self._normed(x, padding_mask)
            if bool((lengths == length).all()):
                out = shared_projection_sweeps(self, h)
            else:
                out = self.block(h)  # forward direction, (b, l, d)
                out += reverse_valid(self.block(reverse_valid(h, lengths)), lengths)
            out = x + self.dropout(out)
        else:
            out = x + self.dropout(self._mix_both(x, padding_mask, lengths))
        if padding_mask is not None:
            out = out.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return out


def _project_both(
    layer: BiMamba2Layer, x: Tensor, padding_mask: Tensor | None, lengths: Tensor, recompute: bool = False
) -> Tensor:
    """The layer's pre-norm and its block's ``in_proj`` of ``x`` (``(b, l, d_model)``), then
    :func:`_both_directions`."""
    block = layer.block
    projected = block.in_proj_as(layer._normed(x, padding_mask), x.dtype)  # x's dtype under autocast too (CPU)
    z, xbcdt = torch.split(projected, [block.d_inner, block.conv_dim + block.nheads], dim=-1)
    return _both_directions(block, z, xbcdt, lengths, recompute)


def _both_directions(
    block: Mamba2Block, z: Tensor, xbcdt: Tensor, lengths: Tensor, recompute: bool = False
) -> Tensor:
    """Scan ``xbcdt`` forwards and per-sample reversed in one doubled batch; gated norms of both, summed.

    ``z`` ``(b, l, d_inner)`` and ``xbcdt`` ``(b, l, conv_dim + nheads)`` are the forward sequence's
    ``in_proj`` output. Returns ``norm(y_fwd, z) + reverse(norm(y_bwd, reverse(z)))``, ``(b, l, d_inner)``:
    the gate and the norm act per position, so the backward direction's norm is taken after reversing its
    scan output back, with the forward sequence's ``z``.
    """
    batch = z.shape[0]
    both = torch.cat([xbcdt, reverse_valid(xbcdt, lengths)], dim=0)  # (2b, l, conv_dim + nheads)
    xbc, dt = torch.split(both, [block.conv_dim, block.nheads], dim=-1)
    y = _conv_scan(block, xbc, dt, recompute)  # (2b, l, d_inner)
    return block.norm.summed([y[:batch], reverse_valid(y[batch:], lengths)], z)  # both in forward order


def _conv_scan(block: Mamba2Block, xbc: Tensor, dt: Tensor, recompute: bool = False) -> Tensor:
    """:meth:`Mamba2Block.conv_scan`'s output; under autograd, a sequence longer than ``block.tile_len`` on the
    pure-PyTorch path runs tile by tile with the conv context and the SSM state carried from the one before (the
    gradient flows back through them). Each tile's scan is then short enough for the hand-written backward,
    which stores less than autograd's: at 8k-16k tokens ~20-25 % less memory at about the untiled speed. With
    ``recompute`` (the layer's ``recompute_tokens`` budget is exceeded) each tile also runs under activation
    checkpointing, so the backward pass holds one tile's intermediates at a time: less memory again, at the price
    of recomputing conv + scan (``benchmarks/results/backbone.md``). The result equals the untiled scan."""
    length, tile = xbc.shape[1], block.tile_len
    recording = torch.is_grad_enabled() and (xbc.requires_grad or dt.requires_grad)
    if not recording or tile is None or length <= tile or block._fused(xbc):
        return block.conv_scan(xbc, dt)[0]
    ys, state = [], None
    for xbc_tile, dt_tile in zip(xbc.split(tile, dim=1), dt.split(tile, dim=1)):  # split: one cat in the backward
        piece = (xbc_tile, dt_tile, state)
        if recompute:  # conv + scan draw no random numbers: no RNG state to save
            y, state = checkpoint(block.conv_scan, *piece, use_reentrant=False, preserve_rng_state=False)
        else:
            y, state = block.conv_scan(*piece)
        ys.append(y)
    return torch.cat(ys, dim=1)


class BiMamba2Encoder(nn.Module):
    """A stack of :class:`BiMamba2Layer` followed by a final RMSNorm.

    Parameters
    ----------
    d_model : int
        Model width.
    n_layers : int
        Number of layers.
    d_state, d_conv, expand, headdim, chunk_size, dropout, norm_eps, use_kernels :
        Passed to every :class:`BiMamba2Layer`.
    gradient_checkpointing : bool
        Recompute each layer in the backward pass (``torch.utils.checkpoint``, non-reentrant); only
        active in training mode with gradients enabled.
    tile_len : int or None
        Passed to every :class:`BiMamba2Layer`: tiling of long sequences, with the state carried across tiles
        (inference and training; see there). None = off.
    recompute_tokens, slice_tokens : int or None
        Passed to every :class:`BiMamba2Layer`: training-time recomputation of the scan in slices of
        about this many tokens (None = off, the default: faster, more memory), and the slices of a
        forward pass without autograd.
    manual_backward : bool
        Passed to every :class:`BiMamba2Layer`: the scan's hand-written backward pass (default; False =
        autograd).
    compile : bool
        Wrap each block's conv + scan (:meth:`Mamba2Block.conv_scan`) with :func:`maybe_compile`
        (``torch.compile``, eager fallback with a warning if compiling fails). Off by default; see
        ``benchmarks/results/backbone_profile.md``.
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        chunk_size: int = 64,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        gradient_checkpointing: bool = False,
        use_kernels: bool | None = None,
        tile_len: int | None = 4096,
        compile: bool = False,
        recompute_tokens: int | None = None,
        slice_tokens: int | None = 4096,
        manual_backward: bool = True,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            BiMamba2Layer(
                d_model,
                d_state=d_state,
                d_conv=d_conv,
                expand=expand,
                headdim=headdim,
                chunk_size=chunk_size,
                dropout=dropout,
                norm_eps=norm_eps,
                use_kernels=use_kernels,
                tile_len=tile_len,
                recompute_tokens=recompute_tokens,
                slice_tokens=slice_tokens,
                manual_backward=manual_backward,
            )
            for _ in range(n_layers)
        )
        if compile:
            for layer in self.layers:  # an instance attribute: parameter names and state dicts are unchanged
                layer.block.conv_scan = maybe_compile(layer.block.conv_scan)
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Encode ``x`` of shape ``(b, l, d_model)``; ``padding_mask`` as in :meth:`BiMamba2Layer.forward`.

        Returns
        -------
        Tensor
            ``(b, l, d_model)``, zero at padded positions.
        """
        valid_lengths(padding_mask, x.shape[0], x.shape[1], x.device)  # fail early on a bad mask
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if use_ckpt:
                x = checkpoint(layer, x, padding_mask, use_reentrant=False)
            else:
                x = layer(x, padding_mask)
        x = self.norm(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return x
