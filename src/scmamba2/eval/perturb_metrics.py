"""Perturbation metrics as the field reports them (GEARS, scGPT, Ahlmann-Eltze et al. 2025).

Every metric compares a predicted mean profile with the observed mean profile of the perturbed cells:

- ``pearson``: correlation of the profiles over all genes (inflated by the genes' baseline levels);
- ``pearson_delta``: correlation of the changes from the control mean, the informative one;
- ``*_de20``: the same on the 20 genes most differentially expressed in the observed cells versus control
  (largest absolute Welch t statistic, as GEARS' ``rank_genes_groups(..., rankby_abs=True)``);
- ``mse`` / ``mse_de20``: mean squared error of the profiles;
- ``wmse``: DEG-weighted mean squared error in the style of Mejia et al. 2025 (each gene's squared error
  weighted by how differentially expressed it is in that perturbation, :func:`deg_weights`): a prediction
  collapsed onto the mean of all perturbations scores well on Pearson-delta but not here;
- ``l2_top1000``: Euclidean distance of the mean profiles over the 1,000 most expressed genes
  (:func:`top_expressed`);
- :func:`topk_accuracy` for reverse perturbation: how often the true perturbation is among the top k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["pearson", "top_de_genes", "welch_t", "deg_weights", "weighted_mse", "top_expressed",
           "perturbation_metrics", "topk_accuracy", "effect_size"]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors (NaN when one is constant)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def welch_t(X_pert: np.ndarray, X_ref: np.ndarray) -> np.ndarray:
    """``(n_genes,)`` absolute Welch t statistic of every gene, perturbed vs reference cells."""
    X_pert, X_ref = np.asarray(X_pert, np.float64), np.asarray(X_ref, np.float64)
    m1, m0 = X_pert.mean(0), X_ref.mean(0)
    v1 = X_pert.var(0, ddof=1) / len(X_pert) if len(X_pert) > 1 else np.zeros_like(m1)
    v0 = X_ref.var(0, ddof=1) / len(X_ref) if len(X_ref) > 1 else np.zeros_like(m0)
    return np.abs(m1 - m0) / np.sqrt(v1 + v0 + 1e-12)


def top_de_genes(X_pert: np.ndarray, X_ctrl: np.ndarray, n: int = 20) -> np.ndarray:
    """Indices of the ``n`` genes with the largest absolute Welch t statistic, perturbed vs control cells."""
    t = welch_t(X_pert, X_ctrl)
    return np.argsort(-t, kind="stable")[: min(n, len(t))]


def deg_weights(X_pert: np.ndarray, X_ctrl: np.ndarray) -> np.ndarray:
    """``(n_genes,)`` weights of :func:`weighted_mse`: each gene's absolute Welch t statistic (perturbed vs
    control cells), normalised to sum to 1 (uniform when no gene differs)."""
    t = welch_t(X_pert, X_ctrl)
    total = t.sum()
    return t / total if total > 0 else np.full(len(t), 1.0 / len(t))


def weighted_mse(pred: np.ndarray, true: np.ndarray, weights: np.ndarray) -> float:
    """``sum_g w_g (pred_g - true_g)^2`` with weights summing to 1 (:func:`deg_weights`)."""
    pred, true, w = (np.asarray(v, np.float64).ravel() for v in (pred, true, weights))
    return float(np.sum(w * (pred - true) ** 2) / max(w.sum(), 1e-300))


def top_expressed(X: np.ndarray, n: int = 1000) -> np.ndarray:
    """Indices of the ``n`` genes with the highest mean expression over the rows of ``X`` (all if fewer)."""
    m = np.asarray(X, np.float64).mean(0)
    return np.argsort(-m, kind="stable")[: min(n, len(m))]


def perturbation_metrics(pred: np.ndarray, true: np.ndarray, ctrl_mean: np.ndarray,
                         de_idx: np.ndarray | None = None, weights: np.ndarray | None = None,
                         expressed_idx: np.ndarray | None = None) -> dict[str, float]:
    """Pearson, Pearson-delta and MSE over all genes and over ``de_idx`` (the top DE genes); ``wmse`` with
    ``weights`` (:func:`deg_weights`) and ``l2_top1000`` over ``expressed_idx`` (:func:`top_expressed`) when given.

    Parameters
    ----------
    pred, true, ctrl_mean
        ``(n_genes,)`` predicted mean, observed mean of the perturbed cells, observed control mean.
    de_idx
        Gene indices for the ``*_de20`` metrics (from :func:`top_de_genes`); left out when None.
    """
    pred, true, ctrl = (np.asarray(v, np.float64).ravel() for v in (pred, true, ctrl_mean))
    out = {"pearson": pearson(pred, true), "pearson_delta": pearson(pred - ctrl, true - ctrl),
           "mse": float(np.mean((pred - true) ** 2))}
    if de_idx is not None:
        d = np.asarray(de_idx)
        out.update({"pearson_de20": pearson(pred[d], true[d]),
                    "pearson_delta_de20": pearson(pred[d] - ctrl[d], true[d] - ctrl[d]),
                    "mse_de20": float(np.mean((pred[d] - true[d]) ** 2))})
    if weights is not None:
        out["wmse"] = weighted_mse(pred, true, weights)
    if expressed_idx is not None:
        e = np.asarray(expressed_idx)
        out["l2_top1000"] = float(np.linalg.norm(pred[e] - true[e]))
    return out


def topk_accuracy(ranks: pd.DataFrame, truth: Mapping[str, str], ks: Sequence[int] = (1, 3)) -> dict[str, float]:
    """Fraction of queries whose true perturbation is ranked within the top k.

    ``ranks`` has the columns of :func:`~scmamba2.tasks.perturb.reverse_perturbation` (``query``, ``rank``,
    ``perturbation``); ``truth`` maps each query to its true perturbation. Queries missing from ``ranks``
    count as misses.
    """
    out = {}
    for k in ks:
        top = ranks[ranks["rank"] <= k]
        hits = [truth[q] in set(top.loc[top["query"] == q, "perturbation"]) for q in truth]
        out[f"top{k}"] = float(np.mean(hits)) if hits else float("nan")
    return out


def effect_size(X_pert: np.ndarray, X_ctrl: np.ndarray, rng: np.random.Generator, n_draws: int = 50,
                quantile: float = 0.95) -> tuple[float, float]:
    """A perturbation's effect, and the same statistic between random halves of the control cells.

    The effect is the Euclidean norm of ``mean(X_pert) - mean(X_ctrl)``. The null draws ``n_draws`` disjoint
    pairs of control subsets of ``min(n_pert, n_ctrl // 2)`` cells each (so the noise of a mean over that many
    cells is matched) and returns the ``quantile`` of their distance. Returns ``(effect, null)``.
    """
    effect = float(np.linalg.norm(X_pert.mean(0) - X_ctrl.mean(0)))
    m = max(1, min(len(X_pert), len(X_ctrl) // 2))
    null = []
    for _ in range(n_draws):
        perm = rng.permutation(len(X_ctrl))
        null.append(np.linalg.norm(X_ctrl[perm[:m]].mean(0) - X_ctrl[perm[m:2 * m]].mean(0)))
    return effect, float(np.quantile(null, quantile))
