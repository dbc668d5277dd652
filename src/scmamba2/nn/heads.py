"""Output heads on the encoder's per-token states.

- :class:`ExpressionHead` (GEP): predicts each token's value from its own contextual state.
- :class:`MVCHead` (MVC / GEPC): predicts each gene's value from the cell embedding and the gene's identity
  alone, so the cell embedding must carry the cell's expression programme.
"""

from __future__ import annotations

import torch
from torch import nn


class ExpressionHead(nn.Module):
    """``(B, L, D) -> (B, L)`` value prediction per token."""

    def __init__(self, d_model: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_model), nn.LeakyReLU(), nn.Linear(d_model, d_model), nn.LeakyReLU(),
            nn.Linear(d_model, 1),
        )

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.mlp(states).squeeze(-1)


class MVCHead(nn.Module):
    """Cell-conditioned expression: ``<q(gene), W cell>`` with ``q`` a gated projection of the gene embedding."""

    def __init__(self, d_model: int):
        super().__init__()
        self.gene_query = nn.Linear(d_model, d_model)
        self.cell_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, cell_emb: torch.Tensor, gene_emb: torch.Tensor) -> torch.Tensor:
        query = torch.sigmoid(self.gene_query(gene_emb))  # (B, L, D)
        return torch.einsum("bld,bd->bl", query, self.cell_proj(cell_emb))
