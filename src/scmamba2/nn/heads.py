"""Output heads on the encoder's states.

- :class:`ExpressionHead` (GEP): predicts each token's value from its own contextual state.
- :class:`MVCHead` (MVC / GEPC): predicts each gene's value from the cell embedding and the gene's identity
  alone, so the cell embedding must carry the cell's expression programme.
- :class:`ProfileHead`: the whole expression profile of a fixed gene panel (zeros included, standardised per
  gene) from the cell embedding alone; the main pretraining objective (see :mod:`scmamba2.data.panel`).
- :class:`ClassifierHead`: class logits from the cell embedding (annotation).
- :class:`BatchDiscriminator` (DAB): batch logits from the cell embedding behind a gradient-reversal layer,
  so that minimising its loss trains the discriminator while pushing the encoder to hide the batch.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(d_in: int, d_hidden: int, d_out: int, n_hidden: int = 2, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(n_hidden):
        layers += [nn.Linear(d, d_hidden), nn.LeakyReLU(), nn.LayerNorm(d_hidden)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        d = d_hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


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


class ProfileHead(nn.Module):
    """``(B, D) -> (B, P)``: the cell's standardised expression of ``P`` panel genes.

    ``n_hidden = 0`` is a linear decoder (a loading per gene, like PCA's, plus a per-gene bias); otherwise an
    MLP with one hidden layer of ``n_hidden`` units. The panel (vocabulary ids) and its per-gene mean and
    standard deviation are buffers, saved with the weights, so a checkpoint says what it reconstructs.
    """

    def __init__(self, d_model: int, n_genes: int, n_hidden: int = 0, nb: bool = False):
        super().__init__()
        # a negative-binomial likelihood (train.plan): the output is the log expression per target_sum counts
        # relative to expm1(gene_mean), and each gene has a dispersion (log theta; theta = 1 at initialisation)
        self.log_theta = nn.Parameter(torch.zeros(n_genes)) if nb else None
        if n_hidden:
            self.decoder = nn.Sequential(nn.Linear(d_model, n_hidden), nn.GELU(), nn.LayerNorm(n_hidden),
                                         nn.Linear(n_hidden, n_genes))
        else:
            self.decoder = nn.Linear(d_model, n_genes)
        self.register_buffer("gene_ids", torch.zeros(n_genes, dtype=torch.long))
        self.register_buffer("gene_mean", torch.zeros(n_genes))
        self.register_buffer("gene_std", torch.ones(n_genes))

    def set_panel(self, ids, mean, std) -> None:
        """Store the panel: ``(P,)`` vocabulary ids, per-gene mean and standard deviation."""
        with torch.no_grad():
            for buf, v in ((self.gene_ids, ids), (self.gene_mean, mean), (self.gene_std, std)):
                t = torch.as_tensor(v)
                if t.shape != buf.shape:
                    raise ValueError(f"panel of {tuple(t.shape)} values for a head of {tuple(buf.shape)} genes")
                buf.copy_(t)

    def copy_genes_from(self, other: ProfileHead) -> int:
        """Start from ``other``'s decoder (a head of another panel, same architecture): hidden layers whole, and
        the output row, bias and dispersion of every gene both panels hold; returns how many genes were shared.
        Call it after :meth:`set_panel`; genes new to this panel keep their fresh initialisation."""
        out, src = (self.decoder, other.decoder) if isinstance(self.decoder, nn.Linear) else \
            (self.decoder[-1], other.decoder[-1])
        old = {int(g): i for i, g in enumerate(other.gene_ids.tolist())}
        pairs = [(j, old[int(g)]) for j, g in enumerate(self.gene_ids.tolist()) if int(g) in old]
        with torch.no_grad():
            if not isinstance(self.decoder, nn.Linear):
                for mine, theirs in zip(list(self.decoder)[:-1], list(other.decoder)[:-1]):
                    for p_mine, p_theirs in zip(mine.parameters(), theirs.parameters()):
                        p_mine.copy_(p_theirs)
            out.bias.zero_()  # the targets are standardised: a new gene's mean is 0
            if pairs:
                new, prev = (torch.tensor(c) for c in zip(*pairs))
                out.weight[new] = src.weight[prev]
                out.bias[new] = src.bias[prev]
                if self.log_theta is not None and other.log_theta is not None:
                    self.log_theta[new] = other.log_theta[prev]
        return len(pairs)

    def forward(self, cell_emb: torch.Tensor) -> torch.Tensor:
        return self.decoder(cell_emb)


class ClassifierHead(nn.Module):
    """``(B, D) -> (B, n_classes)`` logits."""

    def __init__(self, d_model: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.mlp = _mlp(d_model, d_model, n_classes, n_hidden=2, dropout=dropout)

    def forward(self, cell_emb: torch.Tensor) -> torch.Tensor:
        return self.mlp(cell_emb)


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.alpha * grad, None


def reverse_gradient(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-alpha`` on the way back (Ganin & Lempitsky, 2015)."""
    return _ReverseGrad.apply(x, alpha)


class BatchDiscriminator(nn.Module):
    """DAB: predicts the batch from the cell embedding through a gradient-reversal layer."""

    def __init__(self, d_model: int, n_batches: int, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha
        self.mlp = _mlp(d_model, d_model, n_batches, n_hidden=2)

    def forward(self, cell_emb: torch.Tensor) -> torch.Tensor:
        return self.mlp(reverse_gradient(cell_emb, self.alpha))
