"""Expression preprocessing: total-count normalisation + log1p, highly variable genes, per-cell binning.

All functions work on the CSR structure directly (``indptr``/``indices``/``data``) without a per-cell
Python loop.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from .._threads import keep_torch_threads

logger = logging.getLogger(__name__)

__all__ = ["normalize_log1p", "select_hvg", "bin_values"]

# Above this many non-zeros the per-cell sort is split over threads (numpy sorts release the GIL).
_PARALLEL_NNZ = 500_000


def _as_csr(X: Any) -> sp.csr_matrix:
    """Return ``X`` as a CSR matrix (no copy when it already is one)."""
    if sp.issparse(X):
        return X.tocsr() if X.format != "csr" else X
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise InputError(f"Expected a 2-D cells x genes matrix, got an array of shape {arr.shape}.")
    return sp.csr_matrix(arr)


def _row_ids(indptr: np.ndarray) -> np.ndarray:
    """The row of every stored entry of a CSR structure (int64)."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def _row_scale(X: sp.csr_matrix, target_sum: float) -> np.ndarray:
    """Per-cell factor ``target_sum / total`` (0 for empty cells), float64."""
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    scale = np.zeros_like(totals)
    np.divide(float(target_sum), totals, out=scale, where=totals > 0)
    return scale


def normalize_log1p(X: Any, target_sum: float = 1e4) -> sp.csr_matrix:
    """Scale each cell to ``target_sum`` total counts, then apply ``log1p``.

    Parameters
    ----------
    X : sparse matrix or array-like, shape (n_cells, n_genes)
        Raw counts. Dense input is accepted and converted.
    target_sum : float, default 1e4
        Total of every (non-empty) cell after scaling. Empty cells stay zero.

    Returns
    -------
    scipy.sparse.csr_matrix of float32
        A new matrix; the input is not modified. Computed in float64 and rounded once.
    """
    if target_sum <= 0:
        raise InputError(f"target_sum must be positive, got {target_sum}.")
    X = _as_csr(X)
    scale = _row_scale(X, target_sum)
    data = np.log1p(X.data.astype(np.float64) * np.repeat(scale, np.diff(X.indptr))).astype(np.float32)
    return sp.csr_matrix((data, X.indices.copy(), X.indptr.copy()), shape=X.shape)


