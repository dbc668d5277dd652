"""A faster reader for ``.h5ad`` files whose sparse matrices are gzip-compressed (the common case).

h5py decompresses a chunked dataset one small chunk at a time through the HDF5 filter pipeline, holding
the GIL. For the 1-d ``data``/``indices`` arrays of a CSR/CSC matrix compressed with gzip alone, this module
reads the stored chunks as raw bytes and inflates them on a small thread pool, writing straight into the
output array. The inflation is ISA-L's (the ``isal`` package, a dependency: about 2x :mod:`zlib`'s on these
chunks, see ``benchmarks/results/tokenize.md``), or :mod:`zlib`'s where ``isal`` does not import; both release
the GIL. The inflation of ``X`` and of the layers runs while anndata reads everything else (obs, var, uns,
...), element by element (:func:`anndata.experimental.read_dispatched`), so the AnnData is the same as
``anndata.read_h5ad``'s; other filters, dense matrices and small arrays go through h5py's own read.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse as sp

try:
    from isal.isal_zlib import decompress as _inflate
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same bytes, slower
    from zlib import decompress as _inflate

_GZIP = 1  # HDF5 filter id of deflate
# numpy's variable-width string dtype, which h5py >= 3.14 reads variable-length strings into (None: older ones)
_STRING_DTYPE = getattr(getattr(np, "dtypes", None), "StringDType", None)
_STRING_DTYPE = None if _STRING_DTYPE is None else _STRING_DTYPE()
_MIN_PARALLEL_BYTES = 1 << 20  # smaller arrays: h5py's own read


def _workers() -> int:
    """Inflating threads: one core fewer than the process may use (at least one), since the main thread reads
    obs and var meanwhile and is the read's critical path (on 2 cores, 1 worker reads pbmc3k ~10 % faster
    than 2, interleaved A/B by hand)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores - 1, 8))


def _gzip_only(ds) -> bool:
    plist = ds.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    return filters == [_GZIP]


def _chunk_spans(ds) -> list[tuple[int, int, int]] | None:
    """``(byte offset, stored size, filter mask)`` of each chunk of a 1-d dataset in element order, from one HDF5
    call, when the file is a plain file the workers can read themselves (else None: the chunks through h5py)."""
    if not hasattr(os, "pread") or ds.file.driver != "sec2" or not hasattr(ds.id, "chunk_iter"):
        return None
    found: list[tuple[int, int, int, int]] = []
    try:
        ds.id.chunk_iter(lambda c: found.append((c.chunk_offset[0], c.byte_offset, c.size, c.filter_mask)))
    except Exception:  # noqa: BLE001 - an HDF5 library without chunk iteration: the h5py route
        return None
    found.sort()
    return [(offset, size, mask) for _, offset, size, mask in found]


def start_1d(ds, pool: ThreadPoolExecutor | None) -> np.ndarray | list[Future]:
    """Start reading a 1-d h5py dataset: the array itself, or (gzip-only chunked ones of at least 1 MiB) the
    futures of its inflation on ``pool``, which :func:`finish_1d` waits for.

    The workers read the stored chunks from the file themselves (``os.pread`` at the offsets HDF5 gives), so the
    main thread, which holds h5py's lock while anndata reads obs and var, only asks where the chunks are."""
    n = ds.shape[0] if ds.ndim == 1 else 0
    if (pool is None or ds.ndim != 1 or ds.chunks is None or n * ds.dtype.itemsize < _MIN_PARALLEL_BYTES
            or not ds.dtype.isnative or not _gzip_only(ds)):
        return ds[...]
    step = ds.chunks[0]
    starts = range(0, n, step)
    if ds.id.get_num_chunks() != len(starts):  # some chunks never written (fill value): the plain read
        return ds[...]
    out = np.empty(n, dtype=ds.dtype)
    size = out.itemsize
    spans = _chunk_spans(ds)
    if spans is not None and any(mask for *_, mask in spans):  # a chunk stored with gzip skipped: h5py's read
        return ds[...]
    if spans is not None:  # as many spans as chunks: get_num_chunks() was checked above
        handle = ds.file.id.get_vfd_handle()  # the file h5py has open (not its path, which could change)

        def stored(first: int, last: int, fd: int):
            try:
                for c in range(first, last):
                    yield c, os.pread(fd, spans[c][1], spans[c][0])
            finally:
                os.close(fd)
    else:
        chunks = [ds.id.read_direct_chunk((i,)) for i in starts]  # through h5py: holds the GIL
        if any(mask for mask, _ in chunks):  # a chunk stored with gzip skipped: h5py's own read
            return ds[...]
        raw = [data for _, data in chunks]
        handle = None

        def stored(first: int, last: int, fd: None):
            return ((c, raw[c]) for c in range(first, last))

    def inflate(first: int, last: int, fd: int | None) -> np.ndarray:
        for c, data in stored(first, last, fd):
            i = c * step
            k = min(step, n - i)
            out[i : i + k] = np.frombuffer(_inflate(data, bufsize=k * size), dtype=out.dtype, count=k)
        return out

    # A few long tasks (one per worker), not one per chunk: fewer hand-overs of the GIL.
    n_tasks = min(len(starts), _workers())
    bounds = np.linspace(0, len(starts), n_tasks + 1).astype(int)
    # Each task reads through its own duplicate of h5py's descriptor, made here and closed by the task.
    return [pool.submit(inflate, a, b, None if handle is None else os.dup(handle))
            for a, b in zip(bounds[:-1], bounds[1:])]


