"""A gene-level classifier that the linear probe's probabilities are averaged with: L1-regularised logistic
regression (one-vs-rest, liblinear) on the log-normalised expression of the reference's most variable genes, ``C``
chosen by stratified cross-validation on the training cells.

It reads what the cell embedding compresses away (single marker genes of rare types). On the pbmc3k and Kang
references the average of its probabilities and the probe's scored a higher cross-validated macro-F1 than
either alone (benchmarks/results/annotate.md).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.vocab import first_columns
from ..eval.annotation_baselines import _dense

log = logging.getLogger(__name__)


def _first_index(names) -> dict[str, int]:
    """Each gene name's first column (a duplicated name is read from its first column everywhere)."""
    pos: dict[str, int] = {}
    for j, g in enumerate(names):
        pos.setdefault(g, j)
    return pos


@dataclass
class GeneProbe:
    """One-vs-rest logistic regressions on ``log1p(counts / total * 1e4)`` of ``genes``.

    Attributes
    ----------
    genes
        The gene names read (a gene missing from a query reads as 0).
    weight
        ``(n_classes, n_genes)``.
    bias
        ``(n_classes,)``.
    C
        The inverse L1 strength chosen by cross-validation.
    """

    genes: list[str]
    weight: np.ndarray
    bias: np.ndarray
    C: float = 1.0

    def __post_init__(self) -> None:
        self.genes = [str(g) for g in self.genes]
        self.weight = np.asarray(self.weight, dtype=np.float64)
        self.bias = np.asarray(self.bias, dtype=np.float64)
        if self.weight.shape != (len(self.bias), len(self.genes)):
            raise ValueError(f"gene probe weight {self.weight.shape} does not fit {len(self.bias)} classes x "
                             f"{len(self.genes)} genes")

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def proba(self, X: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` class probabilities of the ``(n, n_genes)`` log-normalised matrix: each class's
        sigmoid, normalised to sum to 1 (scikit-learn's one-vs-rest rule)."""
        z = np.asarray(X @ self.weight.T, dtype=np.float64) + self.bias
        p = 1.0 / (1.0 + np.exp(-z))
        return p / np.maximum(p.sum(1, keepdims=True), 1e-300)

    def matrix(self, adata, *, layer: str | None = None, use_raw: bool = False,
               gene_column: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The ``(n_cells, n_genes)`` log-normalised matrix of ``adata`` on :attr:`genes` (sparse for sparse
        data; a missing gene reads as 0) and an overlap report: ``{"n_genes", "n_matched", "overlap"}``, where
        ``overlap`` is the share of the genes with a non-zero weight (the ones the classifier reads) that the
        data has."""
        X, _, present = _log_normalised(adata, self.genes, layer=layer, use_raw=use_raw, gene_column=gene_column)
        used = np.any(self.weight != 0, axis=0)
        overlap = float(present[used].mean()) if used.any() else 1.0
        return X, {"n_genes": len(self.genes), "n_matched": int(present.sum()), "overlap": round(overlap, 4)}

    def select(self, X: np.ndarray, names: list[str]) -> np.ndarray:
        """The columns of :attr:`genes` from a log-normalised matrix ``X`` whose columns are ``names``."""
        pos = _first_index(names)
        return X[:, [pos[g] for g in self.genes]]

    def to_dict(self) -> dict[str, Any]:
        return {"genes": self.genes, "weight": self.weight.tolist(), "bias": self.bias.tolist(), "C": self.C}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneProbe":
        return cls(list(d["genes"]), np.asarray(d["weight"]), np.asarray(d["bias"]), float(d["C"]))


def log_normalised(adata, genes=None, *, layer: str | None = None, use_raw: bool = False,
                   gene_column: str | None = None) -> tuple[np.ndarray, list[str]]:
    """``log1p(counts / total * 1e4)`` of ``adata`` on ``genes`` (None: all; a gene the data lacks reads as 0;
    sparse input stays sparse), and the gene names. Counts and normalised values are normalised; values the
    validator reads as log-normalised are taken as they are."""
    return _log_normalised(adata, genes, layer=layer, use_raw=use_raw, gene_column=gene_column)[:2]


def _log_normalised(adata, genes, *, layer, use_raw, gene_column) -> tuple[np.ndarray, list[str], np.ndarray]:
    """:func:`log_normalised`, and which of ``genes`` the data has (a bool array; all True without ``genes``)."""
    import scipy.sparse as sp

    from ..data.io import select_matrix
    from ..data.preprocess import normalize_log1p
    from ..data.validate import strip_gene_prefix, validate

    a = select_matrix(adata, layer=layer, use_raw=use_raw, gene_column=gene_column)
    names = strip_gene_prefix([str(g) for g in a.var_names])[0]
    X = a.X
    if validate(a, purpose="annotate", raise_on_error=False).value_kind != "log_normalized":
        X = normalize_log1p(X)
    X = X.astype(np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    if genes is None:
        return X, names, np.ones(len(names), dtype=bool)
    genes = list(genes)
    have = sorted(first_columns(names, genes, what="the gene probe's genes").items())  # (gene, data column)
    if len(have) < len(genes):
        log.warning("gene probe: %d of its %d genes are missing from the data and read as 0", len(genes) - len(have),
                    len(genes))
    cols, src = zip(*have) if have else ((), ())
    pick = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (list(src), list(cols))), shape=(X.shape[1], len(genes)))
    out = X @ pick  # column j of the result = the data's column of genes[j], or 0
    present = np.zeros(len(genes), dtype=bool)
    present[list(cols)] = True
    return (out.tocsr() if sp.issparse(out) else np.asarray(out)), list(genes), present


def fit_gene_probe(X: np.ndarray, names: list[str], y: np.ndarray, n_classes: int, *, n_top_genes: int = 2000,
                   folds: int = 5, seed: int = 0, C: float | None = None) -> tuple[GeneProbe, dict[str, Any]]:
    """The gene probe on the training cells' log-normalised matrix ``X`` (every class present): the
    ``n_top_genes`` most variable genes of ``X`` (scanpy's ``seurat`` rule), ``C`` from the L1 baseline's grid by
    stratified ``folds``-fold cross-validation (macro-F1; fewer folds when the rarest class is smaller, ``C`` = 1
    with a single cell; on a stratified sample of about ``MAX_CV_CELLS`` cells when there are more), or ``C`` as given
    (no search: the refit on every reference cell). The weights are fitted on every cell."""
    import anndata as ad
    import scanpy as sc
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from .._threads import keep_torch_threads
    from ..eval.annotation_baselines import L1_CS, l1_logreg
    from ._annotate_probe import MAX_CV_CELLS, cv_sample

    if set(np.unique(y)) != set(range(n_classes)):
        raise ValueError("every class needs at least one training cell for the gene probe")
    first = np.zeros(len(names), dtype=bool)  # a duplicated gene name: only its first column (as predict reads it)
    first[list(_first_index(names).values())] = True
    keep = (_dense(X.max(0)).ravel() > 0) & first
    if n_top_genes < keep.sum():
        a = ad.AnnData(X[:, keep])
        with keep_torch_threads():  # scanpy's numba kernels would leave torch on every core
            sc.pp.highly_variable_genes(a, n_top_genes=n_top_genes, flavor="seurat")
        keep[np.flatnonzero(keep)[~a.var["highly_variable"].to_numpy()]] = False
    cols = np.flatnonzero(keep)
    Xs = X[:, cols]  # liblinear takes sparse rows as they are
    base = l1_logreg(seed=seed)
    k = int(min(folds, np.bincount(y, minlength=n_classes).min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes at the ends of the C grid
        if C is not None:
            clf, c, cv = base.set_params(estimator__C=C).fit(Xs, y), float(C), None
        elif k >= 2:
            sub = cv_sample(y, MAX_CV_CELLS, seed, min_per_class=max(5, k))
            search = GridSearchCV(base, {"estimator__C": list(L1_CS)}, scoring="f1_macro", n_jobs=1, refit=False,
                                  cv=StratifiedKFold(k, shuffle=True, random_state=seed)).fit(Xs[sub], y[sub])
            c, cv = float(search.best_params_["estimator__C"]), round(search.best_score_, 4)
            clf = base.set_params(estimator__C=c).fit(Xs, y)  # every cell, at the chosen C
        else:
            clf, c, cv = base.set_params(estimator__C=1.0).fit(Xs, y), 1.0, None
    if n_classes == 2:  # one-vs-rest keeps one estimator for a binary problem: class 1 against class 0
        w1, b1 = clf.estimators_[0].coef_.ravel(), clf.estimators_[0].intercept_[0]
        weight, bias = np.vstack([-w1, w1]), np.array([-b1, b1])
    else:
        weight = np.vstack([e.coef_.ravel() for e in clf.estimators_])
        bias = np.array([e.intercept_[0] for e in clf.estimators_])
    probe = GeneProbe([names[j] for j in cols], weight, bias, c)
    used = int(np.any(weight != 0, axis=0).sum())
    log.info("annotation: gene probe on %d cells x %d genes (%d with a non-zero weight), C = %.3g (%s)", len(y),
             len(cols), used, c, "given" if C is not None else f"{k}-fold cross-validation" if k >= 2
             else "default: the rarest type has one training cell, too few to cross-validate")
    info = {"gene_probe_C": c, "gene_probe_genes_used": used}
    return probe, info if C is not None else {**info, "gene_probe_cv_macro_f1": cv}


def mix(probe_logits: np.ndarray, gene_proba: np.ndarray, weight: float) -> np.ndarray:
    """Logits whose softmax is ``(1 - weight) * softmax(probe_logits) + weight * gene_proba``."""
    from .annotate_predict import softmax

    p = (1.0 - weight) * softmax(probe_logits) + weight * gene_proba
    return np.log(np.maximum(p, 1e-12)).astype(np.float32)