def select_hvg(
    adata: Any,
    n_top_genes: int,
    flavor: str = "seurat_v3",
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    target_sum: float = 1e4,
) -> Any:
    """Keep the ``n_top_genes`` most variable genes (a thin wrapper over :func:`scanpy.pp.highly_variable_genes`).

    The input must hold raw counts. ``"seurat_v3"`` works on the counts themselves; the other scanpy
    flavours (``"seurat"``, ``"cell_ranger"``) are run on a :func:`normalize_log1p` copy, as they expect.

    Parameters
    ----------
    adata : AnnData
        Raw counts in ``X`` (or in ``layer``). Not modified.
    n_top_genes : int
        Number of genes to keep.
    flavor : {"seurat_v3", "seurat", "cell_ranger", "seurat_v3_paper"}, default "seurat_v3"
        scanpy flavour. ``seurat_v3`` needs the ``scikit-misc`` package.
    layer : str, optional
        Layer with the counts; default ``X``.
    batch_key : str, optional
        ``obs`` column: select genes variable within batches (scanpy's ``batch_key``).
    target_sum : float, default 1e4
        Normalisation total for the log flavours.

    Returns
    -------
    AnnData
        A copy restricted to exactly ``n_top_genes`` genes (in their original order; scanpy's ties at
        the cut-off are broken by score, then position), with scanpy's columns in ``var``.
    """
    import scanpy as sc

    if n_top_genes <= 0:
        raise InputError(f"n_top_genes must be positive, got {n_top_genes}.")
    if n_top_genes >= adata.n_vars:
        logger.info("n_top_genes=%d >= %d genes: keeping all genes", n_top_genes, adata.n_vars)
        return adata.copy()
    from .validate import validate

    # Scaled values, negative counts or NaN make scanpy fail with an obscure message ("Bin edges must be
    # unique"): refuse them first, with the paragraph every other command gives.
    a = adata if layer is None else sc.AnnData(X=adata.layers[layer], obs=adata.obs[[]], var=adata.var[[]])
    validate(a, purpose="gene selection")
    if flavor.startswith("seurat_v3"):
        try:
            import skmisc  # noqa: F401
        except ImportError as exc:
            raise InputError(
                "flavor='seurat_v3' needs the scikit-misc package: `pip install scikit-misc`, "
                "or pass flavor='seurat' (runs on log1p-normalised counts)."
            ) from exc
        matrix = adata.X if layer is None else adata.layers[layer]
    else:
        matrix = normalize_log1p(adata.X if layer is None else adata.layers[layer], target_sum)
    work = sc.AnnData(X=matrix, obs=adata.obs[[]] if batch_key is None else adata.obs[[batch_key]])
    work.var_names = adata.var_names
    with keep_torch_threads():  # scanpy's numba kernels reset torch's OpenMP threads
        stats = sc.pp.highly_variable_genes(
            work, n_top_genes=n_top_genes, flavor=flavor, batch_key=batch_key, inplace=False
        )
    mask = np.asarray(stats["highly_variable"], dtype=bool)
    if mask.sum() > n_top_genes:  # scanpy keeps ties at the cut-off: keep exactly n_top_genes
        if "highly_variable_rank" in stats:
            score = -np.nan_to_num(np.asarray(stats["highly_variable_rank"], dtype=float), nan=np.inf)
        else:
            score = np.nan_to_num(np.asarray(stats["dispersions_norm"], dtype=float), nan=-np.inf)
        score = np.where(mask, score, -np.inf)
        mask = np.zeros_like(mask)
        mask[np.argsort(-score, kind="stable")[:n_top_genes]] = True
    out = adata[:, mask].copy()
    for col in stats.columns:
        out.var[col] = np.asarray(stats[col])[mask]
    logger.info("Selected %d highly variable genes of %d (flavor=%s)", int(mask.sum()), adata.n_vars, flavor)
    return out


def _n_threads() -> int:
    """CPU cores this process may use (at most 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _value_key(data: np.ndarray) -> np.ndarray | None:
    """An int64 in [0, 2**32) per value that sorts like the value, or None when float32 is not exact."""
    if data.dtype == np.float32:
        v32 = data
    else:
        v32 = data.astype(np.float32)
        if not np.array_equal(v32, data):
            return None
    bits = v32.view(np.int32)
    # Order-preserving map of IEEE floats to signed ints: flip the magnitude bits of negatives.
    bits = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    return bits.astype(np.int64) + np.int64(2**31)


def _row_value_order(indptr: np.ndarray, row: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Permutation sorting the entries by (row, value); rows are contiguous so rows stay in place."""
    vkey = _value_key(data)
    if vkey is None:
        return np.lexsort((data, row))
    key = (row << 32) | vkey
    nnz = len(key)
    n_threads = _n_threads()
    if n_threads < 2 or nnz < _PARALLEL_NNZ:
        return np.argsort(key, kind="stable")
    # Cut at row boundaries into ~equal chunks; each chunk sorts independently (keys never interleave).
    cuts = np.searchsorted(indptr, np.linspace(0, nnz, n_threads + 1)[1:-1])
    bounds = np.unique(np.concatenate([[0], indptr[cuts], [nnz]]))

    def _sort(k: int) -> np.ndarray:
        lo, hi = bounds[k], bounds[k + 1]
        return np.argsort(key[lo:hi], kind="stable") + lo

    with ThreadPoolExecutor(n_threads) as pool:
        parts = list(pool.map(_sort, range(len(bounds) - 1)))
    return np.concatenate(parts)


