"""Annotation baselines: logistic regression on log1p-normalised highly variable genes (scikit-learn's default
L2 at C=1, and L1 with C chosen by cross-validation on the reference), and CellTypist.

Both are fitted on the reference alone (genes chosen on the reference) and predict the query's labels.
"""

from __future__ import annotations

import logging

import numpy as np

from .._threads import keep_torch_threads

log = logging.getLogger(__name__)


def _log1p_normalised(adata):
    """A copy with ``X`` = log1p of counts scaled to 10,000 per cell (what both baselines expect)."""
    import scanpy as sc

    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


def _hvg_matrices(reference, query, n_top_genes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """log1p-normalised ``(reference, query)`` matrices on the reference's ``n_top_genes`` highly variable genes
    (scanpy ``seurat`` flavour; all genes when None); a gene missing from the query reads as 0."""
    import scanpy as sc

    ref = _log1p_normalised(reference)
    if n_top_genes is not None and n_top_genes < ref.n_vars:
        sc.pp.highly_variable_genes(ref, n_top_genes=n_top_genes, flavor="seurat")
        genes = ref.var_names[ref.var["highly_variable"].to_numpy()]
    else:
        genes = ref.var_names
    q = _log1p_normalised(query)
    q_genes = genes.intersection(q.var_names)
    if len(q_genes) < len(genes):
        log.warning("logistic regression: %d of %d genes missing from the query, read as 0",
                    len(genes) - len(q_genes), len(genes))
    X = _dense(ref[:, genes].X)
    Xq = np.zeros((q.n_obs, len(genes)), dtype=np.float32)
    pos = {g: i for i, g in enumerate(genes)}
    Xq[:, [pos[g] for g in q_genes]] = _dense(q[:, q_genes].X)
    return X, Xq


@keep_torch_threads()
def logreg_predict(reference, query, label_key: str, n_top_genes: int = 2000, seed: int = 0,
                   max_iter: int = 1000) -> np.ndarray:
    """Multinomial logistic regression (scikit-learn defaults, L2, C=1) on the log1p-normalised counts of the
    reference's ``n_top_genes`` highly variable genes (scanpy ``seurat`` flavour); returns the query's labels."""
    from sklearn.linear_model import LogisticRegression

    X, Xq = _hvg_matrices(reference, query, n_top_genes)
    clf = LogisticRegression(max_iter=max_iter, random_state=seed)
    clf.fit(X, reference.obs[label_key].astype(str).to_numpy())
    return clf.predict(Xq)


# C grid of the cross-validated L1 baseline (liblinear's C: larger = weaker penalty).
L1_CS = tuple(float(c) for c in np.logspace(-2, 1, 7))


def l1_logreg(C: float = 1.0, seed: int = 0):
    """The L1 baseline's estimator: one-vs-rest L1 logistic regression (liblinear) at ``C``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    return OneVsRestClassifier(LogisticRegression(penalty="l1", solver="liblinear", max_iter=1000, C=C,
                                                  random_state=seed))


@keep_torch_threads()
def logreg_l1_cv_predict(reference, query, label_key: str, n_top_genes: int = 2000, seed: int = 0,
                         folds: int = 5, info: dict | None = None) -> np.ndarray:
    """L1-regularised logistic regression (one-vs-rest, liblinear) on the same log1p-normalised HVG matrix as
    :func:`logreg_predict`, with ``C`` from :data:`L1_CS` chosen by stratified ``folds``-fold cross-validation
    (macro-F1) on the reference only; returns the query's labels. ``info`` receives the chosen ``C``, the
    cross-validated macro-F1 and the number of genes with a non-zero weight."""
    import warnings

    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    X, Xq = _hvg_matrices(reference, query, n_top_genes)
    y = reference.obs[label_key].astype(str).to_numpy()
    base = l1_logreg(seed=seed)
    search = GridSearchCV(base, {"estimator__C": list(L1_CS)}, scoring="f1_macro", n_jobs=1,
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes and "the least populated class has only n members"
        search.fit(X, y)
    best = search.best_estimator_
    if info is not None:
        nonzero = np.any(np.vstack([e.coef_ for e in best.estimators_]) != 0, axis=0)
        info.update({"C": float(search.best_params_["estimator__C"]), "cv_macro_f1": round(search.best_score_, 4),
                     "genes_used": int(nonzero.sum())})
    return best.predict(Xq)


@keep_torch_threads()
def celltypist_predict(reference, query, label_key: str, n_top_genes: int | None = None, seed: int = 0) -> np.ndarray:
    """A custom CellTypist model trained on the reference (log1p-normalised, all genes, CellTypist's defaults, or
    its SGD path where the default fails with the installed scikit-learn; no download), applied to the query without majority voting; returns the query's labels.
    ``n_top_genes`` is not used (CellTypist chooses its own features)."""
    import celltypist

    np.random.seed(seed)  # CellTypist draws from NumPy's global generator
    ref = _log1p_normalised(reference)
    labels = reference.obs[label_key].astype(str).to_numpy()
    try:
        model = celltypist.train(ref, labels=labels, n_jobs=1)
    except TypeError as err:  # its default path passes multi_class=, which scikit-learn >= 1.8 no longer takes
        if "multi_class" not in str(err):
            raise
        log.warning("CellTypist's logistic-regression path fails with this scikit-learn (%s): using its SGD "
                    "path (use_SGD=True)", err)
        np.random.seed(seed)
        model = celltypist.train(ref, labels=labels, n_jobs=1, use_SGD=True)
    result = celltypist.annotate(_log1p_normalised(query), model=model, majority_voting=False)
    return result.predicted_labels["predicted_labels"].astype(str).to_numpy()


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
