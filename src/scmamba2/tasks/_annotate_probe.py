"""Annotation with a frozen pretrained encoder: a linear probe (multinomial logistic regression) on the cell
embedding.

The encoder reads every expressed gene of a cell (as :func:`scmamba2.embed` does by default) and its embedding
is mapped into the metric of the model's profile decoder when it has a linear one (``readout="profile"``); with
several models side by side each one's embedding is mapped by its own decoder and ``D`` is their widths summed. The
probe standardises those features on the training cells and fits an L2-regularised logistic regression whose
``C`` is chosen by stratified k-fold cross-validation (macro-F1) on the training cells only; the readout metric
and the standardisation are then folded into one ``(n_classes, D)`` weight and a bias, so that at
prediction time the logits are ``emb @ weight.T + bias`` on the encoder's own pooled output.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# The grid of inverse regularisation strengths searched by cross-validation.
PROBE_CS = tuple(float(c) for c in np.logspace(-3, 2, 11))
# Larger training sets choose C on a stratified sample of about this many cells (the fit then uses every cell):
# the search's cost grows with the cells, the choice of C hardly does.
MAX_CV_CELLS = 10_000


def cv_sample(y: np.ndarray, max_cells: int, seed: int, min_per_class: int = 5) -> np.ndarray:
    """Indices of about ``max_cells`` of ``y`` (a little more when rare classes need their minimum), stratified:
    each class in proportion, with at least ``min(its cells, min_per_class)``; sorted. All of them when there
    are no more than ``max_cells``."""
    n = len(y)
    if n <= max_cells:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keep = []
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        m = min(len(idx), max(min_per_class, int(round(len(idx) * max_cells / n))))
        keep.append(rng.choice(idx, m, replace=False))
    return np.sort(np.concatenate(keep))


@dataclass
class LinearProbe:
    """``logits = emb @ weight.T + bias`` on the pooled encoder output ``emb`` (readout metric folded in).

    Attributes
    ----------
    weight
        ``(n_classes, D)``: ``D`` is ``d_model``, summed over the models when several are read side by side.
    bias
        ``(n_classes,)``.
    C
        The inverse L2 strength chosen by cross-validation.
    readout
        ``"profile"`` or ``"raw"``: the embedding metric the probe was fitted in (informational).
    """

    weight: np.ndarray
    bias: np.ndarray
    C: float = 1.0
    readout: str = "raw"

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float64)
        self.bias = np.asarray(self.bias, dtype=np.float64)
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"probe weight {self.weight.shape} and bias {self.bias.shape} do not fit together")

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, emb: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` float32 logits of ``(n, D)`` embeddings."""
        return (np.asarray(emb, dtype=np.float64) @ self.weight.T + self.bias).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight.tolist(), "bias": self.bias.tolist(), "C": float(self.C),
                "readout": self.readout}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LinearProbe":
        return cls(np.asarray(d["weight"]), np.asarray(d["bias"]), float(d["C"]), str(d.get("readout", "raw")))


def whole_cell_tokenizer(base, min_len: int = 0):
    """``base``'s tokenizer reading every expressed gene of a cell (``max_len`` = vocabulary size + 1), as
    :func:`scmamba2.embed` does by default."""
    tok = base.tokenizer_config
    if tok is None:
        from ..data.tokenize import TokenizerConfig

        tok = TokenizerConfig(n_bins=base.config.n_bins, value_mode=base.config.value_mode)
    return replace(tok, max_len=max(len(base.vocab) + 1, min_len))


def whole_cell_model(base, min_len: int = 0):
    """A copy of ``base`` without task heads whose tokenizer is :func:`whole_cell_tokenizer`."""
    return base.adapt(tokenizer_config=whole_cell_tokenizer(base, min_len), n_classes=0, dab=False,
                      batch_embedding=False)


def fit_probe(emb: np.ndarray, y: np.ndarray, n_classes: int, *, metric: np.ndarray | None, class_weight: str,
              folds: int, seed: int, C: float | None = None) -> tuple[LinearProbe, dict[str, Any]]:
    """Fit the probe on training embeddings ``emb`` ``(n, D)`` with classes ``y`` (every class present).

    ``metric`` is the ``(D, D)`` readout map (None: the raw embedding); ``class_weight`` ``"balanced"`` or
    ``"none"``; ``C`` from :data:`PROBE_CS` by ``folds``-fold stratified cross-validation (fewer folds when the
    rarest class has fewer cells; none with a single cell, then ``C = 1``; on a stratified sample of
    about :data:`MAX_CV_CELLS` cells when there are more), or ``C`` as given (no search: the refit on every reference
    cell). The weights are fitted on every cell. Returns the probe and a summary.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    if set(np.unique(y)) != set(range(n_classes)):
        raise ValueError("every class needs at least one training cell for the probe")
    emb = np.asarray(emb, dtype=np.float64)
    s = np.eye(emb.shape[1]) if metric is None else np.asarray(metric, dtype=np.float64)
    feats = emb @ s  # (n, D): the embedding in the readout metric
    mu, sd = feats.mean(0), feats.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    z = (feats - mu) / sd
    cw = "balanced" if class_weight == "balanced" else None
    k = int(min(folds, np.bincount(y, minlength=n_classes).min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes at the extreme ends of the C grid
        if C is not None:
            clf = LogisticRegression(C=C, class_weight=cw, max_iter=2000, random_state=seed).fit(z, y)
            c, cv = float(C), {}
        elif k >= 2:
            sub = cv_sample(y, MAX_CV_CELLS, seed, min_per_class=max(5, k))  # every fold keeps every class
            clf = LogisticRegressionCV(Cs=list(PROBE_CS), cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                                       scoring=_macro_f1, class_weight=cw, max_iter=2000, random_state=seed)
            clf.fit(z[sub], y[sub])
            c = float(np.ravel(clf.C_)[0])
            scores = np.mean(next(iter(clf.scores_.values())), axis=0)  # (len(Cs),) mean over folds
            cv = {"probe_cv_folds": k, "probe_cv_macro_f1": round(float(scores.max()), 4), "probe_cv_cells": len(sub)}
            if len(sub) < len(y):  # C from the sample, the weights from every cell
                clf = LogisticRegression(C=c, class_weight=cw, max_iter=2000, random_state=seed).fit(z, y)
        else:
            clf = LogisticRegression(C=1.0, class_weight=cw, max_iter=2000, random_state=seed).fit(z, y)
            c, cv = 1.0, {"probe_cv_folds": 0}
    w, b = clf.coef_, clf.intercept_  # (K, D), (K,) on standardised features
    if w.shape[0] == 1:  # scikit-learn's binary case: one row for class 1
        w, b = np.vstack([-w / 2, w / 2]), np.array([-b[0] / 2, b[0] / 2])
    weight = (w / sd) @ s.T  # logits = ((emb s - mu) / sd) w^T + b = emb (s diag(1/sd) w^T) + b - (mu/sd) w^T
    bias = b - (mu / sd) @ w.T
    probe = LinearProbe(weight, bias, c, "raw" if metric is None else "profile")
    log.info("annotation: linear probe on %d cells of the frozen embedding, C = %.3g (%s)", len(y), c,
             "given" if C is not None else f"{k}-fold cross-validation" if k >= 2
             else "default: the rarest type has one training cell, too few to cross-validate")
    return probe, {"probe_C": c, **cv}


def _macro_f1(estimator, X, y) -> float:
    """Cross-validation score (scikit-learn's string ``"f1_macro"`` fails in its binary path)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y, estimator.predict(X), average="macro"))
