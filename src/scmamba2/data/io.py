"""Reading single-cell data into an :class:`anndata.AnnData` from the usual file formats.

One entry point, :func:`read`, dispatches on the path. :func:`select_matrix` picks the matrix the model
reads (``X``, a layer, or ``.raw``) on an AnnData that is already in memory.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["SOURCE_KEY", "SUPPORTED_FORMATS", "read", "select_matrix"]

logger = logging.getLogger(__name__)

#: ``adata.uns`` key recording where X came from: ``{"path": str | None, "matrix": "X" | "layers/NAME" | "raw"}``.
SOURCE_KEY = "scmamba2_source"

#: Human-readable list of what :func:`read` accepts (used in error messages).
SUPPORTED_FORMATS = (
    ".h5ad (AnnData)",
    ".h5mu (MuData; one modality)",
    ".h5 (10x Cell Ranger HDF5)",
    "a 10x folder with matrix.mtx.gz, features.tsv.gz and barcodes.tsv.gz (e.g. filtered_feature_bc_matrix/)",
    ".csv / .csv.gz / .tsv / .tsv.gz (cells as rows, genes as columns, first column the cell names)",
)

# A dense matrix with fewer non-zero entries than this fraction is stored as CSR.
_SPARSE_DENSITY = 0.5
_TEXT_SUFFIXES = {".csv": ",", ".csv.gz": ",", ".tsv": "\t", ".tsv.gz": "\t"}


def read(
    path: str | Path,
    *,
    layer: str | None = None,
    use_raw: bool = False,
    modality: str = "rna",
    standardise: bool = True,
) -> anndata.AnnData:
    """Read single-cell data from any supported format into an AnnData.

    Parameters
    ----------
    path
        A ``.h5ad``, ``.h5mu``, 10x ``.h5`` file, a 10x matrix folder (``matrix.mtx.gz``, ``features.tsv.gz``,
        ``barcodes.tsv.gz``; a folder that contains ``filtered_feature_bc_matrix/`` works too), or a
        ``.csv``/``.csv.gz``/``.tsv``/``.tsv.gz`` table with cells as rows, genes as columns and the cell
        names in the first column.
    layer
        Use ``adata.layers[layer]`` as X (e.g. ``"counts"``).
    use_raw
        Use ``adata.raw.X`` as X, with the genes of ``adata.raw.var``.
    modality
        For ``.h5mu`` files: the modality to return. Ignored for other formats.
    standardise
        Store X as float32 CSR (see Returns). ``False`` keeps X as the file stores it (format and dtype), for data
        that is written back with results added, as the CLI's ``embed``, ``annotate`` and ``integrate`` do; the
        tasks read any of these formats.

    Returns
    -------
    anndata.AnnData
        Cells x genes. X is float32, stored as CSR unless it is dense-friendly (>= 50% non-zero) or ``standardise``
        is ``False``. For 10x
        inputs var_names are unique gene symbols and ``var["gene_ids"]`` holds the gene ids.
        ``adata.uns["scmamba2_source"]`` records ``{"path": ..., "matrix": "X" | "layers/NAME" | "raw"}``.

    Raises
    ------
    InputError
        The path does not exist, its format is not supported, or the layer / raw / modality is absent.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"Cannot read {str(path)!r}: no such file or folder. Check the path (relative paths start "
                         f"from the current directory, {Path.cwd()}).")
    fmt = _detect_format(p)
    logger.info("Reading %s (%s)", p, fmt)
    try:
        adata = _read_format(p, fmt, modality)
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # whatever h5py, anndata, pandas or scanpy raise for a damaged file
        msg = " ".join(str(exc).split())[:300]
        raise InputError(f"Cannot read {str(p)!r} as {_FORMAT_NAMES[fmt]} ({type(exc).__name__}: {msg}): the file "
                         "is truncated, damaged or not in that format. Check that it was copied or downloaded "
                         "completely (compare its size or checksum with the source) and that its extension "
                         f"matches its content. Supported formats: {_supported()}.") from None
    adata = select_matrix(adata, layer=layer, use_raw=use_raw)
    if standardise:
        adata.X = _standardise_matrix(adata.X)
    adata.uns[SOURCE_KEY] = {"path": str(p.resolve()), "matrix": _matrix_name(layer, use_raw)}
    logger.info("Read %d cells x %d genes from %s (%s)", adata.n_obs, adata.n_vars, p, adata.uns[SOURCE_KEY]["matrix"])
    return adata


