"""The vectorised per-cell quantile binning behind :func:`scmamba2.data.preprocess.bin_values`.

Bins depend only on the values of their own row, so a CSR structure can be cut at row boundaries into
blocks that are binned independently: above ``_PARALLEL_NNZ`` stored values the blocks run on a small
thread pool (numpy's sorts, arithmetic and gathers release the GIL). Inside a block, positive integer
values (counts) are ranked by counting in a rows x values histogram, other values by one sort keyed by
(row, value); both give the same bins.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# Above this many stored values the rows are cut into blocks processed on threads.
_PARALLEL_NNZ = 500_000


def _n_threads() -> int:
    """CPU cores this process may use (at most 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _row_ids(indptr: np.ndarray) -> np.ndarray:
    """The row of every stored entry of a CSR structure (int64)."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def _row_blocks(indptr: np.ndarray, n_blocks: int) -> np.ndarray:
    """Row boundaries ``[0, ..., n_rows]`` cutting a CSR structure into ``<= n_blocks`` parts of ~equal nnz."""
    nnz = int(indptr[-1])
    cuts = np.searchsorted(indptr, np.linspace(0, nnz, n_blocks + 1)[1:-1])
    return np.unique(np.concatenate([[0], cuts, [len(indptr) - 1]])).astype(np.int64)


def map_row_blocks(indptr: np.ndarray, fn: Callable[[int, int], Any], *, parallel: bool = True) -> list:
    """``[fn(r0, r1) for each row block]``: one block, or ~equal-nnz blocks on threads above ``_PARALLEL_NNZ``."""
    n_rows = len(indptr) - 1
    n_threads = _n_threads() if parallel else 1
    if n_threads < 2 or int(indptr[-1]) < _PARALLEL_NNZ:
        return [fn(0, n_rows)]
    bounds = _row_blocks(indptr, n_threads)
    with ThreadPoolExecutor(len(bounds) - 1) as pool:
        return list(pool.map(fn, bounds[:-1], bounds[1:]))


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


def _row_value_order(row: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Permutation sorting the entries by (row, value); rows are contiguous so rows stay in place."""
    vkey = _value_key(data)
    if vkey is None:
        return np.lexsort((data, row))
    return np.argsort((row << 32) | vkey, kind="stable")


def _bin_formula(r_lo: np.ndarray, r_hi: np.ndarray, m: np.ndarray, n_bins: int) -> np.ndarray:
    """The documented rule, from the counts of smaller (``r_lo``) and ``<=`` (``r_hi``) values of ``m``."""
    twice_midrank = (r_lo + r_hi - 1).astype(np.float64)
    denom = np.maximum(2 * (m - 1), 1).astype(np.float64)
    # Exact: numerator and denominator are small integers, so the float quotient floors correctly.
    bins = 1 + np.floor((n_bins - 2) * twice_midrank / denom).astype(np.int64)
    bins[r_hi == m] = n_bins - 1  # the cell's largest value
    return bins


def _bins_by_sort(indptr, row, data, n_bins, m_row=None, below_row=None) -> np.ndarray:
    """Bins (int64) via one sort keyed by (row, value) and run arithmetic.

    ``m_row`` is each row's number of non-zeros and ``below_row`` the number of its non-zeros smaller
    than every value given here (both default to this structure alone: the counts and 0).
    """
    nnz = len(data)
    order = _row_value_order(row, data)
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
    """``(data as int32, table width T)`` when the values are positive integers (counts), else ``(None, 0)``."""
    if data.dtype.kind not in "fiu":
        return None, 0
    lo, hi = data.min(), data.max()
    if not (lo >= 1 and hi < 2**31):  # also False for NaN
        return None, 0
    ivals = data.astype(np.int32)
    # int32 -> data's float type is exact, so a round trip that changes nothing means integer values.
    if data.dtype.kind == "f" and not np.array_equal(ivals.astype(data.dtype), data):
        return None, 0
    # Counting table of n_rows x T cells, at most ~2 per stored value.
    width = int(min(int(hi) + 1, max(32, 2 * len(data) // max(n_rows, 1))))
    return ivals, width


def _bin_block(indptr: np.ndarray, row: np.ndarray, data: np.ndarray, n_bins: int, dtype: Any) -> np.ndarray:
    """Bins of one CSR block (``indptr`` from 0, ``row`` from 0), as ``dtype``."""
    n_rows = len(indptr) - 1
    ivals, width = _small_int_values(data, n_rows)
    if ivals is None:
        return _bins_by_sort(indptr, row, data, n_bins).astype(dtype)
    counts = np.diff(indptr)
    small = ivals < width
    all_small = bool(small.all())
    cell = row * width + ivals  # (row, value) slot of each entry
    if not all_small:
        cell = cell[small]
    hist = np.bincount(cell, minlength=n_rows * width)
    r_hi = np.cumsum(hist.reshape(n_rows, width), axis=1)
    # The rule only on the occupied slots (a few per cell), looked up by every entry.
    slots = np.flatnonzero(hist)
    slot_hi = r_hi.ravel()[slots]
    table = np.zeros(n_rows * width, dtype=dtype)
    table[slots] = _bin_formula(slot_hi - hist[slots], slot_hi, counts[slots // width], n_bins)
    if all_small:
        return table[cell]
    out = np.empty(len(data), dtype=dtype)
    out[small] = table[cell]
    big = ~small
    big_row = row[big]
    big_indptr = np.concatenate([[0], np.cumsum(np.bincount(big_row, minlength=n_rows))])
    out[big] = _bins_by_sort(big_indptr, big_row, data[big], n_bins, m_row=counts, below_row=r_hi[:, -1])
    return out


def bin_entries(
    indptr: np.ndarray, data: np.ndarray, n_bins: int, *, row: np.ndarray | None = None, dtype: Any = np.int64,
    parallel: bool = True,
) -> np.ndarray:
    """Bins (1..n_bins-1, as ``dtype``) of the stored entries of a CSR structure without stored zeros.

    ``row`` is each entry's row (computed from ``indptr`` when not given). Above ``_PARALLEL_NNZ`` entries
    the rows are cut into blocks binned on threads, unless ``parallel`` is False; the bins are the same.
    """
    nnz = len(data)
    if nnz == 0:
        return np.zeros(0, dtype=dtype)
    indptr = indptr.astype(np.int64, copy=False)

    def block(r0: int, r1: int) -> np.ndarray:
        lo, hi = indptr[r0], indptr[r1]
        if row is None:
            rows = _row_ids(indptr[r0 : r1 + 1])
        else:
            rows = row[lo:hi] if r0 == 0 else row[lo:hi] - r0
        return _bin_block(indptr[r0 : r1 + 1] - lo, rows, data[lo:hi], n_bins, dtype)

    parts = map_row_blocks(indptr, block, parallel=parallel)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
