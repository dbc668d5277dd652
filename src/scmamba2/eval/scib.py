"""scIB integration metrics through scib-metrics' ``Benchmarker`` (bio conservation, batch correction, total).

The metrics are scib-metrics' own; this module only picks a metric set, runs the ``Benchmarker`` on the
embeddings in ``obsm`` and returns its table with plain column names. Scores are *not* min-max scaled across
methods (scaled scores change with the set of methods compared); the aggregates are scIB's: the mean of each
group, and ``total = 0.4 * batch correction + 0.6 * bio conservation``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from .._threads import keep_torch_threads

log = logging.getLogger(__name__)

__all__ = ["scib_benchmark", "METRIC_SETS"]

#: ``full``: scib-metrics' default set (isolated labels, KMeans NMI/ARI, label silhouette, cLISI; BRAS, iLISI,
#: kBET per label, graph connectivity, PCR comparison). ``fast``: the same without kBET and isolated labels
#: (the two slowest), for tests and quick looks. ``batch``: the batch-correction metrics only, for data without
#: cell-type labels (``label_key=None``: BRAS, kBET and graph connectivity then treat all cells as one group).
METRIC_SETS = {
    "full": ({}, {}),
    "fast": ({"isolated_labels": False}, {"kbet_per_label": False}),
    "batch": (None, {}),
}

AGGREGATES = ("Bio conservation", "Batch correction", "Total")


@keep_torch_threads()
def scib_benchmark(
    adata,
    batch_key: str,
    label_key: str | None,
    embedding_keys: Sequence[str],
    *,
    pre_integrated_key: str | None = None,
    metrics: str = "full",
    n_jobs: int = 1,
    neighbors: str = "exact",
    progress: bool = False,
) -> pd.DataFrame:
    """Run scib-metrics' ``Benchmarker`` on embeddings of the same cells.

    Parameters
    ----------
    adata
        Cells with ``obs[batch_key]``, ``obs[label_key]`` and the embeddings in ``obsm``.
    batch_key, label_key
        ``obs`` columns of the batch and the cell type; ``label_key=None`` (only with ``metrics="batch"``): no
        labels, every cell in one group.
    embedding_keys
        ``obsm`` keys to score (e.g. ``["X_pca", "X_harmony", "X_scvi", "X_scmamba2"]``).
    pre_integrated_key
        ``obsm`` key of the unintegrated embedding, for the principal-component-regression comparison;
        default: scib-metrics computes a PCA of ``X`` (which should then be log-normalised).
    metrics
        ``"full"``, ``"fast"`` or ``"batch"`` (see :data:`METRIC_SETS`).
    n_jobs
        Threads for the neighbour search.
    neighbors
        ``"exact"``: exact kNN graphs from scikit-learn, handed to ``Benchmarker.prepare`` (deterministic, no
        numba compilation; fine up to ~10^5 cells); ``"pynndescent"``: scib-metrics' default approximate search.

    Returns
    -------
    DataFrame, one row per embedding key, one column per metric, then ``Bio conservation``,
    ``Batch correction`` and ``Total`` (only ``Batch correction`` with ``metrics="batch"``).
    """
    try:
        from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the scIB metrics need scib-metrics: pip install 'scmamba2[bench]'") from e

    if metrics not in METRIC_SETS:
        raise ValueError(f"metrics must be one of {sorted(METRIC_SETS)}, not {metrics!r}")
    keys = list(embedding_keys)
    if label_key is None and metrics != "batch":
        raise InputError(f"metrics={metrics!r} needs cell-type labels (label_key); without labels use metrics='batch'")
    for col in [batch_key] + ([label_key] if label_key is not None else []):
        if col not in adata.obs:
            raise InputError(f"obs has no column {col!r}; available: {list(adata.obs.columns)}")
    missing = [k for k in keys + ([pre_integrated_key] if pre_integrated_key else []) if k not in adata.obsm]
    if missing:
        raise InputError(f"obsm has no {missing}; available: {list(adata.obsm.keys())}")
    if adata.obs[batch_key].nunique() < 2:
        raise InputError(f"obs[{batch_key!r}] has one value only: batch correction needs at least two batches")
    bio, batch = METRIC_SETS[metrics]
    # The Benchmarker works on float32 embeddings and category-free labels; give it a minimal AnnData.
    import anndata as ad

    a = ad.AnnData(X=np.zeros((adata.n_obs, 1), dtype=np.float32),
                   obs=pd.DataFrame({"batch": adata.obs[batch_key].astype(str).to_numpy(),
                                     "label": (adata.obs[label_key].astype(str).to_numpy() if label_key is not None
                                               else np.full(adata.n_obs, "all"))},
                                    index=adata.obs_names.astype(str)))
    for k in keys + ([pre_integrated_key] if pre_integrated_key else []):
        a.obsm[k] = np.ascontiguousarray(np.asarray(adata.obsm[k], dtype=np.float32))
    if pre_integrated_key is None:
        if adata.n_vars < 3:
            raise InputError("pass pre_integrated_key: X has too few genes for the PCA scib-metrics would compute")
        import scanpy as sc

        a.X = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float32)
        sc.pp.pca(a, n_comps=min(50, min(a.shape) - 1))
        pre_integrated_key = "X_pca"
    bm = Benchmarker(a, batch_key="batch", label_key="label", embedding_obsm_keys=keys,
                     bio_conservation_metrics=None if bio is None else BioConservation(**bio),
                     batch_correction_metrics=BatchCorrection(**batch),
                     pre_integrated_embedding_obsm_key=pre_integrated_key, n_jobs=n_jobs, progress_bar=progress)
    if neighbors not in ("exact", "pynndescent"):
        raise ValueError(f"neighbors must be 'exact' or 'pynndescent', not {neighbors!r}")
    bm.prepare(neighbor_computer=_exact_neighbors(n_jobs) if neighbors == "exact" else None)
    bm.benchmark()
    df = bm.get_results(min_max_scale=False)
    df = df.loc[[k for k in keys]].apply(pd.to_numeric)
    df.index.name = "embedding"
    metric_cols = [c for c in df.columns if c not in AGGREGATES]
    return df[metric_cols + [c for c in AGGREGATES if c in df.columns]]


def _exact_neighbors(n_jobs: int):
    """A ``neighbor_computer`` for ``Benchmarker.prepare``: exact Euclidean kNN. As scib-metrics' own
    ``pynndescent`` and the brute-force example of its documentation, the cell itself is its first neighbour."""

    def compute(X: np.ndarray, n_neighbors: int):
        from scib_metrics.nearest_neighbors import NeighborsResults
        from sklearn.neighbors import NearestNeighbors

        k = min(n_neighbors, X.shape[0])
        dist, idx = NearestNeighbors(n_neighbors=k, n_jobs=n_jobs).fit(X).kneighbors(X)
        return NeighborsResults(indices=idx, distances=dist)

    return compute


def bio_conservation(X: np.ndarray, labels, seed: int = 0) -> dict[str, float]:
    """scib-metrics' bio-conservation metrics that need no batch: KMeans NMI/ARI, label silhouette, cLISI;
    ``scIB bio`` is their mean (scIB's aggregation without the batch-dependent isolated-label score)."""
    try:
        import scib_metrics
        from scib_metrics.nearest_neighbors import NeighborsResults
    except ImportError:
        return {}
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(labels).astype(str)
    codes = np.unique(y, return_inverse=True)[1]
    with keep_torch_threads():
        nmi_ari = scib_metrics.nmi_ari_cluster_labels_kmeans(X, codes)
        sil = float(scib_metrics.silhouette_label(X, codes))
        dist, idx = NearestNeighbors(n_neighbors=90).fit(X).kneighbors(X)
        clisi = float(scib_metrics.clisi_knn(NeighborsResults(indices=idx, distances=dist), codes))
    out = {"KMeans NMI": float(nmi_ari["nmi"]), "KMeans ARI": float(nmi_ari["ari"]), "silhouette": sil,
           "cLISI": clisi}
    out["scIB bio"] = float(np.mean(list(out.values())))
    return out
