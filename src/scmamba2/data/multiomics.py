"""Multi-omics input: paired per-modality matrices, their normalisation and the joint tokenisation.

- :func:`read_multiomics` takes a MuData (``.h5mu``; modalities such as ``rna``, ``prot``/``adt``, ``atac``) or
  an AnnData whose ``obsm`` holds protein counts (scvi-tools' ``protein_expression`` + ``uns['protein_names']``,
  or a DataFrame) and returns the cells measured in every modality, in the RNA modality's order.
- Protein counts become Seurat's per-cell CLR, ``log1p(x / exp(mean(log1p(x))))`` over the cell's proteins
  (non-negative, 0 for a zero count, increasing in the count within a cell); ATAC peaks are binarised (or binned
  per cell) and the most variable ones kept (:func:`top_variable_peaks`).
- :class:`ModalitySpec` names the modalities (index 0 = RNA, as in :data:`~scmamba2._keys.MODALITY`) and the
  features of the others; their tokens are appended to the gene vocabulary with a prefix (``prot:CD3``,
  ``atac:chr1-100-200``) so that they never collide with gene symbols.
- :func:`joint_cells` makes one sequence per cell: ``<cls>``, the cell's RNA tokens (at most ``rna_max_len``,
  the highest values), then every feature of every other modality (zeros included: each feature always has a
  token, so any of them can be predicted). :class:`MultiomicCollator` adds each token's modality index and the
  cross-modal masking (a whole modality hidden in some cells).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .multiomics_tokens import ATAC, PREFIXES, PROT, RNA, ModalitySpec, MultiomicCollator, joint_cells
from .preprocess import bin_values
from .tokenize import TokenizerConfig

log = logging.getLogger(__name__)

__all__ = ["RNA", "PROT", "ATAC", "PREFIXES", "MultiomicData", "ModalitySpec", "MultiomicCollator",
           "canonical_modality", "read_multiomics", "to_container", "clr", "top_variable_peaks", "modality_values",
           "joint_cells"]

_ALIASES = {"rna": RNA, "gex": RNA, "gene_expression": RNA, "prot": PROT, "adt": PROT, "protein": PROT,
            "proteins": PROT, "cite": PROT, "atac": ATAC, "peaks": ATAC, "chromatin": ATAC}
#: ``obsm`` keys searched, in order, for protein counts in an AnnData (``hto_counts`` is hashing, never protein).
PROTEIN_OBSM_KEYS = ("protein_expression", "protein_counts", "protein", "prot", "adt", "ADT")
ATAC_VALUES = ("binary", "binned")


def canonical_modality(name: str) -> str | None:
    """``"adt"`` / ``"protein"`` -> ``"prot"``, ``"gex"`` -> ``"rna"``, ...; None for a name we do not know."""
    return _ALIASES.get(str(name).strip().lower().replace(" ", "_"))


# ---------------------------------------------------------------------------------------------------- reading
@dataclass
class MultiomicData:
    """The cells measured in every modality, as one AnnData per modality (same cells, same order).

    ``container`` is the object read (MuData or AnnData); ``rows`` the position of each paired cell in its
    ``obs`` (a MuData may hold cells measured in some modalities only; they are not in ``mods``).
    """

    mods: dict[str, Any]  # canonical name -> AnnData of raw counts; "rna" first
    container: Any
    rows: np.ndarray

    @property
    def n_obs(self) -> int:
        return len(self.rows)

    def obs_column(self, key: str) -> pd.Series:
        """``obs[key]`` of the paired cells, from the container's ``obs`` or else the RNA modality's."""
        if key in self.container.obs:
            return self.container.obs[key].iloc[self.rows].reset_index(drop=True)
        if key in self.mods[RNA].obs:
            return self.mods[RNA].obs[key].reset_index(drop=True)
        cols = list(self.container.obs.columns) + [c for c in self.mods[RNA].obs.columns
                                                   if c not in self.container.obs]
        raise InputError(f"{key!r} is not an obs column (of the data or of its RNA modality); available: {cols}")

    def as_anndata(self):
        """The paired cells as one AnnData: RNA counts in ``X``, the container's and the RNA modality's ``obs``
        columns, the container's ``obsm`` rows of these cells and its ``uns``."""
        import anndata as ad

        rna = self.mods[RNA]
        obs = rna.obs.copy()
        for c in self.container.obs.columns:
            obs[c] = self.container.obs[c].iloc[self.rows].to_numpy()
        obsm = {k: np.asarray(v)[self.rows] for k, v in self.container.obsm.items()
                if not isinstance(v, pd.DataFrame)}
        return ad.AnnData(X=rna.X, obs=obs, var=rna.var.copy(), obsm=obsm, uns=dict(self.container.uns))

    def as_mudata(self):
        """The container when it is a MuData, else a MuData of the modalities with its ``obs``, ``obsm``, ``uns``."""
        if hasattr(self.container, "mod"):
            return self.container
        import mudata

        mdata = mudata.MuData({m: a for m, a in self.mods.items()})
        for c in self.container.obs.columns:
            mdata.obs[c] = self.container.obs[c].to_numpy()
        for k, v in self.container.obsm.items():
            if k not in PROTEIN_OBSM_KEYS and not isinstance(v, pd.DataFrame):
                mdata.obsm[k] = np.asarray(v)
        mdata.uns.update(self.container.uns)
        return mdata


