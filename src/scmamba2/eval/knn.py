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


def knn_label_transfer_scores(X: np.ndarray, labels, seed: int = 0) -> dict[str, float]:
    """5-fold stratified kNN (k=15) label transfer: accuracy and macro-F1 of the predictions pooled over the folds."""
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    y = np.asarray(labels).astype(str)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    pred = cross_val_predict(KNeighborsClassifier(n_neighbors=15), np.asarray(X), y, cv=folds)
    return {"kNN accuracy": accuracy_score(y, pred), "kNN macro-F1": f1_score(y, pred, average="macro")}
