"""The public datasets the field benchmarks on: where each lives, its licence, checksum, shape and obs keys.

Checksums: no sha256 below was computed from the real file (this package was written offline), so every public
record has ``sha256=None``: the first download is accepted on its length alone, with a warning, and its sha256
is pinned beside it in the cache (``<file>.sha256``); every later ``get`` and re-download is checked against that
pin (trust on first use). Fill a checksum in here only after computing it from a download (the pin holds it).
Shapes are the figures the cited papers and repositories report; ``get`` compares them with the converted file
and logs any difference.

The converted layout every task reads: one ``<cache>/<name>/<name>.h5ad`` (``.h5mu`` for RNA+ATAC) with raw
counts in ``X`` where the source has them, the canonical obs columns of :data:`CANONICAL_OBS` copied from the
source's columns (the source's own columns are kept), and ``uns['scmamba2_dataset']`` naming the source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import InputError

TASKS = ("annotate", "integrate", "multiomics", "perturb", "pretrain", "io")
CANONICAL_OBS = ("cell_type", "batch", "condition", "perturbation", "split")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_DRIVE = "manual: the source is a Google Drive folder without a direct link"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where to fetch it, the name to cache it under, its sha256 (``None``: unknown)."""

    url: str
    filename: str
    sha256: str | None = None

    def __post_init__(self):
        if self.sha256 is not None and not _SHA.match(self.sha256):
            raise ValueError(f"{self.filename}: sha256 must be 64 lower-case hex digits or None, got {self.sha256!r}")


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset: provenance, expected shape, the obs columns our tasks use and how to convert it.

    ``obs_keys`` maps a canonical column (``cell_type``, ``batch``, ...) to the source column(s) it is copied
    from, first present wins. ``converter`` names a function in :mod:`scmamba2.datasets.convert`. ``manual``
    records have no direct link: ``get`` says where to download the files by hand and where to put them.
    ``local_path`` is set for the files already on disk (``../shared/data``).
    """

    name: str
    title: str
    tasks: tuple[str, ...]
    licence: str
    homepage: str
    files: tuple[RemoteFile, ...] = ()
    n_obs: int | None = None
    n_vars: int | None = None
    shape_source: str = ""
    obs_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    converter: str = "h5ad"
    counts_layer: str | None = None
    manual: str | None = None
    notes: tuple[str, ...] = ()
    local_path: Path | None = None
    local_sha256: str | None = None

    def __post_init__(self):
        if not re.match(r"^[a-z0-9][a-z0-9_\-]*$", self.name):
            raise ValueError(f"dataset name {self.name!r}: use lower-case letters, digits, '_' and '-'")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ValueError(f"{self.name}: unknown task(s) {bad}; known: {TASKS}")
        bad = [k for k in self.obs_keys if k not in CANONICAL_OBS]
        if bad:
            raise ValueError(f"{self.name}: obs_keys {bad} are not canonical columns {CANONICAL_OBS}")
        if self.local_path is None and not self.files and self.manual is None and self.converter != "scvi_pbmc":
            raise ValueError(f"{self.name}: a remote record needs files, or a 'manual' instruction")

    @property
    def source(self) -> str:
        """``local`` (already on disk) or ``remote``."""
        return "local" if self.local_path is not None else "remote"

    @property
    def url(self) -> str:
        """The first file's URL, else the homepage."""
        return self.files[0].url if self.files else self.homepage

    @property
    def shape(self) -> str:
        """``"n_obs x n_vars"`` or ``"?"`` where unknown."""
        if self.n_obs is None:
            return "?"
        return f"{self.n_obs:,} x {self.n_vars:,}" if self.n_vars else f"{self.n_obs:,} x ?"


_CELL = ("cell_type", "celltype", "Celltype", "final_annotation", "str_labels")
_BATCH = ("batch", "tech", "str_batch", "sample")
SCGPT_DATA = "https://github.com/bowang-lab/scGPT/blob/main/data/README.md"
GEARS = "https://github.com/snap-stanford/GEARS"

