"""The linear perturbation baseline of Ahlmann-Eltze, Huber & Anders (Nature Methods 2025), run beside the model
in every perturbation benchmark (the training mean, the control mean and the additive model are one line each).

:class:`LinearPerturbation`: pseudobulk (one mean profile per perturbation), centred on the control (the
*effects* ``E``, perturbations x genes); gene embeddings ``G`` = the first K principal components of the training
effects with the genes as observations (genes x K: how each gene moves across the training perturbations, i.e.
co-expression under perturbation); ridge regression (penalty ``lambda``, intercept not penalised) of each gene's
effect on ``[1, G[target]]``. A perturbation's embedding is the sum of its targets' rows of ``G``; a target that
is not a measured gene has none (zeros), so its prediction is the intercept (close to the training mean effect).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["LinearPerturbation", "pca_gene_embedding"]


def pca_gene_embedding(effects: np.ndarray, n_components: int = 10) -> np.ndarray:
    """``(n_genes, K)`` principal-component scores of the genes over the training effects.

    ``effects`` is ``(n_perturbations, n_genes)`` (already centred on the control); each perturbation column is
    centred over the genes before the SVD; ``K = min(n_components, n_perturbations, n_genes)``.
    """
    R = np.asarray(effects, np.float64).T  # (genes, perturbations)
    R = R - R.mean(0, keepdims=True)
    k = max(1, min(int(n_components), R.shape[1], R.shape[0]))
    U, S, _ = np.linalg.svd(R, full_matrices=False)
    return U[:, :k] * S[:k]


class LinearPerturbation:
    """Ridge regression of a perturbation's effect on its targets' PCA gene embedding (module docstring).

    Parameters
    ----------
    n_components
        K, the dimension of the gene embedding (capped by the number of training perturbations).
    ridge
        Ridge penalty ``lambda`` on the embedding coefficients (not on the intercept).
    """

    def __init__(self, n_components: int = 10, ridge: float = 0.1):
        self.n_components, self.ridge = int(n_components), float(ridge)

    def fit(self, effects: np.ndarray, targets: Sequence[Sequence[str]], genes: Sequence[str]) -> "LinearPerturbation":
        """``effects``: ``(n_perturbations, n_genes)`` training mean profiles minus the control mean; ``targets``:
        the target genes of each; ``genes``: the measured genes (columns of ``effects``)."""
        E = np.asarray(effects, np.float64)
        if E.ndim != 2 or len(E) != len(targets) or E.shape[1] != len(genes):
            raise ValueError("effects must be (n_perturbations, n_genes) with one target list per row")
        self.genes = {g: i for i, g in enumerate(genes)}
        self.G = pca_gene_embedding(E, self.n_components)  # (genes, K)
        D = np.stack([self._design(t) for t in targets])  # (perturbations, 1 + K)
        penalty = self.ridge * np.eye(D.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        self.W = np.linalg.solve(D.T @ D + penalty, D.T @ E)  # (1 + K, genes)
        return self

    def embed(self, targets: Sequence[str]) -> np.ndarray:
        """``(K,)`` sum of the targets' rows of ``G`` (zeros when no target is a measured gene)."""
        rows = [self.genes[t] for t in targets if t in self.genes]
        return self.G[rows].sum(0) if rows else np.zeros(self.G.shape[1])

    def _design(self, targets: Sequence[str]) -> np.ndarray:
        return np.concatenate([[1.0], self.embed(targets)])

    def has_embedding(self, targets: Sequence[str]) -> bool:
        return any(t in self.genes for t in targets)

    def predict(self, targets: Sequence[str]) -> np.ndarray:
        """Predicted effect ``(n_genes,)`` (change from the control mean) of a perturbation of ``targets``."""
        return self._design(targets) @ self.W
