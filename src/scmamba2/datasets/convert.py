"""Converters from each source's files to the layout our tasks read (see :mod:`scmamba2.datasets.registry`).

Each converter takes the record and the fetched files (by their cached filename) and returns an AnnData (or a
MuData for RNA+ATAC); :func:`convert` then copies the canonical obs columns and writes the result.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError
from .registry import DatasetRecord

log = logging.getLogger(__name__)


def convert(record: DatasetRecord, files: dict[str, Path], out_dir: Path) -> Path:
    """Convert the fetched ``files`` of ``record`` into ``out_dir/<name>.h5ad`` (``.h5mu``); returns the path."""
    fn = CONVERTERS.get(record.converter)
    if fn is None:
        raise InputError(f"{record.name}: no converter called {record.converter!r}; known: {sorted(CONVERTERS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = fn(record, files, out_dir)
    if hasattr(data, "mod"):  # MuData
        out = out_dir / f"{record.name}.h5mu"
        data.uns["scmamba2_dataset"] = _provenance(record)
        tmp = out.with_name(f"{record.name}.part.h5mu")  # a crash mid-write never leaves a "finished" file
        data.write(tmp)
        tmp.replace(out)
        return out
    add_canonical_obs(data, record)
    if record.counts_layer and record.counts_layer in data.layers:
        data.X = data.layers[record.counts_layer].copy()
    data.uns["scmamba2_dataset"] = _provenance(record)
    if record.n_obs is not None and data.n_obs != record.n_obs:
        log.warning("%s: %d cells after conversion, the registry expects %d (%s)", record.name, data.n_obs,
                    record.n_obs, record.shape_source)
    out = out_dir / f"{record.name}.h5ad"
    tmp = out.with_name(out.name + ".part")
    data.write_h5ad(tmp, compression="gzip")
    tmp.replace(out)
    return out


def add_canonical_obs(adata, record: DatasetRecord) -> None:
    """Copy each canonical column (``cell_type``, ``batch``, ...) from the first source column present.

    A canonical column already present is kept. A canonical column none of whose sources exists is an
    :class:`InputError` naming the columns the file has.
    """
    for key, sources in record.obs_keys.items():
        if key in adata.obs:
            continue
        found = next((s for s in sources if s in adata.obs), None)
        if found is None:
            raise InputError(f"{record.name}: none of the columns {list(sources)} (for obs['{key}']) is in the file; "
                             f"its obs columns are {list(adata.obs.columns)}. Update obs_keys in the registry.")
        adata.obs[key] = adata.obs[found].astype(str).astype("category")


def _provenance(record: DatasetRecord) -> dict:
    return {"name": record.name, "url": record.url, "licence": record.licence, "title": record.title}


def _read_h5ad(path: Path):
    import anndata as ad

    if path.suffix == ".gz":
        plain = path.with_suffix("")
        if not plain.exists():
            tmp = plain.with_name(plain.name + ".part")
            with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            tmp.replace(plain)
        path = plain
    return ad.read_h5ad(path)


def _h5ad(record, files, out_dir):
    """One h5ad (or h5ad.gz) file, used as it is."""
    return _read_h5ad(next(iter(files.values())))


def _ref_query(record, files, out_dir):
    """Two h5ad files, reference then query, concatenated with obs['split'] = reference / query."""
    import anndata as ad

    (ref_name, ref), (q_name, q) = list(files.items())[:2]
    a, b = _read_h5ad(ref), _read_h5ad(q)
    out = ad.concat({"reference": a, "query": b}, label="split", join="inner", index_unique="-")
    log.info("%s: %d reference (%s) + %d query (%s) cells, %d shared genes", record.name, a.n_obs, ref_name,
             b.n_obs, q_name, out.n_vars)
    return out


def _zheng68k(record, files, out_dir):
    """The 10x tarball (filtered_matrices_mex/hg19) joined with the paper's per-barcode cell types."""
    import pandas as pd
    import scanpy as sc

    tar_path = files["fresh_68k_pbmc_donor_a_filtered_gene_bc_matrices.tar.gz"]
    mex = _extract(tar_path, out_dir / "mex")
    mtx = next(mex.rglob("matrix.mtx"), None)
    if mtx is None:
        raise InputError(f"{tar_path} holds no matrix.mtx; the download may be damaged: delete it and run again")
    adata = sc.read_10x_mtx(mtx.parent, var_names="gene_symbols", make_unique=True)
    labels = pd.read_csv(files["68k_pbmc_barcodes_annotation.tsv"], sep="\t")
    lab = labels.set_index("barcodes")["celltype"]
    missing = ~adata.obs_names.isin(lab.index)
    if missing.any():
        raise InputError(f"zheng68k: {int(missing.sum())} barcodes have no cell type in the annotation file")
    adata.obs["celltype"] = lab.reindex(adata.obs_names).to_numpy()
    return adata


