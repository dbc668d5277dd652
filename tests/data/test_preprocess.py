"""normalize_log1p, select_hvg and the per-cell quantile binning."""

import numpy as np
import pytest
import scipy.sparse as sp

from scmamba2.data import _binning
from scmamba2.data.preprocess import bin_values, normalize_log1p, select_hvg
from scmamba2.errors import InputError


def _reference_bins(dense: np.ndarray, n_bins: int) -> np.ndarray:
    """Slow per-cell reference of the documented rule (mid-rank, the cell's maximum at n_bins - 1)."""
    out = np.zeros(dense.shape, dtype=np.int64)
    for i, row in enumerate(dense):
        nz = row[row != 0]
        m = len(nz)
        for j in np.flatnonzero(row != 0):
            x = row[j]
            r_lo = int(np.sum(nz < x))
            r_hi = int(np.sum(nz <= x))
            if r_hi == m:
                out[i, j] = n_bins - 1
            else:
                q2 = r_lo + r_hi - 1  # twice the 0-based mid-rank
                out[i, j] = 1 + ((n_bins - 2) * q2) // (2 * (m - 1))
    return out


def _counts(seed=0, n_cells=40, n_genes=30):
    rng = np.random.default_rng(seed)
    dense = rng.negative_binomial(1, 0.3, size=(n_cells, n_genes)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.4] = 0
    dense[0] = 0  # empty cell
    dense[1] = 0
    dense[1, 3] = 5  # a single non-zero
    dense[2] = 0
    dense[2, :7] = 2  # all non-zeros equal
    return dense


def test_normalize_log1p_matches_dense_formula():
    dense = _counts()
    X = sp.csr_matrix(dense)
    before = X.data.copy()
    out = normalize_log1p(X, target_sum=100.0)
    assert sp.isspmatrix_csr(out) and out.dtype == np.float32
    totals = dense.sum(axis=1, keepdims=True)
    expected = np.log1p(np.divide(dense * 100.0, totals, out=np.zeros_like(dense), where=totals > 0))
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-6)
    np.testing.assert_array_equal(X.data, before)  # input untouched
    np.testing.assert_allclose(normalize_log1p(dense, 100.0).toarray(), expected, rtol=1e-6)  # dense input
    with pytest.raises(InputError):
        normalize_log1p(X, target_sum=0)


@pytest.mark.parametrize("n_bins", [2, 3, 11, 51])
def test_bins_equal_slow_reference(n_bins):
    dense = _counts(seed=n_bins)
    got = bin_values(sp.csr_matrix(dense), n_bins=n_bins)
    np.testing.assert_array_equal(got.toarray(), _reference_bins(dense, n_bins))


def test_bin_properties():
    n_bins = 21
    dense = _counts(seed=3, n_cells=60, n_genes=80)
    binned = bin_values(sp.csr_matrix(dense), n_bins=n_bins).toarray()
    np.testing.assert_array_equal(binned == 0, dense == 0)  # zeros stay 0, non-zeros leave bin 0
    assert binned.max() == n_bins - 1 and binned[dense != 0].min() >= 1
    for row_x, row_b in zip(dense, binned):
        nz = row_x != 0
        if not nz.any():
            continue
        x, b = row_x[nz], row_b[nz]
        order = np.argsort(x, kind="stable")
        assert np.all(np.diff(b[order]) >= 0)  # monotone
        for v in np.unique(x):
            assert len(np.unique(b[x == v])) == 1  # ties share a bin
        assert np.all(b[x == x.max()] == n_bins - 1)  # largest value -> top bin
        if np.sum(x == x.min()) == 1 and len(x) > 1:
            assert b[x == x.min()][0] == 1  # a unique smallest value -> bin 1
    assert np.all(binned[1][dense[1] != 0] == n_bins - 1)  # single non-zero
    assert np.all(binned[2][dense[2] != 0] == n_bins - 1)  # all equal


def test_bins_of_raw_equal_bins_of_log_normalised():
    dense = _counts(seed=5, n_cells=100, n_genes=200)
    X = sp.csr_matrix(dense)
    raw = bin_values(X, 51)
    lognorm = bin_values(normalize_log1p(X), 51)
    assert (raw != lognorm).nnz == 0
    np.testing.assert_array_equal(raw.indptr, lognorm.indptr)


def test_stored_zeros_and_structure():
    X = sp.csr_matrix(np.array([[0, 3, 1, 0], [2, 0, 0, 2]], dtype=np.float32))
    X.data[0] = 0.0  # an explicitly stored zero (the 3)
    out = bin_values(X, 5)
    assert out.nnz == 3  # the stored zero is dropped
    np.testing.assert_array_equal(out.toarray(), [[0, 0, 4, 0], [4, 0, 0, 4]])
    assert out.dtype == np.float32
    assert bin_values(X, 5, dtype=np.int16).dtype == np.int16


