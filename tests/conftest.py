"""Shared fixtures: tiny data the tests build themselves, and the optional real files in ../shared/data."""

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The folder of real public datasets beside the repository; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def tiny_counts():
    """An AnnData of 64 cells x 50 genes with raw counts, 2 batches and 3 labels with distinct programmes."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n_cells, n_genes = 64, 50
    labels = rng.integers(0, 3, n_cells)
    batch = rng.integers(0, 2, n_cells)
    rate = np.full((n_cells, n_genes), 0.5)
    for k in range(3):
        rate[labels == k, k * 10 : (k + 1) * 10] += 6.0
    counts = rng.poisson(rate).astype(np.float32)
    counts[:, 0] += 1  # no empty cells
    adata = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame(
            {"label": pd.Categorical([f"type{k}" for k in labels]), "batch": pd.Categorical([f"b{b}" for b in batch])},
            index=[f"cell{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame(index=[f"GENE{j}" for j in range(n_genes)]),
    )
    return adata