def _bmmc_cite(record, files, out_dir):
    """NeurIPS 2021 CITE-seq: GEX features stay in X, ADT counts move to obsm['protein_counts']."""
    adata = _read_h5ad(next(iter(files.values())))
    if "feature_types" not in adata.var:
        raise InputError("bmmc_cite: var['feature_types'] (GEX/ADT) is missing; the file is not the expected one")
    is_adt = (adata.var["feature_types"] == "ADT").to_numpy()
    layer = adata.layers[record.counts_layer] if record.counts_layer in adata.layers else adata.X
    adt = layer[:, is_adt]
    rna = adata[:, ~is_adt].copy()
    rna.obsm["protein_counts"] = np.asarray(adt.todense() if hasattr(adt, "todense") else adt, dtype=np.float32)
    rna.uns["protein_names"] = list(adata.var_names[is_adt])
    return rna


def _tenx_multiome(record, files, out_dir):
    """A 10x Multiome filtered .h5 split into a MuData with modalities ``rna`` and ``atac``."""
    import mudata as md
    import scanpy as sc

    adata = sc.read_10x_h5(next(iter(files.values())), gex_only=False)
    adata.var_names_make_unique()
    ft = adata.var["feature_types"]
    rna, atac = adata[:, ft == "Gene Expression"].copy(), adata[:, ft == "Peaks"].copy()
    if rna.n_vars == 0 or atac.n_vars == 0:
        raise InputError(f"{record.name}: expected Gene Expression and Peaks features, found {sorted(set(ft))}")
    return md.MuData({"rna": rna, "atac": atac})


def _gears(record, files, out_dir):
    """A GEARS Dataverse archive (a zip, as GEARS fetches it; a tarball works too): its
    ``perturb_processed.h5ad``, with obs['perturbation'] added."""
    root = _extract(next(iter(files.values())), out_dir / "gears")
    h5 = next(root.rglob("perturb_processed.h5ad"), None)
    if h5 is None:
        raise InputError(f"{record.name}: no perturb_processed.h5ad in the archive; delete it and run again")
    adata = _read_h5ad(h5)
    if "condition" in adata.obs and "perturbation" not in adata.obs:
        cond = adata.obs["condition"].astype(str)
        pert = cond.str.replace(r"\+ctrl$|^ctrl\+", "", regex=True)
        adata.obs["perturbation"] = pert.where(cond != "ctrl", "control").astype("category")
    return adata


def _scvi_pbmc(record, files, out_dir):
    """scvi-tools' pbmc_dataset (PBMC 8k + 4k); scvi-tools fetches the files itself."""
    try:
        import scvi
    except ImportError as e:
        raise InputError("pbmc10k is fetched by scvi-tools: pip install 'scmamba2[bench]'") from e
    try:
        return scvi.data.pbmc_dataset(save_path=str(out_dir / "scvi"))
    except OSError as e:  # URLError (offline), a damaged archive
        from .download import DownloadError

        raise DownloadError(f"pbmc10k: scvi-tools could not fetch or read its files ({e}). Connect to the network "
                            f"and run the command again; if it fails again delete {out_dir / 'scvi'}.") from e


def _extract(archive: Path, dest: Path) -> Path:
    """Extract a zip or tar archive once (a ``.done`` marker says it finished); refuses members outside ``dest``
    and names a damaged or unknown archive."""
    marker = dest / ".done"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _check_members(archive, dest, zf.namelist())
            zf.extractall(dest)
    else:
        try:
            tf = tarfile.open(archive)
        except tarfile.TarError as e:
            raise InputError(f"{archive} is neither a zip nor a tar archive ({e}); the download may be damaged or "
                             "a web page: delete it and run the command again") from e
        with tf:
            _check_members(archive, dest, tf.getnames())
            if hasattr(tarfile, "data_filter"):
                try:
                    tf.extractall(dest, filter="data")
                except tarfile.FilterError as e:  # an absolute or escaping link, a device file, ...
                    raise InputError(f"{archive}: the archive holds a member the safe extraction refuses ({e}); "
                                     "it is damaged or not the expected release: delete it and download it "
                                     "again, or report the source") from None
            else:  # pragma: no cover - older Python; members were checked above
                tf.extractall(dest)
    marker.touch()
    return dest


def _check_members(archive: Path, dest: Path, names: list[str]) -> None:
    root = dest.resolve()
    for name in names:
        if not (dest / name).resolve().is_relative_to(root):
            raise InputError(f"{archive}: member {name!r} points outside the extraction folder; refused")


CONVERTERS = {"h5ad": _h5ad, "ref_query": _ref_query, "zheng68k": _zheng68k, "bmmc_cite": _bmmc_cite,
              "tenx_multiome": _tenx_multiome, "gears": _gears, "scvi_pbmc": _scvi_pbmc}
