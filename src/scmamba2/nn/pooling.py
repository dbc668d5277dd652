"""Attention pooling of a cell's token outputs into one cell embedding.

Each of ``n_heads`` heads scores every valid position with a linear map of its output, takes the softmax over
the positions and returns the weighted mean of its own ``d_model / n_heads`` channels; the heads' means are
concatenated. The score map starts at zero, so at initialisation the pooling is exactly the mean over valid
positions (``cell_pooling="mean"``) and training can only move it away from the mean where that lowers the loss,
e.g. by weighting marker genes above the many tokens that say little about the cell.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AttentionPool(nn.Module):
    """``(B, L, D)`` token outputs -> ``(B, D)``: per-head softmax-weighted means over the valid positions."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(f"pool_heads={n_heads} must be >= 1 and divide d_model={d_model}")
        self.n_heads = n_heads
        self.score = nn.Linear(d_model, n_heads)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def weights(self, states: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``(B, L, H)`` each head's weights over the positions (0 at padding; each column sums to 1)."""
        scores = self.score(states).float()
        if padding_mask is not None:
            scores = scores.masked_fill(padding_mask.unsqueeze(-1), float("-inf"))
        return scores.softmax(dim=1)  # a row of only padding cannot occur: <cls> is always valid

    def forward(self, states: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``padding_mask``: ``(B, L)`` bool, True = padding (those positions get weight 0)."""
        b, length, d = states.shape
        weights = self.weights(states, padding_mask).to(states.dtype)
        heads = states.reshape(b, length, self.n_heads, d // self.n_heads)
        return torch.einsum("blh,blhc->bhc", weights, heads).reshape(b, d)
