"""The parallel gzip reader for sparse h5ad matrices gives what anndata.read_h5ad gives."""

from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scmamba2.data import _h5ad_fast
from scmamba2.data.io import read


def _adata(fmt="csr", n=300, g=900, seed=0):
    rng = np.random.default_rng(seed)
    x = sp.random(n, g, density=0.3, format=fmt, dtype=np.float32, random_state=rng) * 20
    a = ad.AnnData(X=x, obs=pd.DataFrame({"t": rng.choice(["a", "b"], n)}, index=[f"c{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))
    a.layers["counts"] = x.copy()
    a.raw = a.copy()
    return a


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_same_anndata_as_anndata_reader(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(_h5ad_fast, "_MIN_PARALLEL_BYTES", 1)  # the parallel path even for a small matrix
    path = tmp_path / "x.h5ad"
    _adata(fmt).write_h5ad(path, compression="gzip", compression_opts=4)
    with h5py.File(path) as f:
        assert _h5ad_fast._gzip_only(f["X/data"]) and f["X/data"].id.get_num_chunks() > 1
    want, got = ad.read_h5ad(path), _h5ad_fast.read_h5ad(path)
    for a, b in ((want.X, got.X), (want.layers["counts"], got.layers["counts"]), (want.raw.X, got.raw.X)):
        assert a.format == b.format and a.dtype == b.dtype and (a != b).nnz == 0
        assert a.indices.dtype == b.indices.dtype and a.indptr.dtype == b.indptr.dtype
    pd.testing.assert_frame_equal(want.obs, got.obs)
    pd.testing.assert_frame_equal(want.var, got.var)


def test_read_1d_chunks_and_fallbacks(tmp_path):
    path = tmp_path / "d.h5"
    values = np.arange(10_001, dtype=np.int32)
    with h5py.File(path, "w") as f:
        f.create_dataset("gz", data=values, chunks=(1000,), compression="gzip")
        f.create_dataset("shuffled", data=values, chunks=(1000,), compression="gzip", shuffle=True)
        f.create_dataset("plain", data=values)
        f.create_dataset("sparse_chunks", shape=(5000,), chunks=(1000,), dtype=np.int32, compression="gzip")
        f["sparse_chunks"][:1000] = 7  # the other chunks are never written
    saved = _h5ad_fast._MIN_PARALLEL_BYTES
    _h5ad_fast._MIN_PARALLEL_BYTES = 1
    try:
        with h5py.File(path) as f, ThreadPoolExecutor(2) as pool:
            for name in ("gz", "shuffled", "plain"):
                np.testing.assert_array_equal(_h5ad_fast.read_1d(f[name], pool), values)
            assert not _h5ad_fast._gzip_only(f["shuffled"])  # other filters: h5py's own read
            got = _h5ad_fast.read_1d(f["sparse_chunks"], pool)
            assert got[:1000].tolist() == [7] * 1000 and not got[1000:].any()
    finally:
        _h5ad_fast._MIN_PARALLEL_BYTES = saved


def test_io_read_uses_it(tmp_path):
    path = tmp_path / "x.h5ad"
    a = _adata()
    a.write_h5ad(path, compression="gzip")
    got = read(path)
    assert got.X.format == "csr" and (got.X != a.X).nnz == 0