def finish_1d(started: np.ndarray | list[Future]) -> np.ndarray:
    """The array of :func:`start_1d`, once its inflation is done."""
    if isinstance(started, np.ndarray):
        return started
    return [f.result() for f in started][-1]


def read_1d(ds, pool: ThreadPoolExecutor | None) -> np.ndarray:
    """Read a 1-d h5py dataset; gzip-only chunked ones of at least 1 MiB are inflated on ``pool``."""
    return finish_1d(start_1d(ds, pool))


def read_strings(ds) -> np.ndarray:
    """A variable-length string dataset as an object array of ``str`` (what anndata returns), read through
    numpy's ``StringDType``: h5py then converts in C instead of decoding each string in Python (the gain of this
    and :func:`read_dataframe`: ``benchmarks/results/tokenize.md``)."""
    try:
        return ds.astype(_STRING_DTYPE)[()].astype(object)
    except (TypeError, ValueError):  # a string type h5py cannot read as StringDType: its own route
        return ds.asstr()[()]


def read_dataframe(group):
    """anndata's ``dataframe`` element (obs, var), read with fewer HDF5 attribute look-ups: numeric columns are
    read as they are, variable-length string columns and categories through :func:`read_strings` and
    categoricals are told by one attribute each; any other column (fixed-length bytes, nullable integers,
    booleans, strings) goes through anndata's own ``read_elem``. The same DataFrame as anndata's."""
    import h5py
    import pandas as pd

    read_elem = _read_elem()

    def array(ds):
        kind = h5py.check_string_dtype(ds.dtype)
        if kind is None and ds.dtype.kind not in "OSUV":  # numbers and bools: anndata's "array"
            return ds[()]
        if kind is not None and kind.length is None and _attr(ds, "encoding-type") == "string-array":
            return read_strings(ds)
        return read_elem(ds)  # bytes columns ("array") and the rest: anndata's own reading

    def column(elem):
        if isinstance(elem, h5py.Dataset):
            return array(elem)
        if _attr(elem, "encoding-type") == "categorical":
            return pd.Categorical.from_codes(elem["codes"][()], categories=array(elem["categories"]),
                                             ordered=bool(elem.attrs["ordered"]))
        return read_elem(elem)

    columns = list(_attr(group, "column-order"))
    index_key = _attr(group, "_index")
    df = pd.DataFrame({k: column(group[k]) for k in columns}, index=column(group[index_key]),
                      columns=columns if columns else None)
    if index_key != "_index":
        df.index.name = index_key
    return df


def read_frame(group):
    """An obs/var group as a DataFrame: :func:`read_dataframe` for anndata's current ``dataframe`` encoding
    (where numpy has ``StringDType``), anndata's ``read_elem`` for anything else."""
    if _STRING_DTYPE is not None and group.attrs.get("encoding-type") in ("dataframe", b"dataframe") and \
            group.attrs.get("encoding-version") in ("0.2.0", b"0.2.0"):
        return read_dataframe(group)
    return _read_elem()(group)


def _read_elem():
    """anndata's ``read_elem`` (``anndata.io`` from 0.11, ``anndata.experimental`` before)."""
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem


def _attr(elem, name: str):
    """An HDF5 attribute as anndata reads it: bytes decoded, a string array as a list of str."""
    value = elem.attrs[name]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
    return value


def read_h5ad(path: str | Path):
    """``anndata.read_h5ad(path)``, with gzip-compressed sparse matrices inflated in parallel."""
    import anndata as ad
    import h5py

    with h5py.File(path, "r") as f:
        if "encoding-type" in f.attrs:
            return _read_open(f, path)
    return ad.read_h5ad(path)  # written by anndata < 0.7: anndata's reader knows its layout


def _read_open(f, path):
    """:func:`read_h5ad` of the open file ``f``."""
    import anndata as ad
    import h5py
    from anndata.experimental import read_dispatched

    with ThreadPoolExecutor(_workers()) as pool:
        later = {}  # X and layers: inflated while anndata reads the rest, put in place at the end

        def callback(read_func, elem_name: str, elem, iospec):
            if iospec.encoding_type == "string-array" and isinstance(elem, h5py.Dataset) and _STRING_DTYPE:
                return read_strings(elem)
            if iospec.encoding_type == "dataframe" and iospec.encoding_version == "0.2.0" and _STRING_DTYPE:
                return read_dataframe(elem)
            if iospec.encoding_type in ("csr_matrix", "csc_matrix") and isinstance(elem, h5py.Group):
                cls = sp.csr_matrix if iospec.encoding_type == "csr_matrix" else sp.csc_matrix
                shape = tuple(int(s) for s in elem.attrs["shape"])
                parts = [start_1d(elem[k], pool) for k in ("data", "indices", "indptr")]
                if elem_name == "/X" or elem_name.startswith("/layers/"):
                    later[elem_name] = (cls, parts, shape)
                    return cls(shape, dtype=elem["data"].dtype)  # an empty stand-in of the right shape
                return cls(tuple(finish_1d(p) for p in parts), shape=shape)
            return read_func(elem)

        adata = read_dispatched(f, callback=callback)
        if not isinstance(adata, ad.AnnData):  # pragma: no cover - not an AnnData file
            raise ValueError(f"{path} does not hold an AnnData")
        for name, (cls, parts, shape) in later.items():
            matrix = cls(tuple(finish_1d(p) for p in parts), shape=shape)
            if name == "/X":
                adata.X = matrix
            else:
                adata.layers[name[len("/layers/") :]] = matrix
    return adata