def _bin_formula(r_lo: np.ndarray, r_hi: np.ndarray, m: np.ndarray, n_bins: int) -> np.ndarray:
    """The documented rule, from the counts of smaller (``r_lo``) and ``<=`` (``r_hi``) values of ``m``."""
    twice_midrank = (r_lo + r_hi - 1).astype(np.float64)
    denom = np.maximum(2 * (m - 1), 1).astype(np.float64)
    # Exact: numerator and denominator are small integers, so the float quotient floors correctly.
    bins = 1 + np.floor((n_bins - 2) * twice_midrank / denom).astype(np.int64)
    bins[r_hi == m] = n_bins - 1  # the cell's largest value
    return bins


def _bins_by_sort(indptr, row, data, n_bins, m_row=None, below_row=None) -> np.ndarray:
    """Bins via one sort keyed by (row, value) and run arithmetic.

    ``m_row`` is each row's number of non-zeros and ``below_row`` the number of its non-zeros smaller
    than every value given here (both default to this structure alone: the counts and 0).
    """
    nnz = len(data)
    order = _row_value_order(indptr, row, data)
    s = data[order]
    # Runs of equal values inside a row ("row" is unchanged by the sort: rows are contiguous).
    last = np.empty(nnz, dtype=bool)
    last[-1] = True
    np.not_equal(s[1:], s[:-1], out=last[:-1])
    last[:-1] |= row[1:] != row[:-1]
    first = np.empty(nnz, dtype=bool)
    first[0] = True
    first[1:] = last[:-1]
    # Per run (a few per cell for counts): the ranks of its first and last entry inside the cell.
    run_start, run_end = np.flatnonzero(first), np.flatnonzero(last)
    run_row = row[run_start]
    base = (0 if below_row is None else below_row[run_row]) - indptr[run_row]
    m = np.diff(indptr)[run_row] if m_row is None else m_row[run_row]
    run_bin = _bin_formula(run_start + base, run_end + base + 1, m, n_bins)
    out = np.empty(nnz, dtype=np.int64)
    out[order] = run_bin[np.cumsum(first) - 1]
    return out