PUBLIC: tuple[DatasetRecord, ...] = (
    # --- annotation (reference -> query) ---
    DatasetRecord(
        "hpancreas", "Human pancreas (TOSICA reference/query split, used by scGPT)", ("annotate",),
        "not stated by the distributor; the underlying GEO/ArrayExpress studies are public", SCGPT_DATA,
        files=(RemoteFile("https://drive.google.com/drive/folders/1s9XjcSiPC-FYV3VeHrEa7SeZetrthQVV", "demo_train.h5ad"),
               RemoteFile("https://drive.google.com/drive/folders/1s9XjcSiPC-FYV3VeHrEa7SeZetrthQVV", "demo_test.h5ad")),
        n_obs=14818, n_vars=3000, shape_source="scGPT paper: 10,600 reference + 4,218 query cells, 3,000 genes",
        obs_keys={"cell_type": ("Celltype", "celltype", "cell_type")}, converter="ref_query", manual=_DRIVE,
        notes=("demo_train.h5ad is the reference, demo_test.h5ad the query (split = reference/query).",)),
    DatasetRecord(
        "ms", "Multiple sclerosis (Schirmer et al. 2019), scGPT reference/query split", ("annotate",),
        "not stated by the distributor (an EMBL-EBI Single Cell Expression Atlas export)", SCGPT_DATA,
        files=(RemoteFile("https://drive.google.com/drive/folders/1Qd42YNabzyr2pWt9xoY4cVMTAxsNBt4v", "c_data.h5ad"),
               RemoteFile("https://drive.google.com/drive/folders/1Qd42YNabzyr2pWt9xoY4cVMTAxsNBt4v", "filtered_ms_adata.h5ad")),
        n_obs=21312, n_vars=3000, shape_source="scGPT paper: 7,844 reference + 13,468 query cells, 3,000 genes",
        obs_keys={"cell_type": ("Factor Value[inferred cell type - authors labels]", "celltype", "cell_type")},
        converter="ref_query", manual=_DRIVE,
        notes=("c_data.h5ad is the reference (control), filtered_ms_adata.h5ad the query (MS patients).",)),
    DatasetRecord(
        "myeloid", "Tumour-infiltrating myeloid cells (Cheng et al. 2021), scGPT split", ("annotate",),
        "not stated by the distributor (GEO GSE154763)", SCGPT_DATA,
        files=(RemoteFile("https://drive.google.com/drive/folders/1VbpApQufZq8efFGakW3y8QDDpY9MBoDS", "reference_adata.h5ad"),
               RemoteFile("https://drive.google.com/drive/folders/1VbpApQufZq8efFGakW3y8QDDpY9MBoDS", "query_adata.h5ad")),
        shape_source="not recorded here (no figure we could confirm offline)",
        obs_keys={"cell_type": ("cell_type", "celltype"), "batch": ("cancer_type", "batch")},
        converter="ref_query", manual=_DRIVE),
    DatasetRecord(
        "zheng68k", "10x Fresh 68k PBMCs, donor A (Zheng et al. 2017) with the paper's cell types", ("annotate",),
        "CC BY 4.0 (10x Genomics datasets); labels from 10XGenomics/single-cell-3prime-paper",
        "https://www.10xgenomics.com/datasets/fresh-68-k-pbm-cs-donor-a-1-standard-1-1-0",
        files=(RemoteFile("https://cf.10xgenomics.com/samples/cell-exp/1.1.0/fresh_68k_pbmc_donor_a/"
                          "fresh_68k_pbmc_donor_a_filtered_gene_bc_matrices.tar.gz",
                          "fresh_68k_pbmc_donor_a_filtered_gene_bc_matrices.tar.gz"),
               RemoteFile("https://raw.githubusercontent.com/10XGenomics/single-cell-3prime-paper/master/"
                          "pbmc68k_analysis/68k_pbmc_barcodes_annotation.tsv", "68k_pbmc_barcodes_annotation.tsv")),
        n_obs=68579, n_vars=32738, shape_source="10x web summary: 68,579 cells; hg19 gene list: 32,738 genes",
        obs_keys={"cell_type": ("celltype",)}, converter="zheng68k"),
    # --- batch integration ---
    DatasetRecord(
        "pbmc10k", "PBMC 8k + 4k, two 10x batches (scvi-tools pbmc_dataset, used by scGPT)", ("integrate",),
        "CC BY 4.0 (10x Genomics datasets); metadata from YosefLab/scVI-data",
        "https://docs.scvi-tools.org/en/stable/api/reference/scvi.data.pbmc_dataset.html",
        n_obs=11990, n_vars=3346, shape_source="scvi-tools documentation of pbmc_dataset",
        obs_keys={"cell_type": ("str_labels",), "batch": ("batch",)}, converter="scvi_pbmc",
        notes=("Fetched by scvi-tools' own loader (pip install 'scmamba2[bench]'): no resume, no checksum.",)),
    DatasetRecord(
        "covid19", "COVID-19 PBMC/BALF atlas subset used by scGPT for integration", ("integrate",),
        "not stated by the distributor", SCGPT_DATA,
        files=(RemoteFile("https://drive.google.com/file/d/1eD9LbxNJ35YUde3VtdVcjkwm-f4iyJ6x/view", "covid19.h5ad"),),
        shape_source="not recorded here (no figure we could confirm offline)",
        obs_keys={"cell_type": _CELL, "batch": _BATCH}, converter="h5ad",
        manual="manual: Google Drive asks for a confirmation on large files; save it as covid19.h5ad"),
    DatasetRecord(
        "scib_immune_human", "Human immune cells, 10 batches (scIB, Luecken et al. 2022)", ("integrate",),
        "CC BY 4.0 (figshare item)", "https://doi.org/10.6084/m9.figshare.12420968",
        files=(RemoteFile("https://figshare.com/ndownloader/files/25717328", "Immune_ALL_human.h5ad"),),
        n_obs=33506, n_vars=12303, shape_source="scIB paper, Supplementary Table 1",
        obs_keys={"cell_type": ("final_annotation",), "batch": ("batch",)}, counts_layer="counts",
        notes=("X of the source is normalised; the converter puts layers['counts'] into X.",)),
    DatasetRecord(
        "scib_pancreas", "Human pancreas, 9 batches (scIB, Luecken et al. 2022)", ("integrate", "annotate"),
        "CC BY 4.0 (figshare item)", "https://doi.org/10.6084/m9.figshare.12420968",
        files=(RemoteFile("https://figshare.com/ndownloader/files/24539828", "human_pancreas_norm_complexBatch.h5ad"),),
        n_obs=16382, n_vars=19093, shape_source="scIB paper, Supplementary Table 1",
        obs_keys={"cell_type": ("celltype",), "batch": ("tech",)}, counts_layer="counts",
        notes=("X of the source is normalised; the converter puts layers['counts'] into X.",)),
    # --- multi-omics ---
    DatasetRecord(
        "bmmc_cite", "Bone marrow CITE-seq, NeurIPS 2021 multimodal challenge (GEO GSE194122)", ("multiomics",),
        "CC BY 4.0 (as listed by scvi-hub)", "https://www.ncbi.nlm.nih.gov/geo/query/acc.cgi?acc=GSE194122",
        files=(RemoteFile("https://ftp.ncbi.nlm.nih.gov/geo/series/GSE194nnn/GSE194122/suppl/"
                          "GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad.gz",
                          "GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad.gz"),),
        n_obs=90261, n_vars=13953, shape_source="Luecken et al. 2021 (NeurIPS datasets track): 90,261 cells, "
        "13,953 genes + 134 proteins",
        obs_keys={"cell_type": ("cell_type",), "batch": ("batch",)}, converter="bmmc_cite", counts_layer="counts",
        notes=("RNA (feature_types GEX) stays in X; the 134 ADT counts go to obsm['protein_counts'] with "
               "uns['protein_names'].",
               "YosefLab/scvi-hub-models lists a sha256 for this file (b9b50fad...); not verified here, so not used.")),
    DatasetRecord(
        "pbmc10k_multiome", "10x Multiome PBMC granulocyte-sorted 10k (RNA + ATAC)", ("multiomics",),
        "CC BY 4.0 (10x Genomics datasets)",
        "https://www.10xgenomics.com/datasets",
        files=(RemoteFile("https://cf.10xgenomics.com/samples/cell-arc/2.0.0/pbmc_granulocyte_sorted_10k/"
                          "pbmc_granulocyte_sorted_10k_filtered_feature_bc_matrix.h5",
                          "pbmc_granulocyte_sorted_10k_filtered_feature_bc_matrix.h5"),),
        n_obs=11898, n_vars=180488, shape_source="read of the 2.0.0 filtered matrix reported in a public script",
        converter="tenx_multiome",
        notes=("Written as .h5mu with modalities rna and atac. No cell types: scGPT's labelled copy is a Google "
               "Drive folder (1VRsVugg... for BMMC, 163J4Qi7... for this set).",)),
    # --- perturbation (GEARS format) ---
    DatasetRecord(
        "norman", "Norman et al. 2019 K562 CRISPRa single and double perturbations (GEARS format)", ("perturb",),
        "not stated by the distributor (Harvard Dataverse, GEARS)", GEARS,
        files=(RemoteFile("https://dataverse.harvard.edu/api/access/datafile/6154020", "norman.zip"),),
        n_obs=91205, n_vars=5045, shape_source="the GEARS-processed file as printed in GEARS tutorials",
        obs_keys={"condition": ("condition",), "cell_type": ("cell_type",)}, converter="gears",
        notes=("X is log-normalised as GEARS ships it (no raw counts in the file).",
               "condition is GEARS's 'A+B' / 'A+ctrl' / 'ctrl'; perturbation drops the '+ctrl' part.")),
    DatasetRecord(
        "adamson", "Adamson et al. 2016 K562 CRISPRi UPR perturbations (GEARS format)", ("perturb",),
        "not stated by the distributor (Harvard Dataverse, GEARS)", GEARS,
        files=(RemoteFile("https://dataverse.harvard.edu/api/access/datafile/6154417", "adamson.zip"),),
        n_obs=68603, n_vars=5060, shape_source="the GEARS-processed file as printed in GEARS tutorials",
        obs_keys={"condition": ("condition",), "cell_type": ("cell_type",)}, converter="gears",
        notes=("X is log-normalised as GEARS ships it (no raw counts in the file).",)),
)


def all_records(shared_dir: str | Path | None = None) -> dict[str, DatasetRecord]:
    """Every record by name: the public ones and those found in the shared data folder (see ``local.py``)."""
    from .local import local_records

    records = {r.name: r for r in PUBLIC}
    for r in local_records(shared_dir):
        if r.name in records:  # a local file named like a public record keeps both reachable
            r = replace(r, name=f"local_{r.name}")
        records[r.name] = r
    return records


def get_record(name: str, shared_dir: str | Path | None = None) -> DatasetRecord:
    """The record called ``name``; an :class:`InputError` listing the known names otherwise."""
    records = all_records(shared_dir)
    if name not in records:
        raise InputError(f"unknown dataset {name!r}. Known datasets: {', '.join(sorted(records))}. "
                         f"`scmamba2 datasets list` shows them with their sources.")
    return records[name]