def to_container(md: MultiomicData, path: str | Path):
    """What to write for ``path``: a MuData for ``.h5mu`` (:meth:`MultiomicData.as_mudata`), else the container
    when it is an AnnData, else :meth:`MultiomicData.as_anndata`."""
    if str(path).lower().endswith(".h5mu"):
        return md.as_mudata()
    return md.container if not hasattr(md.container, "mod") else md.as_anndata()


def read_multiomics(data, *, protein_key: str | None = None) -> MultiomicData:
    """Paired per-modality raw counts from a MuData, an AnnData with protein counts in ``obsm``, or a path.

    Parameters
    ----------
    data
        A ``mudata.MuData`` (modalities named ``rna``/``gex``, ``prot``/``adt``/``protein``, ``atac``/``peaks``;
        others are ignored), an ``anndata.AnnData`` of RNA counts with protein counts in ``obsm`` (see
        ``protein_key``), or the path of a ``.h5mu`` / ``.h5ad`` file.
    protein_key
        The ``obsm`` key of the protein counts in an AnnData; default: the first of :data:`PROTEIN_OBSM_KEYS`
        present. An ndarray takes its names from ``uns['protein_names']`` (or ``uns[protein_key + '_names']``);
        a DataFrame from its columns.

    Raises
    ------
    InputError
        No RNA modality, no protein or ATAC modality (the message lists what there is), no cell measured in
        every modality, protein names missing, or negative / NaN / infinite counts.
    """
    if isinstance(data, MultiomicData):
        return data
    if isinstance(data, (str, Path)):
        data = _read_path(Path(data))
    if hasattr(data, "mod"):
        md = _from_mudata(data)
    elif hasattr(data, "obsm"):
        md = _from_anndata(data, protein_key)
    else:
        raise InputError(f"multiomics input must be a MuData, an AnnData or a .h5mu/.h5ad path, not {type(data).__name__}")
    for name, a in md.mods.items():
        a.X = _check_counts(a.X, name)
    log.info("multiomics input: %d paired cells; %s", md.n_obs,
             ", ".join(f"{k} {a.n_vars} features" for k, a in md.mods.items()))
    return md


def _read_path(p: Path):
    if not p.exists():
        raise InputError(f"Cannot read {str(p)!r}: no such file. Check the path.")
    if p.name.lower().endswith(".h5mu"):
        import warnings

        import mudata

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return mudata.read_h5mu(str(p))
        except MemoryError:
            raise
        except Exception as exc:  # h5py / mudata errors of a damaged file
            raise InputError(f"Cannot read {str(p)!r} as a MuData .h5mu file ({type(exc).__name__}: {exc}): the "
                             "file is truncated, damaged or not in that format; copy or download it again.") from None
    from .io import read

    return read(p)


def _from_mudata(mdata) -> MultiomicData:
    names = {}
    for mod in mdata.mod:
        canon = canonical_modality(mod)
        if canon is None:
            log.info("modality %r is not one scmamba2 reads (rna, prot/adt, atac): ignored", mod)
        elif canon in names:
            raise InputError(f"modalities {names[canon]!r} and {mod!r} are both {canon!r}; keep one of them")
        else:
            names[canon] = mod
    found = ", ".join(f"{m!r} ({mdata.mod[m].n_vars} features)" for m in mdata.mod)
    if RNA not in names:
        raise InputError(f"the MuData has no RNA modality (name it 'rna' or 'gex'); it has {found}")
    if len(names) < 2:
        raise InputError(f"the MuData has no protein or ATAC modality to pair with RNA (name them 'prot'/'adt' or "
                         f"'atac'); it has {found}")
    order = [RNA] + [m for m in (PROT, ATAC) if m in names]
    rna_names = pd.Index(mdata.mod[names[RNA]].obs_names)
    paired = rna_names
    for m in order[1:]:
        paired = paired[paired.isin(mdata.mod[names[m]].obs_names)]
    if len(paired) == 0:
        raise InputError(f"no cell name is shared by the modalities {[names[m] for m in order]}: paired "
                         "measurements need the same obs_names in every modality")
    if len(paired) < mdata.n_obs:
        log.warning("%d of %d cells are not measured in every modality %s and are left out",
                    mdata.n_obs - len(paired), mdata.n_obs, order)
    mods = {m: _as_memory(mdata.mod[names[m]][paired]) for m in order}
    return MultiomicData(mods=mods, container=mdata, rows=pd.Index(mdata.obs_names).get_indexer(paired))


