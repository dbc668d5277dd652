"""Cluster-balanced sampling of pretraining cells: rare cell states drawn more often.

A pool of blood cells is mostly T cells and monocytes; dendritic cells, megakaryocytes or plasma cells are a few
per cent or less, so an objective averaged over cells spends little of the model on them. Here each source's
training cells are clustered (k-means on the leading principal components of their panel profiles: the
standardised log-normalised values the profile decoder reconstructs, on the panel genes that source measured), and
each cell is drawn with probability proportional to ``(its cluster's share of its source) ** -exponent``,
normalised so that every source keeps its share of the draws. ``exponent`` 0 is uniform sampling; 1 draws every
cluster of a source equally often. A cluster of fewer than :data:`MIN_CLUSTER_CELLS` cells (k-means gives a few
outlying cells a cluster of their own) counts as one of that many, so outliers are not the most-drawn cells. The idea
is geometric sketching's (Hie et al., Cell Systems 2019: sample evenly over the transcriptional space); here the
weights only tilt the sampling, so no cell is left out (every cell keeps a non-zero probability).

The draws are with replacement (:class:`~scmamba2.data.collate.LengthBucketSampler`), and a cell's random choices
(its gene subset, depth thinning) are seeded by the epoch and the cell: a cell drawn twice in one epoch is read the
same way both times, with different masks.
"""

from __future__ import annotations

import logging

import numpy as np

from .panel import GenePanel, panel_index
from .preprocess import _row_ids
from .tokenize import TokenizedCells

log = logging.getLogger(__name__)

__all__ = ["cluster_weights"]

CELLS_PER_CLUSTER = 50  # a source gets one cluster per this many cells, up to MAX_CLUSTERS
MAX_CLUSTERS = 20
MIN_CLUSTER_CELLS = 10  # a smaller cluster is weighted as one of this many cells
N_PCS = 20
MAX_FIT_CELLS = 20_000  # PCA and k-means are fitted on at most this many cells of a source (all are assigned)
BLOCK = 20_000  # cells whose dense profiles are held at once


def _profiles(cells: TokenizedCells, rows: np.ndarray, index: np.ndarray, panel: GenePanel,
              cols: np.ndarray) -> np.ndarray:
    """``(len(rows), len(cols))`` standardised panel profiles of the cells ``rows`` (genes without a token read 0
    before standardising, as in :func:`~scmamba2.data.panel.panel_targets`)."""
    sub = cells.subset(rows)
    pos = index[sub.gene_ids]
    hit = pos >= 0
    X = np.zeros((len(rows), len(panel.ids)), dtype=np.float32)
    X[_row_ids(sub.offsets)[hit], pos[hit]] = sub.values[hit]
    return ((X - panel.mean) / panel.std)[:, cols]


def cluster_weights(cells: TokenizedCells, panel: GenePanel, *, exponent: float, source: np.ndarray | None = None,
                    measured: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """``(len(cells),)`` sampling weights, mean 1 within each source (see the module's text).

    Parameters
    ----------
    cells
        Training cells with continuous (log-normalised) values.
    panel
        The profile objective's panel: the genes and the standardisation the profiles are read with.
    exponent
        0: every weight 1; 1: every cluster of a source drawn equally often.
    source, measured
        Each cell's source (None: one source) and which panel genes each source measured (``(n_sources, P)``
        bool; None: all): a source is clustered on its own cells and measured genes.
    seed
        Seed of the PCA's and k-means' random starts.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    from .panel import _check_continuous

    if exponent < 0:
        raise ValueError(f"exponent={exponent} must be >= 0 (0: uniform; 1: every cluster equally often)")
    n = len(cells)
    weights = np.ones(n, dtype=np.float64)
    if exponent == 0 or n == 0:
        return weights
    _check_continuous(cells)
    groups = np.zeros(n, dtype=np.int64) if source is None else np.asarray(source, dtype=np.int64)
    if len(groups) != n or (measured is not None and not 0 <= groups.min() <= groups.max() < len(measured)):
        raise ValueError(f"source needs one entry per cell ({n}), each a row of measured")
    size = max(int(cells.gene_ids.max(initial=0)), int(np.max(panel.ids, initial=0))) + 1
    index = panel_index(panel.ids, size)
    rng = np.random.default_rng(seed)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        cols = np.arange(len(panel.ids)) if measured is None else np.flatnonzero(measured[g])
        k = min(MAX_CLUSTERS, len(rows) // CELLS_PER_CLUSTER)
        if k < 2 or len(cols) < 2:
            continue
        fit = rows if len(rows) <= MAX_FIT_CELLS else np.sort(rng.choice(rows, MAX_FIT_CELLS, replace=False))
        with threadpool_limits(1):  # k-means sums threads' partial results in the order they finish: one thread
            pca = PCA(min(N_PCS, len(cols) - 1, len(fit) - 1), svd_solver="randomized", random_state=seed)
            kmeans = KMeans(k, n_init=3, random_state=seed).fit(pca.fit_transform(_profiles(cells, fit, index, panel,
                                                                                            cols)))
            labels = np.concatenate([kmeans.predict(pca.transform(_profiles(cells, rows[s:s + BLOCK], index, panel,
                                                                            cols))) for s in range(0, len(rows), BLOCK)])
        share = np.maximum(np.bincount(labels, minlength=k)[labels], MIN_CLUSTER_CELLS) / len(rows)
        w = share ** -float(exponent)
        weights[rows] = w * (len(rows) / w.sum())
        log.info("cluster balance: source %d, %d cells in %d clusters (%.1f-%.1f %%), weights %.2f-%.2f", g,
                 len(rows), k, 100 * share.min(), 100 * share.max(), weights[rows].min(), weights[rows].max())
    return weights
