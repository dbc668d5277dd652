"""Simple perturbation baselines, run beside the model in every perturbation benchmark.

- training mean of the perturbed cells ("no specific effect"), the control mean ("no change") and additive
  single effects for combinations are one line each in the benchmark;
- :class:`LinearPerturbation` is a linear model in the style of Ahlmann-Eltze, Huber & Anders (2025):
  ``Y ~ b + G W P^T`` with ``Y`` the training perturbations' mean profiles (genes x perturbations), ``b`` their
  row means, ``G`` a K-dimensional gene embedding from the PCA of ``Y - b``, a perturbation's embedding ``P``
  the sum of the ``G`` rows of its target genes, and ``W`` solved by ridge regression on both sides.
  A perturbation whose targets are all outside the measured genes has no embedding: it gets ``b``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["LinearPerturbation"]


class LinearPerturbation:
    """Ridge-regularised bilinear model on PCA gene embeddings (see the module docstring).

    Parameters
    ----------
    n_components
        K, the dimension of the gene embedding (capped by the number of training perturbations).
    ridge
        Ridge penalty on both sides of ``W``.
    """

    def __init__(self, n_components: int = 10, ridge: float = 0.1):
        self.n_components, self.ridge = int(n_components), float(ridge)

    def fit(self, Y: np.ndarray, targets: Sequence[Sequence[str]], genes: Sequence[str]) -> "LinearPerturbation":
        """``Y``: ``(n_perturbations, n_genes)`` training mean profiles; ``targets``: genes of each; ``genes``:
        the measured genes (columns of ``Y``)."""
        Y = np.asarray(Y, np.float64).T  # (genes, perturbations)
        self.genes = {g: i for i, g in enumerate(genes)}
        self.b = Y.mean(1)
        R = Y - self.b[:, None]
        k = max(1, min(self.n_components, R.shape[1] - 1 if R.shape[1] > 1 else 1, R.shape[0]))
        U, S, _ = np.linalg.svd(R, full_matrices=False)
        self.G = U[:, :k] * S[:k] / np.sqrt(max(R.shape[1], 1))  # (genes, K): principal-component scores
        P = np.stack([self._embed(t) for t in targets])  # (perturbations, K)
        lam = self.ridge
        left = np.linalg.solve(self.G.T @ self.G + lam * np.eye(k), self.G.T @ R)  # (K, perturbations)
        self.W = left @ P @ np.linalg.inv(P.T @ P + lam * np.eye(k))  # (K, K)
        return self

    def _embed(self, targets: Sequence[str]) -> np.ndarray:
        rows = [self.genes[t] for t in targets if t in self.genes]
        return self.G[rows].sum(0) if rows else np.zeros(self.G.shape[1])

    def has_embedding(self, targets: Sequence[str]) -> bool:
        return any(t in self.genes for t in targets)

    def predict(self, targets: Sequence[str]) -> np.ndarray:
        """Predicted mean profile ``(n_genes,)`` of a perturbation of ``targets``."""
        return self.b + self.G @ self.W @ self._embed(targets)
