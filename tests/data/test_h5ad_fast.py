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


def _assert_same(want, got):
    """Every part of two AnnData objects is equal (matrices: format, dtypes and values)."""

    def same_matrix(a, b):
        if sp.issparse(a):
            assert sp.issparse(b) and a.format == b.format and a.dtype == b.dtype and a.shape == b.shape
            assert a.indices.dtype == b.indices.dtype and a.indptr.dtype == b.indptr.dtype
            for x, y in ((a.data, b.data), (a.indices, b.indices), (a.indptr, b.indptr)):
                np.testing.assert_array_equal(x, y)
        else:
            assert type(a) is type(b) and a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)

    same_matrix(want.X, got.X)
    assert list(want.layers) == list(got.layers)
    for k in want.layers:
        same_matrix(want.layers[k], got.layers[k])
    assert (want.raw is None) == (got.raw is None)
    if want.raw is not None:
        same_matrix(want.raw.X, got.raw.X)
        pd.testing.assert_frame_equal(want.raw.var, got.raw.var)
    pd.testing.assert_frame_equal(want.obs, got.obs)
    pd.testing.assert_frame_equal(want.var, got.var)
    for a, b in ((want.obsm, got.obsm), (want.varm, got.varm), (want.obsp, got.obsp)):
        assert list(a) == list(b)
        for k in a:
            same_matrix(a[k], b[k])
    assert want.uns.keys() == got.uns.keys()


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("storage", ["gzip", "gzip+shuffle", "lzf", "none"])
def test_same_anndata_as_anndata_reader(tmp_path, monkeypatch, fmt, storage):
    monkeypatch.setattr(_h5ad_fast, "_MIN_PARALLEL_BYTES", 1)  # the parallel path even for a small matrix
    path = tmp_path / "x.h5ad"
    a = _adata(fmt)
    a.obsp["knn"] = sp.random(a.n_obs, a.n_obs, density=0.05, format="csr", dtype=np.float32, random_state=1)
    a.obsm["emb"] = np.arange(a.n_obs * 3, dtype=np.float32).reshape(-1, 3)
    kw = {"gzip": {"compression": "gzip", "compression_opts": 4}, "lzf": {"compression": "lzf"},
          "none": {}}.get(storage, {})
    if storage == "gzip+shuffle":  # another filter beside gzip: h5py's own read of those arrays
        a.write_h5ad(path)
        with h5py.File(path, "a") as f:
            for name in ("X/data", "X/indices"):
                values = f[name][...]
                del f[name]
                f.create_dataset(name, data=values, chunks=(1000,), compression="gzip", shuffle=True)
    else:
        a.write_h5ad(path, **kw)
    with h5py.File(path) as f:
        if storage == "gzip":
            assert _h5ad_fast._gzip_only(f["X/data"]) and f["X/data"].id.get_num_chunks() > 1
        else:
            assert not _h5ad_fast._gzip_only(f["X/data"])
    _assert_same(ad.read_h5ad(path), _h5ad_fast.read_h5ad(path))


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
def test_isal_and_zlib_inflate_the_same(tmp_path, monkeypatch, inflater):
    """ISA-L is the default inflater, zlib the fallback where isal does not import: both give anndata's AnnData."""
    import zlib

    isal_zlib = pytest.importorskip("isal.isal_zlib")
    monkeypatch.setattr(_h5ad_fast, "_MIN_PARALLEL_BYTES", 1)
    monkeypatch.setattr(_h5ad_fast, "_inflate", isal_zlib.decompress if inflater == "isal" else zlib.decompress)
    calls = []
    inflate = _h5ad_fast._inflate
    monkeypatch.setattr(_h5ad_fast, "_inflate", lambda *a, **k: calls.append(1) or inflate(*a, **k))
    path = tmp_path / "x.h5ad"
    _adata(n=500, g=2000, seed=3).write_h5ad(path, compression="gzip", compression_opts=6)
    _assert_same(ad.read_h5ad(path), _h5ad_fast.read_h5ad(path))
    assert calls  # the chunks went through the chosen inflater


def test_dense_x_and_sparse_layer(tmp_path, monkeypatch):
    monkeypatch.setattr(_h5ad_fast, "_MIN_PARALLEL_BYTES", 1)
    a = _adata()
    a.X = a.X.toarray()
    path = tmp_path / "dense.h5ad"
    a.write_h5ad(path, compression="gzip")
    _assert_same(ad.read_h5ad(path), _h5ad_fast.read_h5ad(path))


def test_real_file_same_as_anndata(shared_data):
    path = shared_data / "pbmc3k_raw_labeled.h5ad"
    with h5py.File(path) as f:
        assert _h5ad_fast._gzip_only(f["X/data"])  # the file exercises the parallel path
    _assert_same(ad.read_h5ad(path), _h5ad_fast.read_h5ad(path))