_FORMAT_NAMES = {"10x_mtx": "a 10x matrix folder", "10x_h5": "a 10x Cell Ranger .h5 file", "h5ad": "an AnnData .h5ad file",
                 "h5mu": "a MuData .h5mu file", "table": "a text table (csv/tsv)"}


def _read_format(p: Path, fmt: str, modality: str) -> anndata.AnnData:
    if fmt == "10x_mtx":
        return _read_10x_mtx(p)
    if fmt == "10x_h5":
        return _read_10x_h5(p)
    if fmt == "h5ad":
        from ._h5ad_fast import read_h5ad

        return read_h5ad(p)  # anndata's reader, with gzip sparse matrices inflated in parallel
    if fmt == "h5mu":
        return _read_h5mu(p, modality)
    return _read_table(p)


def select_matrix(
    adata: anndata.AnnData, *, layer: str | None = None, use_raw: bool = False, gene_column: str | None = None
) -> anndata.AnnData:
    """Return an AnnData whose X is the requested matrix: X itself, a layer, or ``.raw``.

    The input is not modified. With ``layer`` or ``use_raw`` a new AnnData is returned that shares the arrays
    of the input (no copy of the data); obs, obsm and uns are kept, ``.raw`` is not. With ``use_raw`` the genes
    are those of ``adata.raw.var`` and the layers are dropped (they belong to the other gene set).

    Parameters
    ----------
    adata
        The AnnData to select from.
    layer
        Name of the layer to use as X.
    use_raw
        Use ``adata.raw.X`` (and ``adata.raw.var``) as X.
    gene_column
        Name genes by this column of ``var`` (e.g. symbols when var_names are Ensembl ids) instead of
        ``var_names``.

    Returns
    -------
    anndata.AnnData
        ``adata`` itself when neither option is given, otherwise a new AnnData whose
        ``uns["scmamba2_source"]["matrix"]`` is ``"layers/NAME"`` or ``"raw"``.

    Raises
    ------
    InputError
        Both options are given, the layer does not exist, ``.raw`` is absent, or X is missing.
    """
    out = _select_x(adata, layer=layer, use_raw=use_raw)
    if gene_column is None:
        return out
    if gene_column not in out.var.columns:
        raise InputError(f"gene_column={gene_column!r} (--gene-column) is not a column of var; var has: "
                         f"{list(out.var.columns) or 'no columns'}.")
    import anndata as ad

    var = out.var.copy()
    names = var[gene_column]
    text = names.astype(str).str.strip()
    missing = (names.isna() | text.isin(["", "nan", "NaN", "None"])).to_numpy()  # incl. NaN stored as text
    # A gene without a name there keeps its var_name (not the text "nan", which made the genes one duplicate).
    var.index = np.where(missing, out.var_names.astype(str), names.astype(str).to_numpy())
    if missing.any():
        logger.warning("%d of %d genes have no name in var[%r]; they keep their var_names (e.g. %s)",
                       int(missing.sum()), len(missing), gene_column, ", ".join(map(str, out.var_names[missing][:3])))
    renamed = ad.AnnData(X=out.X, obs=out.obs, var=var, uns=dict(out.uns), layers=dict(out.layers))
    return renamed


