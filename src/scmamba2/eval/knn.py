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
