"""Inference on sequences longer than a tile with one ``in_proj`` and one ``out_proj`` for both directions.

A bidirectional layer runs its block on ``h = norm(x)`` and on ``h`` reversed. On a short sequence both directions
share the projections (``in_proj`` of ``h`` reversed is ``in_proj(h)`` reversed), which are most of a layer's
arithmetic. A long sequence runs tile by tile to bound memory, and the two directions then sweep the tiles in
opposite orders, so each tile used to be projected twice (``benchmarks/results/backbone.md``: 29k tokens/s up to
4k tokens, 19-20k beyond, at d_model 512 on two threads).

Here the tiles are swept twice:

1. **right to left**: each tile's ``x, B, C, dt`` channels (``in_proj``'s rows after ``z``: 1,168 of 2,192 at
   d_model 512), kept for sweep 2, and the backward direction's state leaving the tile (the conv's last inputs and
   the SSM state, from the conv of ``x`` and ``B`` and one matmul, no outputs): the state it enters the tile to the
   left with;
2. **left to right, both directions together**: the tile's ``z`` rows of ``in_proj``, the forward direction
   continuing from the previous tile and the backward direction starting from the state of sweep 1, as one
   doubled batch, their gated norms summed and one ``out_proj``.

So every projection runs once per token, as on a short sequence. Memory: the kept scan channels (4.7 KB a token
at d_model 512, in the compute dtype) plus one tile's intermediates; the 60,000-token x 12-layer cell peaks at
1.85 GB in 29 s (1.56 GB in 38 s with a sweep per direction; ``benchmarks/results/backbone.md``). One d_model 512 layer at 16k
tokens runs 1.38x faster than with a sweep per direction (one thread). The result equals the untiled layer up to
float rounding (``tests/nn/test_long_inference.py``). Sequences of one length only (no padding), so that a tile
holds the same positions in both directions; a padded batch keeps the sweep per direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .causal_conv import causal_conv_silu

__all__ = ["shared_projection_sweeps"]


def shared_projection_sweeps(layer, h: Tensor) -> Tensor:
    """``fwd(h) + reverse(fwd(reverse(h)))`` of ``layer.block`` for ``h = layer.norm(x)`` ``(b, l, d_model)``
    (no padding) in tiles of ``layer.block.tile_len``; without autograd. Returns ``(b, l, d_model)``."""
    block = layer.block
    batch, length, _ = h.shape
    tile, di, cd, nh = block.tile_len, block.d_inner, block.conv_dim, block.nheads
    starts = list(range(0, length, tile))
    fp = h.dtype  # the scan channels in h's dtype, under autocast too (in_proj_as)

    # Sweep 1: every tile's x, B, C, dt channels (kept for sweep 2), and the backward direction's state entering
    # each tile from its right, tile k's from tiles k+1, ...
    scan_inputs: list = [None] * len(starts)
    entering: list = [None] * len(starts)
    state = None
    for k in range(len(starts) - 1, -1, -1):
        scan_inputs[k] = block.in_proj_as(h[:, starts[k] : starts[k] + tile], fp, slice(di, None))
        if k:
            xbc, dt = torch.split(scan_inputs[k].flip(1), [cd, nh], dim=-1)
            state = _exit_state(block, xbc, dt, state)
            entering[k - 1] = state

    # Sweep 2: both directions of each tile as one doubled batch, one in_proj and one out_proj.
    out = h.new_empty(batch, length, block.out_proj.out_features)
    forward_state = None
    for k, start in enumerate(starts):
        z = block.in_proj_as(h[:, start : start + tile], fp, slice(None, di))
        xbcdt, scan_inputs[k] = scan_inputs[k], None
        xbc, dt = torch.split(torch.cat([xbcdt, xbcdt.flip(1)]), [cd, nh], dim=-1)
        both = _stack_states(forward_state, entering[k], block, batch, h)
        y, new = block.conv_scan(xbc, dt, both)
        forward_state = tuple(t[:batch] for t in new)
        mixed = block.norm.summed([y[:batch], y[batch:].flip(1)], z)
        out[:, start : start + tile] = block.out_proj_both(mixed)
    return out


def _exit_state(block, xbc: Tensor, dt: Tensor, state):
    """The state :meth:`Mamba2Block.conv_scan` would return after ``xbc, dt`` ``(b, l, ·)`` entered with ``state``,
    without its outputs: the conv of the ``x`` and ``B`` channels only and one matmul for the SSM state,
    ``S_l = exp(sum_t dt_t A) S_0 + sum_t exp(sum_{u > t} dt_u A) dt_t x_t B_t^T``."""
    batch, length, _ = xbc.shape
    h, p, g, n, keep = block.nheads, block.headdim, block.ngroups, block.d_state, block.d_conv - 1
    fp = torch.promote_types(xbc.dtype, torch.float32)
    context, ssm = (None, None) if state is None else state
    recent = xbc[:, max(length - keep, 0) :]  # the conv's last inputs, from a view (no copy of the tile)
    recent = recent if context is None else torch.cat([context, recent], dim=1)
    if recent.shape[1] < keep:
        recent = F.pad(recent, (0, 0, keep - recent.shape[1], 0))
    next_context = recent[:, recent.shape[1] - keep :].clone()
    used = block.d_inner + g * n  # x and B; C only reads the state out
    conv = block.conv1d
    xb = causal_conv_silu(xbc[..., :used], conv.weight[:used], None if conv.bias is None else conv.bias[:used],
                          None if context is None else context[..., :used])
    x, B = torch.split(xb.to(fp), [block.d_inner, g * n], dim=-1)
    step = F.softplus(dt.to(fp) + block.dt_bias.to(fp))  # dt, (b, l, h)
    log_decay = step * -torch.exp(block.A_log.to(fp))
    # sum_{u > t} of the log-decay, summed from the end so that the terms that matter (near it) are exact
    after = log_decay.flip(1).cumsum(1).flip(1) - log_decay
    weight = step * after.exp()  # dt_t exp(sum_{u > t} dt_u A)
    xs = (x.view(batch, length, h, p) * weight.unsqueeze(-1)).view(batch, length, g, h // g * p)
    with torch.autocast(xbc.device.type, enabled=False):  # the state in the compute dtype, as conv_scan's
        added = torch.einsum("blgn,blgk->bgnk", B.view(batch, length, g, n), xs)  # (b, g, n, r * p)
    added = added.view(batch, g, n, h // g, p).permute(0, 1, 3, 4, 2).reshape(batch, h, p, n)
    if ssm is not None:
        total = log_decay.sum(1).exp()  # (b, h)
        added = added.add_(ssm.to(fp) * total[:, :, None, None])
    return next_context, added


def _stack_states(first, second, block, batch: int, like: Tensor):
    """The conv context and SSM state of the forward (``first``) and backward (``second``) directions stacked along
    the batch (a None state: zeros, the start of a sequence); None when both are None."""
    if first is None and second is None:
        return None
    fp = torch.promote_types(like.dtype, torch.float32)
    zeros = (like.new_zeros(batch, block.d_conv - 1, block.conv_dim),
             torch.zeros(batch, block.nheads, block.headdim, block.d_state, dtype=fp, device=like.device))
    first, second = first or zeros, second or zeros
    return tuple(torch.cat([a, b.to(a.dtype)]) for a, b in zip(first, second))