def _select_x(adata: anndata.AnnData, *, layer: str | None, use_raw: bool) -> anndata.AnnData:
    import anndata as ad

    if layer is not None and use_raw:
        raise InputError(f"Choose one source for the expression matrix: layer={layer!r} and use_raw=True were both "
                         "given (on the CLI, pass either --layer or --use-raw).")
    if layer is None and not use_raw:
        if adata.X is None:
            raise InputError(f"The AnnData has no X matrix. {_describe_alternatives(adata)} Pick one with "
                             "layer=NAME / use_raw=True (--layer NAME / --use-raw on the CLI).")
        return adata

    if use_raw:
        if adata.raw is None:
            raise InputError(f"use_raw=True (--use-raw) was given but the AnnData has no .raw. "
                             f"{_describe_alternatives(adata, raw=False)}")
        raw = adata.raw
        out = ad.AnnData(
            X=raw.X, obs=adata.obs.copy(), var=raw.var.copy(), uns=dict(adata.uns),
            obsm=dict(adata.obsm), obsp=dict(adata.obsp),
        )
    else:
        if layer not in adata.layers:
            raise InputError(f"Layer {layer!r} was requested (layer= / --layer) but the AnnData has no such layer. "
                             f"{_describe_alternatives(adata)}")
        out = ad.AnnData(
            X=adata.layers[layer], obs=adata.obs.copy(), var=adata.var.copy(), uns=dict(adata.uns),
            obsm=dict(adata.obsm), varm=dict(adata.varm), obsp=dict(adata.obsp), varp=dict(adata.varp),
            layers=dict(adata.layers),
        )
    previous = adata.uns.get(SOURCE_KEY) or {}
    out.uns[SOURCE_KEY] = {"path": previous.get("path"), "matrix": _matrix_name(layer, use_raw)}
    return out


# ----------------------------------------------------------------------------------------------------------
# helpers


def _matrix_name(layer: str | None, use_raw: bool) -> str:
    if use_raw:
        return "raw"
    return "X" if layer is None else f"layers/{layer}"


def _describe_alternatives(adata: anndata.AnnData, raw: bool = True) -> str:
    """The layers (and, with ``raw``, whether there is a ``.raw``) a user could pick instead."""
    layers = list(adata.layers.keys())
    layer_txt = ("Available layers: " + ", ".join(repr(k) for k in layers) + ".") if layers else "It has no layers."
    if not raw:
        return layer_txt
    return layer_txt + (" It has a .raw (use_raw=True / --use-raw)." if adata.raw is not None else " It has no .raw.")


def _supported() -> str:
    return "; ".join(SUPPORTED_FORMATS)


def _is_10x_folder(p: Path) -> bool:
    return (p / "matrix.mtx.gz").is_file() or (p / "matrix.mtx").is_file()


def is_10x_matrix_dir(p: str | Path) -> bool:
    """A 10x matrix folder :func:`read` reads as one data set: it, or its ``filtered_feature_bc_matrix/`` (or
    ``outs/filtered_feature_bc_matrix/``), holds ``matrix.mtx(.gz)``."""
    p = Path(p)
    return any(_is_10x_folder(q) for q in (p, p / "filtered_feature_bc_matrix", p / "outs" / "filtered_feature_bc_matrix"))


def _detect_format(p: Path) -> str:
    if p.is_dir():
        return "10x_mtx"
    name = p.name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5mu"):
        return "h5mu"
    if name.endswith(".h5") or name.endswith(".hdf5"):
        return "10x_h5"
    for suffix in _TEXT_SUFFIXES:
        if name.endswith(suffix):
            return "table"
    raise InputError(f"Cannot read {str(p)!r}: the file type {''.join(p.suffixes) or '(no extension)'!r} is not "
                     f"supported. Supported formats: {_supported()}. Convert the data to .h5ad (e.g. with "
                     "anndata or scanpy) if it is in another format.")