def _from_anndata(adata, protein_key: str | None) -> MultiomicData:
    import anndata as ad

    keys = list(adata.obsm.keys())
    if protein_key is None:
        protein_key = next((k for k in PROTEIN_OBSM_KEYS if k in adata.obsm), None)
        if protein_key is None:
            raise InputError(f"no protein counts found: the AnnData has obsm keys {keys} (none of "
                             f"{list(PROTEIN_OBSM_KEYS)}). Put the protein counts in obsm['protein_expression'] with "
                             "their names in uns['protein_names'], pass protein_key=KEY (--protein-key), or give a "
                             "MuData with an 'rna' and a 'prot' (or 'atac') modality")
    elif protein_key not in adata.obsm:
        raise InputError(f"protein_key {protein_key!r} is not in obsm; the AnnData has obsm keys {keys}")
    counts = adata.obsm[protein_key]
    if isinstance(counts, pd.DataFrame):
        names, counts = [str(c) for c in counts.columns], counts.to_numpy()
    else:
        uns_key = next((k for k in ("protein_names", f"{protein_key}_names") if k in adata.uns), None)
        if uns_key is None:
            raise InputError(f"obsm[{protein_key!r}] is an array without protein names: store them in "
                             "uns['protein_names'] (one per column) or give obsm a DataFrame with named columns")
        names = [str(n) for n in np.asarray(adata.uns[uns_key])]
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(names):
        raise InputError(f"obsm[{protein_key!r}] has shape {counts.shape} but {len(names)} protein names")
    rna = adata.copy()
    # The counts as given (dtype kept, a copy): they become the MuData's protein modality when written as .h5mu.
    prot = ad.AnnData(X=counts.copy(), obs=pd.DataFrame(index=adata.obs_names),
                      var=pd.DataFrame(index=pd.Index(names)))
    return MultiomicData(mods={RNA: rna, PROT: prot}, container=adata, rows=np.arange(adata.n_obs))


def _as_memory(a):
    a = a.to_memory() if getattr(a, "isbacked", False) else a.copy()
    from .io import _standardise_matrix

    a.X = _standardise_matrix(a.X)
    return a


def _check_counts(X, modality: str):
    data = X.data if sp.issparse(X) else np.asarray(X)
    if data.size and not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise InputError(f"the {modality} counts hold {n} NaN or infinite values; give raw counts (replace missing "
                         "measurements by 0, or drop those cells)")
    if data.size and data.min() < 0:
        n = int((data < 0).sum())
        raise InputError(f"the {modality} counts hold {n} negative values: scmamba2 needs raw counts (not scaled or "
                         "centred values, e.g. after CLR or z-scoring); give the raw UMI / fragment counts")
    return X


# ------------------------------------------------------------------------------------------------ preprocessing
def clr(counts: Any) -> np.ndarray:
    """Seurat's per-cell centred log-ratio of protein counts: ``log1p(x / exp(mean_j log1p(x_j)))``.

    ``(n_cells, n_proteins)`` float32; non-negative, 0 where the count is 0, increasing in the count within a
    cell (so per-cell bins of the counts are bins of the CLR values).
    """
    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts, dtype=np.float64)
    x = x.astype(np.float64)
    geo = np.exp(np.log1p(x).mean(axis=1, keepdims=True))
    return np.log1p(x / geo).astype(np.float32)


def top_variable_peaks(X: Any, n_top: int) -> np.ndarray:
    """Column indices (increasing) of the ``n_top`` peaks whose binarised accessibility varies most,
    ``p (1 - p)`` with ``p`` the fraction of cells where the peak is open; ties by column order."""
    Xb = (X != 0) if sp.issparse(X) else (np.asarray(X) != 0)
    p = np.asarray(Xb.mean(axis=0), dtype=np.float64).ravel()
    order = np.argsort(-(p * (1.0 - p)), kind="stable")
    return np.sort(order[: min(n_top, len(p))])


def modality_values(modality: str, counts: Any, tok: TokenizerConfig, atac_values: str = "binary") -> np.ndarray:
    """Dense ``(n_cells, n_features)`` float32 token values of a non-RNA modality.

    Protein: the per-cell CLR (``value_mode="continuous"``) or per-cell quantile bins of the counts
    (``"binned"``; the same bins as of the CLR values). ATAC: ``"binary"`` 0/1 accessibility, or ``"binned"``
    per-cell quantile bins of the counts (``tok.n_bins``).
    """
    if modality == PROT:
        if tok.value_mode == "continuous":
            return clr(counts)
        return np.asarray(bin_values(counts, tok.n_bins).toarray(), dtype=np.float32)
    if modality == ATAC:
        if atac_values not in ATAC_VALUES:
            raise InputError(f"atac_values must be one of {ATAC_VALUES}, not {atac_values!r}")
        if atac_values == "binary":
            x = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
            return (x != 0).astype(np.float32)
        return np.asarray(bin_values(counts, tok.n_bins).toarray(), dtype=np.float32)
    raise ValueError(f"no value transform for modality {modality!r}")


