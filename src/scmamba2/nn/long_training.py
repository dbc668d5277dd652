"""Training on a sequence longer than a tile, every step on tile-sized tensors.

Under autograd a bidirectional layer projects the whole sequence once, reverses it, and scans the doubled batch tile
by tile (:func:`scmamba2.nn.bidirectional._both_directions`); the projections, the reversal, the gated norms and
their backward passes then stream tensors of the whole sequence (at 64k tokens and d_model 512, 575 MB each). On
two threads those passes are bound by memory bandwidth: forward + backward ran at 9.4k tokens/s at 4k tokens and at
7.6k at 64k (``benchmarks/results/backbone.md``), while on one thread the cost per token did not change.

Here the same arithmetic runs tile by tile: each tile's pre-norm and ``in_proj``; the forward direction over the
tiles in order and the backward direction over the flipped tiles in reverse order, each carrying its state (the
gradient flows back through it); each tile's gated norms and ``out_proj``. Nothing is recomputed and the same
activations are kept, in tile-sized pieces. Sequences of one length (no padding), so that a flipped tile is the
backward direction's view of the same positions; a padded batch keeps the whole-sequence path.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["tiled_training_mix"]


def tiled_training_mix(layer, x: Tensor) -> Tensor:
    """``out_proj`` of ``norm(fwd(h), z) + norm(bwd(h), z)`` for ``h = layer.norm(x)``, ``x`` ``(b, l, d_model)``
    (no padding), in tiles of ``layer.block.tile_len``; the output of :meth:`BiMamba2Layer._mix_both`."""
    block = layer.block
    tile, di, cd, nh = block.tile_len, block.d_inner, block.conv_dim, block.nheads
    tiles = x.split(tile, dim=1)  # not x[:, a:b]: each such slice's gradient would be a zero-filled x
    gates, scan_inputs = [], []
    for x_tile in tiles:
        projected = block.in_proj_as(layer.norm(x_tile), x.dtype)  # x's dtype under autocast
        z, xbcdt = torch.split(projected, [di, cd + nh], dim=-1)
        gates.append(z)
        scan_inputs.append(torch.split(xbcdt, [cd, nh], dim=-1))
    forward, state = [], None
    for xbc, dt in scan_inputs:
        y, state = block.conv_scan(xbc, dt, state)
        forward.append(y)
    backward, state = [None] * len(tiles), None
    for k in range(len(tiles) - 1, -1, -1):
        xbc, dt = scan_inputs[k]
        y, state = block.conv_scan(xbc.flip(1), dt.flip(1), state)
        backward[k] = y.flip(1)
    pieces = [block.out_proj_both(block.norm.summed([y_fwd, y_bwd], z))
              for z, y_fwd, y_bwd in zip(gates, forward, backward)]
    return torch.cat(pieces, dim=1)
