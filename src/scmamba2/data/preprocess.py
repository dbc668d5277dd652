"""Expression preprocessing: total-count normalisation + log1p, highly variable genes, per-cell binning.

All functions work on the CSR structure directly (``indptr``/``indices``/``data``) without a per-cell
Python loop.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from .._threads import keep_torch_threads
from ._binning import _row_ids, bin_entries

logger = logging.getLogger(__name__)

__all__ = ["normalize_log1p", "select_hvg", "bin_values"]

def _as_csr(X: Any) -> sp.csr_matrix:
    """Return ``X`` as a CSR matrix (no copy when it already is one)."""
    if sp.issparse(X):
        return X.tocsr() if X.format != "csr" else X
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise InputError(f"Expected a 2-D cells x genes matrix, got an array of shape {arr.shape}.")
    return sp.csr_matrix(arr)


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
    bins = bin_entries(indptr, data, n_bins, dtype=dtype)
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