def _small_int_values(data: np.ndarray, n_rows: int) -> tuple[np.ndarray | None, int]:
    """``(data as int64, table width T)`` when the values are positive integers (counts), else ``(None, 0)``."""
    if data.dtype.kind not in "fiu" or data.min() < 1 or data.max() >= 2**31:
        return None, 0
    ivals = data.astype(np.int64)
    if data.dtype.kind == "f" and not np.array_equal(ivals, data):
        return None, 0
    # Counting table of n_rows x T cells, at most ~2 per stored value.
    width = int(min(ivals.max() + 1, max(32, 2 * len(data) // max(n_rows, 1))))
    return ivals, width


def _bin_entries(indptr: np.ndarray, data: np.ndarray, n_bins: int) -> np.ndarray:
    """Bins (int64, 1..n_bins-1) of the stored entries of a CSR structure without stored zeros.

    Positive integer values below a width T (nearly all raw counts) are ranked by counting in an
    n_rows x T histogram; the others go through a sort keyed by (row, value). Both give the same bins.
    """
    nnz = len(data)
    if nnz == 0:
        return np.zeros(0, dtype=np.int64)
    indptr = indptr.astype(np.int64, copy=False)
    n_rows = len(indptr) - 1
    row = _row_ids(indptr)
    ivals, width = _small_int_values(data, n_rows)
    if ivals is None:
        return _bins_by_sort(indptr, row, data, n_bins)
    counts = np.diff(indptr)
    small = ivals < width
    all_small = bool(small.all())
    cell = row * width + ivals
    if not all_small:
        cell = cell[small]
    hist = np.bincount(cell, minlength=n_rows * width).reshape(n_rows, width)
    r_hi = np.cumsum(hist, axis=1)
    table = _bin_formula(r_hi - hist, r_hi, np.broadcast_to(counts[:, None], r_hi.shape), n_bins).ravel()
    if all_small:
        return table[cell]
    out = np.empty(nnz, dtype=np.int64)
    out[small] = table[cell]
    big = ~small
    big_row = row[big]
    big_indptr = np.concatenate([[0], np.cumsum(np.bincount(big_row, minlength=n_rows))])
    out[big] = _bins_by_sort(big_indptr, big_row, data[big], n_bins, m_row=counts, below_row=r_hi[:, -1])
    return out


def bin_values(X: Any, n_bins: int = 51, *, dtype: Any = np.float32) -> sp.csr_matrix:
    """Replace each cell's non-zero values by their within-cell quantile bin.

    Within a cell with ``m`` non-zero values, let ``r_lo`` be the number of non-zeros strictly smaller
    than a value ``x`` and ``r_hi`` the number ``<= x`` (ties included). ``x`` gets the bin of its
    0-based mid-rank ``q = (r_lo + r_hi - 1) / 2``::

        bin = 1 + floor((n_bins - 2) * q / (m - 1))

    except that the cell's largest value always gets ``n_bins - 1`` (also when ``m == 1`` or when all
    non-zeros of the cell are equal). Zeros stay 0 (and implicit).

    Hence non-zeros get bins ``1 .. n_bins - 1``; equal values get the same bin (deterministic ties);
    the bin never decreases with the value; a unique smallest value gets bin 1. The mid-rank puts a
    group of ties at the middle of the quantile range it spans: this is the expected bin under
    random tie-breaking, and keeps the many 1-counts of a cell from all landing in high bins.
    The bin depends only on the ranks of the values inside their cell, so any per-cell increasing
    transform (e.g. ``log1p(normalize_total(counts))``) gives exactly the same bins as the raw
    counts, as long as it keeps distinct values distinct (float32 rounding could merge two huge,
    nearly equal counts).

    The whole computation is vectorised (no loop over cells): positive integer values (counts) are
    ranked by counting in a cells x values histogram, other values by one sort keyed by (cell, value).

    Parameters
    ----------
    X : sparse matrix or array-like, shape (n_cells, n_genes)
        Expression values (raw counts or any per-cell monotone transform of them). Stored zeros
        are treated as zeros.
    n_bins : int, default 51
        Number of bins including the zero bin; must be at least 2.
    dtype : numpy dtype, default float32
        dtype of the result's data (``np.int16`` also works for ``n_bins <= 32768``).

    Returns
    -------
    scipy.sparse.csr_matrix
        Same shape; the entries are the input's non-zero entries, in the same order within each row.

    Raises
    ------
    InputError
        If ``n_bins < 2`` or the values contain NaN.
    """
    if n_bins < 2:
        raise InputError(f"n_bins must be at least 2 (the zero bin and one expression bin), got {n_bins}.")
    if np.dtype(dtype).kind in "iu" and n_bins - 1 > np.iinfo(dtype).max:
        raise InputError(f"n_bins={n_bins} does not fit in {np.dtype(dtype)}.")
    X = _as_csr(X)
    indptr, indices, data = X.indptr, X.indices, X.data
    if data.dtype.kind == "f" and np.isnan(data).any():
        raise InputError("The expression matrix contains NaN values; binning needs finite values.")
    nonzero = data != 0
    if not nonzero.all():
        counts = np.bincount(_row_ids(indptr)[nonzero], minlength=X.shape[0])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(X.indptr.dtype)
        indices, data = indices[nonzero], data[nonzero]
    else:
        indices = indices.copy()
        indptr = indptr.copy()
    bins = _bin_entries(indptr, data, n_bins).astype(dtype)
    return sp.csr_matrix((bins, indices, indptr), shape=X.shape)


# --- zero-gene sampling (for tokenize(include_zeros="sample")) ----------------------------------------


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic): a fast, well-spread hash."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _row_keys(indptr: np.ndarray, gene_ids: np.ndarray, values: np.ndarray, seed: int) -> np.ndarray:
    """A uint64 key per row from the seed and the row's (gene id, value) pairs, whatever their order."""
    entry = _mix64(gene_ids.astype(np.uint64) << np.uint64(32) | values.astype(np.float32).view(np.uint32))
    cums = np.zeros(len(entry) + 1, dtype=np.uint64)
    np.cumsum(entry, out=cums[1:])
    row_hash = cums[indptr[1:]] - cums[indptr[:-1]]  # wrapping sum per row
    return _mix64(row_hash ^ _mix64(np.full(1, seed % 2**64, dtype=np.uint64)))


def _sample_distinct(n: np.ndarray, k: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row r, ``k[r]`` distinct uniform draws from ``0..n[r]-1``; returns (row, value) sorted by row.

    The draws of row r are counter-based random numbers keyed by ``keys[r]`` (uint64): they depend on
    that key alone, not on the other rows.
    """
    n, k = n.astype(np.int64), np.minimum(k, n).astype(np.int64)
    complement = 2 * k > n  # draw the few values to leave out instead: each draw then succeeds w.p. >= 1/2
    want = np.where(complement, n - k, k)
    width = int(n.max(initial=0)) + 1
    rows, vals = np.zeros(0, np.int64), np.zeros(0, np.int64)
    deficit = want
    round_ = 0
    while deficit.any():
        new_rows = np.repeat(np.arange(len(n), dtype=np.int64), 2 * deficit)
        draw = np.arange(len(new_rows)) - np.repeat(np.cumsum(2 * deficit) - 2 * deficit, 2 * deficit)
        counter = _mix64((np.uint64(round_) << np.uint64(40)) | draw.astype(np.uint64))
        uniform = (_mix64(keys[new_rows] ^ counter) >> np.uint64(11)) * (1.0 / 2**53)
        new_vals = np.minimum((uniform * n[new_rows]).astype(np.int64), n[new_rows] - 1)
        round_ += 1
        rows, vals = np.concatenate([rows, new_rows]), np.concatenate([vals, new_vals])
        _, first = np.unique(rows * width + vals, return_index=True)  # first draw of each distinct value
        first.sort()
        rows, vals = rows[first], vals[first]
        order = np.argsort(rows, kind="stable")  # by row, draw order within a row
        rows, vals = rows[order], vals[order]
        starts = np.searchsorted(rows, np.arange(len(n)))
        keep = np.arange(len(rows)) - starts[rows] < want[rows]  # the first `want` distinct draws
        rows, vals = rows[keep], vals[keep]
        deficit = want - np.bincount(rows, minlength=len(n))
    if complement.any():
        c_rows = np.repeat(np.flatnonzero(complement), n[complement])
        c_offsets = np.concatenate([[0], np.cumsum(n[complement])])
        c_vals = np.arange(len(c_rows)) - np.repeat(c_offsets[:-1], n[complement])
        left_out = np.isin(c_rows * width + c_vals, rows * width + vals)
        plain = ~complement[rows]
        rows = np.concatenate([rows[plain], c_rows[~left_out]])
        vals = np.concatenate([vals[plain], c_vals[~left_out]])
        order = np.argsort(rows, kind="stable")
        rows, vals = rows[order], vals[order]
    return rows, vals


def _zero_tokens(indptr, ranks, n_genes, n_per_cell, keys):
    """Sample ``n_per_cell`` zero-valued genes per cell (fewer if it has fewer zeros), uniformly.

    ``ranks`` are the sorted column positions (0..n_genes-1) of each row's non-zeros; returns the
    (row, column position) of the chosen zeros, sorted by row.
    """
    counts = np.diff(indptr)
    n_zero = n_genes - counts
    rows, j = _sample_distinct(n_zero, np.full(len(counts), n_per_cell), keys)
    # The j-th zero of a row is column j + #{t : ranks[t] - t <= j} over the row's sorted non-zero ranks.
    row = _row_ids(indptr)
    shifted = ranks - (np.arange(len(ranks)) - indptr[:-1][row])
    width = n_genes + 1
    below = np.searchsorted(row * width + shifted, rows * width + j, side="right") - indptr[:-1][rows]
    return rows, j + below
