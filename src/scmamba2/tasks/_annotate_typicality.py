"""How typical a cell's ``<cls>`` embedding is of the class it is assigned to, so that a cell type missing from
the reference can be told apart from a confident prediction.

A softmax classifier is confident far from its training data too (on synthetic data, a cell type absent from the
reference got a higher maximum probability than the known types). The embedding says more: such cells lie far
from every class of the reference. The distance used is the Mahalanobis distance to the predicted class's
centroid, under the pooled within-class covariance of the training cells (Lee et al., 2018), divided by the
median distance of that class's training cells; its typicality is an empirical p-value among the reference
cells, ``p = (1 + #{reference cells at least as far}) / (1 + #reference cells)``, mapped to ``min(1, p / tail)``: 1 for
the central ``1 - tail`` of the reference, falling towards 0 beyond its farthest cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Typicality:
    """Class centroids, shared precision matrix, per-class distance scales and the calibration distances."""

    centroids: np.ndarray  # (K, D)
    precision: np.ndarray  # (D, D)
    scales: np.ndarray  # (K,) median distance of each class's training cells
    calibration: np.ndarray  # (n,) sorted scaled distances of reference cells
    tail: float = 0.05

    @classmethod
    def fit(cls, emb: np.ndarray, y: np.ndarray, n_classes: int, cal_emb: np.ndarray, cal_pred: np.ndarray,
            tail: float = 0.05, shrinkage: float = 1e-2) -> "Typicality":
        """Centroids and covariance from ``emb`` (training cells, classes ``y``); calibration distances from
        ``cal_emb`` (reference cells, at their predicted classes ``cal_pred``)."""
        emb = np.asarray(emb, dtype=np.float64)
        d = emb.shape[1]
        centroids = np.zeros((n_classes, d))
        for c in range(n_classes):
            if (y == c).any():
                centroids[c] = emb[y == c].mean(0)
        resid = emb - centroids[y]
        cov = resid.T @ resid / max(len(emb) - n_classes, 1)
        cov += shrinkage * np.trace(cov) / d * np.eye(d)  # shrink towards a sphere: D can exceed a class's cells
        precision = np.linalg.inv(cov)
        out = cls(centroids, precision, np.ones(n_classes), np.zeros(0), tail)
        dist = out._raw(emb, y)
        out.scales = np.array([np.median(dist[y == c]) if (y == c).any() else 1.0 for c in range(n_classes)])
        out.scales = np.maximum(out.scales, 1e-8)
        out.calibration = np.sort(out.distance(np.asarray(cal_emb, dtype=np.float64), cal_pred))
        return out

    def _raw(self, emb: np.ndarray, cls_idx: np.ndarray) -> np.ndarray:
        diff = np.asarray(emb, dtype=np.float64) - self.centroids[cls_idx]
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", diff, self.precision, diff), 0.0))

    def distance(self, emb: np.ndarray, cls_idx: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the centroid of ``cls_idx``, in units of that class's median."""
        return self._raw(emb, cls_idx) / self.scales[cls_idx]

    def __call__(self, emb: np.ndarray, cls_idx: np.ndarray) -> np.ndarray:
        """Typicality in [0, 1] of each cell for its class (1 without calibration distances)."""
        if len(self.calibration) == 0 or self.tail <= 0:
            return np.ones(len(emb))
        d = self.distance(emb, cls_idx)
        n = len(self.calibration)
        farther = n - np.searchsorted(self.calibration, d, side="left")  # reference cells at least as far
        p = (1.0 + farther) / (1.0 + n)
        return np.minimum(1.0, p / self.tail)

    def to_dict(self) -> dict[str, Any]:
        r = lambda a: np.asarray(a, dtype=np.float64).tolist()  # noqa: E731
        return {"centroids": r(self.centroids), "precision": r(self.precision), "scales": r(self.scales),
                "calibration": r(self.calibration), "tail": float(self.tail)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Typicality":
        return cls(np.asarray(d["centroids"]), np.asarray(d["precision"]), np.asarray(d["scales"]),
                   np.asarray(d["calibration"]), float(d["tail"]))
