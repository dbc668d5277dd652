"""k-nearest-neighbour label transfer, the simple yardstick of an embedding."""

from __future__ import annotations

import numpy as np


def knn_label_transfer_accuracy(
    X: np.ndarray, labels, *, n_folds: int = 5, n_neighbors: int = 15, seed: int = 0
) -> tuple[float, float]:
    """Stratified ``n_folds``-fold kNN classification accuracy of ``labels`` from the embedding ``X``.

    Returns
    -------
    (mean, std) of the per-fold accuracies.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    y = np.asarray(labels).astype(str)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=n_neighbors), np.asarray(X), y, cv=folds)
    return float(scores.mean()), float(scores.std())


def _knn_predictions(X: np.ndarray, labels, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels as str, 5-fold stratified kNN (k=15) predictions pooled over the folds)``."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    y = np.asarray(labels).astype(str)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return y, cross_val_predict(KNeighborsClassifier(n_neighbors=15), np.asarray(X), y, cv=folds)


def knn_label_transfer_scores(X: np.ndarray, labels, seed: int = 0) -> dict[str, float]:
    """5-fold stratified kNN (k=15) label transfer: accuracy and macro-F1 of the predictions pooled over the folds."""
    from sklearn.metrics import accuracy_score, f1_score

    y, pred = _knn_predictions(X, labels, seed)
    return {"kNN accuracy": accuracy_score(y, pred), "kNN macro-F1": f1_score(y, pred, average="macro")}


def knn_per_class_f1(X: np.ndarray, labels, seed: int = 0) -> dict[str, float]:
    """F1 of each label under the same 5-fold kNN label transfer as :func:`knn_label_transfer_scores` (their
    mean is its macro-F1): which cell types an embedding separates, and which it does not."""
    from sklearn.metrics import f1_score

    y, pred = _knn_predictions(X, labels, seed)
    classes = np.unique(y)
    return dict(zip(classes.tolist(), f1_score(y, pred, labels=classes, average=None).tolist()))