def test_float64_and_negative_values_follow_reference():
    rng = np.random.default_rng(7)
    dense = np.round(rng.normal(size=(20, 25)), 1)
    dense[rng.random(dense.shape) < 0.3] = 0
    dense += (dense != 0) * 1e-13 * rng.random(dense.shape)  # not exact in float32: lexsort path
    got = bin_values(sp.csr_matrix(dense), 9).toarray()
    np.testing.assert_array_equal(got, _reference_bins(dense, 9))
    dense32 = np.round(rng.normal(size=(20, 25)), 1).astype(np.float32)  # negatives via the bit key
    np.testing.assert_array_equal(bin_values(dense32, 9).toarray(), _reference_bins(dense32, 9))


@pytest.mark.parametrize("n_threads", [2, 3])
def test_threaded_row_blocks_match_serial(monkeypatch, n_threads):
    dense = _counts(seed=9, n_cells=200, n_genes=100)
    floats = dense * np.float32(0.37)  # the sort path
    serial = [bin_values(sp.csr_matrix(d), 51) for d in (dense, floats)]
    monkeypatch.setattr(_binning, "_PARALLEL_NNZ", 0)
    monkeypatch.setattr(_binning, "_n_threads", lambda: n_threads)
    calls = []
    block = _binning._bin_block
    monkeypatch.setattr(_binning, "_bin_block", lambda *a: calls.append(len(a[2])) or block(*a))
    for d, want in zip((dense, floats), serial):
        assert (bin_values(sp.csr_matrix(d), 51) != want).nnz == 0
    assert len(calls) == 2 * n_threads and sum(calls) == 2 * int((dense != 0).sum())  # blocks cover every entry


def test_bin_errors():
    with pytest.raises(InputError):
        bin_values(np.ones((2, 2)), n_bins=1)
    with pytest.raises(InputError, match="NaN"):
        bin_values(np.array([[1.0, np.nan]]), n_bins=5)
    with pytest.raises(InputError):
        bin_values(np.ones((2, 2)), n_bins=300, dtype=np.int8)


def test_select_hvg_seurat(tiny_counts):
    out = select_hvg(tiny_counts, n_top_genes=10, flavor="seurat")
    assert out.n_vars == 10 and out.var["highly_variable"].all()
    assert list(out.var_names) == [g for g in tiny_counts.var_names if g in set(out.var_names)]  # order kept
    assert tiny_counts.n_vars == 50  # input untouched


def test_select_hvg_seurat_v3_needs_skmisc(tiny_counts):
    try:
        import skmisc  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="scikit-misc"):
            select_hvg(tiny_counts, n_top_genes=10)
    else:
        assert select_hvg(tiny_counts, n_top_genes=10).n_vars == 10


def test_counting_and_sort_paths_agree(monkeypatch):
    rng = np.random.default_rng(11)
    dense = rng.poisson(2.0, size=(50, 60)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.05] = rng.integers(30, 5000, size=1)[0]  # some values above the table width
    dense[3, :10] = np.arange(100, 110)  # a cell whose large values are all distinct
    dense[rng.random(dense.shape) < 0.3] = 0
    X = sp.csr_matrix(dense)
    counting = bin_values(X, 51)
    np.testing.assert_array_equal(counting.toarray(), _reference_bins(dense, 51))
    monkeypatch.setattr(_binning, "_small_int_values", lambda data, n_rows: (None, 0))
    assert (bin_values(X, 51) != counting).nnz == 0


def test_hvg_selection_keeps_torch_thread_count():
    """scanpy's numba kernels share torch's libgomp and reset its thread count; select_hvg puts it back."""
    import anndata as ad
    import scipy.sparse as sp
    import torch

    from scmamba2._threads import keep_torch_threads
    from scmamba2.data.preprocess import select_hvg
    from scmamba2.eval.baselines import pca_embedding

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.get_num_threads() == 1  # torch's OpenMP is initialised before scanpy runs, as in real use
        counts = np.random.default_rng(0).poisson(1.0, (300, 500)).astype(np.float32)
        select_hvg(ad.AnnData(sp.csr_matrix(counts)), 50, flavor="seurat")
        assert torch.get_num_threads() == 1
        pca_embedding(ad.AnnData(sp.csr_matrix(counts)), n_comps=10)
        assert torch.get_num_threads() == 1
        with keep_torch_threads():
            torch.set_num_threads(2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
