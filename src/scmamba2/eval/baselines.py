"""Simple baselines that every benchmark reports next to scmamba2."""

from __future__ import annotations

import numpy as np

from .._threads import keep_torch_threads


@keep_torch_threads()
def pca_embedding(adata, *, n_comps: int = 50, normalize: bool = True, seed: int = 0) -> np.ndarray:
    """The standard scanpy embedding: (normalise + log1p when ``normalize``), scale, PCA with ``n_comps``.

    Works on a copy; ``adata`` is not modified. Pass ``normalize=False`` for data that is log-normalised already.
    """
    import scanpy as sc

    a = adata.copy()
    if normalize:
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    sc.pp.scale(a, max_value=10)
    n = min(n_comps, min(a.shape) - 1)
    sc.pp.pca(a, n_comps=n, random_state=seed)
    return np.asarray(a.obsm["X_pca"])
