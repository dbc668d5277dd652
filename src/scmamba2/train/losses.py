"""Losses on collated batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the positions where ``mask`` is True (0 when there are none)."""
    n = mask.sum()
    if n == 0:
        return pred.sum() * 0.0
    diff = (pred - target)[mask]
    return (diff * diff).sum() / n


def nan_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``target`` is not NaN (0 when there are none)."""
    ok = ~torch.isnan(target)
    n = ok.sum()
    if n == 0:
        return pred.sum() * 0.0
    diff = torch.where(ok, pred - target, torch.zeros_like(pred))
    return (diff * diff).sum() / n


def nb_nll(log_rate: torch.Tensor, counts: torch.Tensor, library: torch.Tensor, log_theta: torch.Tensor,
           target_sum: float) -> torch.Tensor:
    """Mean negative log-likelihood of a negative binomial over the entries where ``counts`` is not NaN.

    ``log_rate`` (B, P): log expression per ``target_sum`` counts; ``library`` (B,): each cell's total counts,
    so the mean is ``library / target_sum * exp(log_rate)``; ``log_theta`` (P,): per-gene inverse dispersion.
    """
    ok = ~torch.isnan(counts)
    n = ok.sum()
    if n == 0:
        return log_rate.sum() * 0.0
    x = torch.where(ok, counts, torch.zeros_like(counts))
    log_mu = log_rate.clamp(max=20.0) + torch.log(library / target_sum).unsqueeze(1)
    theta = log_theta.exp().unsqueeze(0)
    log_theta_mu = torch.logaddexp(log_theta.unsqueeze(0), log_mu)  # log(theta + mu)
    ll = (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0)
          + theta * (log_theta.unsqueeze(0) - log_theta_mu) + x * (log_mu - log_theta_mu))
    return -torch.where(ok, ll, torch.zeros_like(ll)).sum() / n


def elastic_cell_similarity(cell_emb: torch.Tensor, threshold: float = 0.6) -> torch.Tensor:
    """ECS: pushes pairwise cosine similarities of the cells in a batch away from ``threshold``.

    ``mean over pairs i != j of 1 - (cos(e_i, e_j) - threshold)^2``: similar cells (cosine above the threshold)
    are pulled together and dissimilar ones pushed apart, which sharpens the clusters of the cell embedding.
    """
    n = cell_emb.shape[0]
    if n < 2:
        return cell_emb.sum() * 0.0
    e = F.normalize(cell_emb, dim=-1)
    cos = e @ e.T  # (B, B)
    off = ~torch.eye(n, dtype=torch.bool, device=cell_emb.device)
    return (1.0 - (cos[off] - threshold) ** 2).mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE: row ``i`` of ``a`` and of ``b`` are two views of one cell, the other rows negatives."""
    if a.shape[0] < 2:
        return a.sum() * 0.0
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