@pytest.mark.parametrize("route", ["pread", "h5py"])
def test_read_1d_chunks_and_fallbacks(tmp_path, monkeypatch, route):
    """Stored chunks are read by the workers from the file (pread) or, where that is not possible, through h5py."""
    if route == "h5py":
        monkeypatch.setattr(_h5ad_fast, "_chunk_spans", lambda ds: None)
    path = tmp_path / "d.h5"
    values = np.arange(10_001, dtype=np.int32)
    with h5py.File(path, "w") as f:
        f.create_dataset("gz", data=values, chunks=(1000,), compression="gzip")
        f.create_dataset("shuffled", data=values, chunks=(1000,), compression="gzip", shuffle=True)
        f.create_dataset("plain", data=values)
        f.create_dataset("sparse_chunks", shape=(5000,), chunks=(1000,), dtype=np.int32, compression="gzip")
        f["sparse_chunks"][:1000] = 7  # the other chunks are never written
        skipped = f.create_dataset("skipped", data=values, chunks=(1000,), compression="gzip")
        skipped.id.write_direct_chunk((0,), values[:1000].tobytes(), filter_mask=1)  # stored without gzip
    saved = _h5ad_fast._MIN_PARALLEL_BYTES
    _h5ad_fast._MIN_PARALLEL_BYTES = 1
    try:
        with h5py.File(path) as f, ThreadPoolExecutor(2) as pool:
            for name in ("gz", "shuffled", "plain", "skipped"):
                np.testing.assert_array_equal(_h5ad_fast.read_1d(f[name], pool), values)
            assert not _h5ad_fast._gzip_only(f["shuffled"])  # other filters: h5py's own read
            spans = _h5ad_fast._chunk_spans(f["gz"])
            assert route == "h5py" or (spans is not None and len(spans) == 11)
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


def test_string_arrays_read_as_anndata_reads_them(tmp_path):
    """Names, string columns, categories and string arrays in uns (non-ASCII, empty, 2-d) come back as anndata's
    object arrays of str."""
    if _h5ad_fast._STRING_DTYPE is None:
        pytest.skip("numpy without StringDType: anndata's own reading")
    a = _adata(n=40, g=30)
    a.obs["name"] = [f"cellule-{i}-é" if i % 3 else "" for i in range(a.n_obs)]
    a.var["symbol"] = pd.Categorical([f"Gène{i % 7}" for i in range(a.n_vars)])
    a.uns["labels"] = np.array([["α", ""], ["b", "c"]], dtype=object)
    a.uns["words"] = np.array(["x", "yy"], dtype=object)
    path = tmp_path / "s.h5ad"
    a.write_h5ad(path, compression="gzip")
    want, got = ad.read_h5ad(path), _h5ad_fast.read_h5ad(path)
    _assert_same(want, got)
    for k in ("labels", "words"):
        assert got.uns[k].dtype == want.uns[k].dtype and got.uns[k].shape == want.uns[k].shape
        assert got.uns[k].tolist() == want.uns[k].tolist()
    assert all(type(v) is str for v in got.obs["name"]) and got.var_names.dtype == object


def test_dataframes_of_every_column_kind_read_as_anndata_reads_them(tmp_path):
    """obs/var with numeric, bool, string, categorical (string, numeric, ordered), nullable columns and a named
    index: the fast dataframe reader gives anndata's DataFrame; a frame without columns too."""
    n = 12
    a = _adata(n=n, g=5)
    a.obs["f"] = np.linspace(0, 1, n)
    a.obs["i"] = np.arange(n, dtype=np.int16)
    a.obs["b"] = np.arange(n) % 2 == 0
    a.obs["num_cat"] = pd.Categorical(np.arange(n) % 3)
    a.obs["ordered"] = pd.Categorical(["lo", "hi"] * (n // 2), categories=["lo", "hi"], ordered=True)
    a.obs["nullable_int"] = pd.array([1, None] * (n // 2), dtype="Int64")
    a.obs["nullable_bool"] = pd.array([True, None] * (n // 2), dtype="boolean")
    a.obs["bytes"] = np.array([b"x", b"yy"] * (n // 2), dtype="S2")  # anndata writes and reads bytes as bytes
    a.obs.index.name = "barcode"
    path = tmp_path / "df.h5ad"
    a.write_h5ad(path)
    want, got = ad.read_h5ad(path), _h5ad_fast.read_h5ad(path)
    _assert_same(want, got)
    assert got.obs.index.name == want.obs.index.name and list(got.var.columns) == list(want.var.columns) == []
    assert got.obs["bytes"].tolist() == want.obs["bytes"].tolist() == [b"x", b"yy"] * (n // 2)


def test_read_strings_falls_back_to_h5py_decoding(tmp_path, monkeypatch):
    """Where h5py cannot read into StringDType (older h5py), the strings come from h5py's own decoding."""
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("s", data=np.array(["a", "é", ""], dtype=object), dtype=h5py.string_dtype())
    with h5py.File(path) as f:
        ds = f["s"]
        fast = _h5ad_fast.read_strings(ds)

        def refuse(*_):
            raise TypeError("No conversion path for dtype")

        monkeypatch.setattr(h5py.Dataset, "astype", refuse)
        slow = _h5ad_fast.read_strings(ds)
    assert fast.dtype == slow.dtype == object and fast.tolist() == slow.tolist() == ["a", "é", ""]


def test_file_without_encoding_attributes_is_read_by_anndata(tmp_path):
    """A file from before anndata 0.7 (no ``encoding-type`` on the root) goes to anndata's own reader."""
    path = tmp_path / "old.h5ad"
    _adata(n=20, g=10).write_h5ad(path)
    with h5py.File(path, "a") as f:
        del f.attrs["encoding-type"], f.attrs["encoding-version"]
    _assert_same(ad.read_h5ad(path), _h5ad_fast.read_h5ad(path))


def test_read_frame_is_anndatas_read_elem(tmp_path):
    """obs and var through read_frame (the corpus shards' reader) equal anndata's read_elem."""
    from anndata.io import read_elem

    a = _adata(n=30, g=20)
    a.var["symbol"] = pd.Categorical([f"s{i % 4}" for i in range(a.n_vars)])
    path = tmp_path / "f.h5ad"
    a.write_h5ad(path, compression="gzip")
    with h5py.File(path) as f:
        for key in ("obs", "var", "raw/var"):
            pd.testing.assert_frame_equal(_h5ad_fast.read_frame(f[key]), read_elem(f[key]))