def _read_10x_mtx(p: Path) -> anndata.AnnData:
    import scanpy as sc

    folder = p
    if not _is_10x_folder(folder):
        nested = [p / "filtered_feature_bc_matrix", p / "outs" / "filtered_feature_bc_matrix"]
        found = [q for q in nested if _is_10x_folder(q)]
        if not found:
            raise InputError(f"The folder {str(p)!r} is not a 10x matrix folder: it has no matrix.mtx.gz (or "
                             "matrix.mtx). Pass the folder that holds matrix.mtx.gz, features.tsv.gz and "
                             f"barcodes.tsv.gz (Cell Ranger's filtered_feature_bc_matrix/). Supported formats: "
                             f"{_supported()}.")
        folder = found[0]
    v3 = (folder / "matrix.mtx.gz").is_file()
    needed = ["features.tsv.gz", "barcodes.tsv.gz"] if v3 else ["genes.tsv", "barcodes.tsv"]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise InputError(f"The 10x folder {str(folder)!r} has a matrix but lacks {', '.join(missing)}. A 10x "
                         "folder needs matrix.mtx.gz, features.tsv.gz and barcodes.tsv.gz (Cell Ranger >= 3) or "
                         "matrix.mtx, genes.tsv and barcodes.tsv (Cell Ranger 2).")
    adata = sc.read_10x_mtx(folder, var_names="gene_symbols", make_unique=True)
    adata.var_names_make_unique()
    return adata


def _read_10x_h5(p: Path) -> anndata.AnnData:
    import scanpy as sc

    try:
        with warnings.catch_warnings():  # duplicate symbols are made unique just below
            warnings.filterwarnings("ignore", message="Variable names are not unique")
            adata = sc.read_10x_h5(p)
    except (KeyError, OSError, ValueError) as exc:
        raise InputError(f"Cannot read {str(p)!r} as a 10x Cell Ranger .h5 file ({exc}). If it is an AnnData "
                         f"file, rename it to .h5ad. Supported formats: {_supported()}.") from exc
    adata.var_names_make_unique()
    return adata


def _read_h5mu(p: Path, modality: str) -> anndata.AnnData:
    import h5py
    import mudata

    with h5py.File(p, "r") as f:
        mods = list(f["mod"].keys()) if "mod" in f else []
    if modality not in mods:
        avail = ", ".join(repr(m) for m in mods) if mods else "none"
        raise InputError(f"The MuData file {str(p)!r} has no modality {modality!r}; available modalities: "
                         f"{avail}. Pick one with modality=NAME (--modality NAME on the CLI).")
    logger.info("Reading the %r modality of the MuData file (its modalities: %s)", modality,
                ", ".join(repr(m) for m in mods))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return mudata.read_h5ad(str(p), modality)


def _read_table(p: Path) -> anndata.AnnData:
    import anndata as ad
    import pandas as pd

    sep = next(s for suffix, s in _TEXT_SUFFIXES.items() if p.name.lower().endswith(suffix))
    df = pd.read_csv(p, sep=sep, index_col=0)
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise InputError(f"The table {str(p)!r} has {df.shape[0]} rows and {df.shape[1]} columns; expected cells as "
                         "rows, genes as columns and the cell names in the first column.")
    non_numeric = [str(c) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise InputError(f"The table {str(p)!r} has {len(non_numeric)} non-numeric column(s), e.g. "
                         f"{', '.join(repr(c) for c in non_numeric[:5])}. Expected cells as rows, genes as columns "
                         "with numeric values, and the cell names in the first column only; move metadata columns "
                         "to a separate file.")
    obs = pd.DataFrame(index=pd.Index(df.index.astype(str), name=None))
    var = pd.DataFrame(index=pd.Index(df.columns.astype(str), name=None))
    return ad.AnnData(X=df.to_numpy(dtype=np.float32), obs=obs, var=var)


def _standardise_matrix(x):
    """Float32; CSR when sparse, or when dense with fewer than 50% non-zero values."""
    if hasattr(x, "to_memory"):  # backed sparse dataset
        x = x.to_memory()
    if sp.issparse(x):
        if x.format != "csr":
            x = x.tocsr()
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        return x
    x = np.asarray(x, dtype=np.float32)
    if x.size and np.count_nonzero(x) / x.size < _SPARSE_DENSITY:
        return sp.csr_matrix(x)
    return x
