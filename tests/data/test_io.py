"""Tests for scmamba2.data.io: every reader round-trips, layer/raw selection, clear errors, real files."""

import gzip

import numpy as np
import pytest
import scipy.sparse as sp

from scmamba2.data.io import SOURCE_KEY, read, select_matrix
from scmamba2.data.validate import validate
from scmamba2.errors import InputError


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


@pytest.fixture
def adata(tiny_counts):
    """tiny_counts with a 'counts' layer (X doubled), a 'logged' layer, and a .raw with two extra genes."""
    import anndata as ad
    import pandas as pd

    a = tiny_counts.copy()
    raw_x = sp.hstack([a.X, sp.csr_matrix(np.ones((a.n_obs, 2), np.float32))]).tocsr()
    raw_var = pd.DataFrame(index=[*a.var_names, "RAWONLY1", "RAWONLY2"])
    a.raw = ad.AnnData(X=raw_x, obs=a.obs, var=raw_var)
    a.layers["counts"] = a.X.copy()
    a.layers["logged"] = a.X.copy()
    a.layers["logged"].data = np.log1p(a.layers["logged"].data)
    a.X = a.X * 2
    return a


def _write_10x_mtx(folder, x, ids, symbols, barcodes):
    """A Cell Ranger v3 folder: genes x cells matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz."""
    from scipy.io import mmwrite

    folder.mkdir(parents=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as f:
        mmwrite(f, sp.coo_matrix(np.asarray(x).T.astype(np.int64)), field="integer")
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.writelines(f"{i}\t{s}\tGene Expression\n" for i, s in zip(ids, symbols))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.writelines(f"{b}\n" for b in barcodes)


def test_h5ad_roundtrip(adata, tmp_path):
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    back = read(path)
    assert sp.isspmatrix_csr(back.X) or (sp.issparse(back.X) and back.X.format == "csr")
    assert back.X.dtype == np.float32
    np.testing.assert_array_equal(_dense(back.X), _dense(adata.X))
    assert list(back.obs_names) == list(adata.obs_names)
    assert list(back.var_names) == list(adata.var_names)
    assert back.uns[SOURCE_KEY] == {"path": str(path.resolve()), "matrix": "X"}


def test_h5ad_layer_and_raw(adata, tmp_path):
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    lay = read(path, layer="counts")
    np.testing.assert_array_equal(_dense(lay.X), _dense(adata.layers["counts"]))
    assert lay.uns[SOURCE_KEY]["matrix"] == "layers/counts"
    raw = read(path, use_raw=True)
    assert list(raw.var_names[-2:]) == ["RAWONLY1", "RAWONLY2"] and raw.n_vars == adata.n_vars + 2
    np.testing.assert_array_equal(_dense(raw.X), _dense(adata.raw.X))
    assert raw.uns[SOURCE_KEY]["matrix"] == "raw"
    assert list(raw.obs["label"]) == list(adata.obs["label"])


def test_select_matrix_does_not_modify_input(adata):
    before = _dense(adata.X).copy()
    out = select_matrix(adata, layer="logged")
    np.testing.assert_allclose(_dense(out.X), _dense(adata.layers["logged"]))
    np.testing.assert_array_equal(_dense(adata.X), before)
    assert SOURCE_KEY not in adata.uns
    assert out.uns[SOURCE_KEY]["matrix"] == "layers/logged"
    assert select_matrix(adata) is adata


def test_gene_column_with_missing_names_keeps_their_var_names(adata, caplog):
    a = adata.copy()
    a.var["symbol"] = [f"S{j}" for j in range(a.n_vars)]
    a.var.loc[a.var_names[:2], "symbol"] = np.nan
    a.var.loc[a.var_names[2], "symbol"] = ""
    with caplog.at_level("WARNING", logger="scmamba2.data.io"):
        out = select_matrix(a, gene_column="symbol")
    assert list(out.var_names[:4]) == [*map(str, a.var_names[:3]), "S3"] and out.var_names.is_unique
    assert "3 of" in caplog.text and "have no name" in caplog.text


def test_selection_errors(adata):
    with pytest.raises(InputError, match="'counts'.*'logged'"):
        select_matrix(adata, layer="spliced")
    with pytest.raises(InputError, match="--layer or --use-raw"):
        select_matrix(adata, layer="counts", use_raw=True)
    adata.raw = None
    with pytest.raises(InputError, match="no .raw"):
        select_matrix(adata, use_raw=True)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".tsv"])
def test_table_roundtrip(tiny_counts, tmp_path, suffix):
    path = tmp_path / f"cells{suffix}"
    tiny_counts.to_df().to_csv(path, sep="\t" if suffix == ".tsv" else ",")
    back = read(path)
    np.testing.assert_array_equal(_dense(back.X), _dense(tiny_counts.X))
    assert list(back.obs_names) == list(tiny_counts.obs_names)
    assert list(back.var_names) == list(tiny_counts.var_names)
    assert back.X.dtype == np.float32


def test_table_sparse_only_when_sparse(tmp_path):
    import pandas as pd

    dense = pd.DataFrame(np.arange(1, 13, dtype=float).reshape(3, 4), index=list("abc"), columns=list("WXYZ"))
    dense.to_csv(tmp_path / "dense.csv")
    assert isinstance(read(tmp_path / "dense.csv").X, np.ndarray)
    mostly_zero = dense.where(dense > 10, 0.0)
    mostly_zero.to_csv(tmp_path / "sparse.csv")
    back = read(tmp_path / "sparse.csv")
    assert sp.issparse(back.X) and back.X.format == "csr"
    np.testing.assert_array_equal(back.X.toarray(), mostly_zero.to_numpy())


def test_table_with_text_column(tmp_path):
    import pandas as pd

    pd.DataFrame({"GENE1": [1, 2], "cell_type": ["T", "B"]}, index=["c1", "c2"]).to_csv(tmp_path / "m.csv")
    with pytest.raises(InputError, match="non-numeric.*cell_type"):
        read(tmp_path / "m.csv")


def test_10x_mtx_roundtrip(tiny_counts, tmp_path):
    x = _dense(tiny_counts.X)
    symbols = list(tiny_counts.var_names)
    symbols[1] = symbols[0]  # a duplicated symbol must be made unique
    ids = [f"ENSG{j:011d}" for j in range(tiny_counts.n_vars)]
    barcodes = [f"BC{i}-1" for i in range(tiny_counts.n_obs)]
    folder = tmp_path / "sample" / "filtered_feature_bc_matrix"
    _write_10x_mtx(folder, x, ids, symbols, barcodes)
    for path in (folder, folder.parent):  # the folder itself, or the folder that holds it
        back = read(path)
        assert back.X.format == "csr" and back.X.dtype == np.float32
        np.testing.assert_array_equal(back.X.toarray(), x)
        assert list(back.obs_names) == barcodes
        assert list(back.var["gene_ids"]) == ids
        assert back.var_names.is_unique and back.var_names[0] == symbols[0] and back.var_names[2] == symbols[2]


def test_10x_folder_incomplete(tiny_counts, tmp_path):
    folder = tmp_path / "m"
    _write_10x_mtx(folder, _dense(tiny_counts.X), ["i"] * 50, ["s"] * 50, ["b"] * 64)
    (folder / "features.tsv.gz").unlink()
    with pytest.raises(InputError, match="features.tsv.gz"):
        read(folder)
    with pytest.raises(InputError, match="not a 10x matrix folder"):
        read(tmp_path / "m" / ".." / "..")


def test_10x_h5_roundtrip(tiny_counts, tmp_path):
    import h5py

    x = sp.csc_matrix(_dense(tiny_counts.X).T.astype(np.int32))  # genes x cells, stored by cell
    symbols = list(tiny_counts.var_names)
    symbols[3] = symbols[2]
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = x.data, x.indices, x.indptr
        m["shape"] = np.array(x.shape, dtype=np.int32)
        m["barcodes"] = np.array([f"BC{i}" for i in range(tiny_counts.n_obs)], dtype="S")
        feat = m.create_group("features")
        feat["id"] = np.array([f"ENSG{j:011d}" for j in range(tiny_counts.n_vars)], dtype="S")
        feat["name"] = np.array(symbols, dtype="S")
        feat["feature_type"] = np.array(["Gene Expression"] * tiny_counts.n_vars, dtype="S")
        feat["genome"] = np.array(["GRCh38"] * tiny_counts.n_vars, dtype="S")
    back = read(path)
    assert back.X.format == "csr" and back.X.dtype == np.float32
    np.testing.assert_array_equal(back.X.toarray(), _dense(tiny_counts.X))
    assert back.var_names.is_unique and back.var_names[2] == symbols[2]
    assert back.var["gene_ids"].iloc[5] == "ENSG00000000005"


def test_h5mu_roundtrip(tiny_counts, tmp_path):
    import anndata as ad
    import mudata

    prot = ad.AnnData(X=np.arange(64 * 3, dtype=np.float32).reshape(64, 3), obs=tiny_counts.obs[[]].copy())
    prot.var_names = ["CD3", "CD4", "CD8"]
    path = tmp_path / "m.h5mu"
    mudata.MuData({"rna": tiny_counts, "prot": prot}).write(path)
    rna = read(path)
    np.testing.assert_array_equal(_dense(rna.X), _dense(tiny_counts.X))
    assert list(rna.var_names) == list(tiny_counts.var_names)
    back = read(path, modality="prot")
    assert isinstance(back.X, np.ndarray)  # dense-friendly: kept dense
    np.testing.assert_array_equal(back.X, prot.X)
    with pytest.raises(InputError, match="'atac'.*'prot'.*'rna'"):
        read(path, modality="atac")


def test_path_errors(tmp_path):
    with pytest.raises(InputError, match="nope.h5ad"):
        read(tmp_path / "nope.h5ad")
    bad = tmp_path / "data.xlsx"
    bad.write_text("x")
    with pytest.raises(InputError, match=r"\.xlsx.*\.h5ad.*\.h5mu.*10x.*\.csv"):
        read(bad)


def test_missing_layer_in_file(adata, tmp_path):
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(InputError, match="'spliced'.*Available layers: 'counts', 'logged'"):
        read(path, layer="spliced")


# ------------------------------------------------------------------------------------------------------
# real files from ../shared/data (MANIFEST.md): every one reads and has the stated value kind

REAL_H5AD = {
    "citefuse_eccite_pbmc500.h5ad": "raw_counts",
    "ifnb1k.h5ad": "raw_counts",
    "kang_harmony_ctrl_stim.h5ad": "raw_counts",
    "kang_muscat_8donors.h5ad": "raw_counts",
    "kang_muscat_ctrl_stim.h5ad": "raw_counts",
    "norman_subset_gears.h5ad": "log_normalized",
    "papalexi_eccite.h5ad": "raw_counts",
    "pbmc3k_raw_labeled.h5ad": "raw_counts",
    "pbmc500_fullgenes.h5ad": "raw_counts",
    "pbmc_10k_protein_v3.h5ad": "raw_counts",
    "pbmc_5k_protein_v3.h5ad": "raw_counts",
}
SHAPES = {"pbmc3k_raw_labeled.h5ad": (2700, 32738), "norman_subset_gears.h5ad": (50, 50)}


@pytest.mark.parametrize("name", sorted(REAL_H5AD))
def test_real_h5ad(shared_data, name):
    adata = read(shared_data / name)
    assert adata.X.format == "csr" and adata.X.dtype == np.float32
    if name in SHAPES:
        assert adata.shape == SHAPES[name]
    report = validate(adata)
    assert report.ok and report.value_kind == REAL_H5AD[name]


def test_real_norman_counts_layer(shared_data):
    adata = read(shared_data / "norman_subset_gears.h5ad")
    report = validate(adata)
    assert report.gene_id_kind == "ensembl"
    assert any("rank" in w for w in report.warnings)
    counts = read(shared_data / "norman_subset_gears.h5ad", layer="counts")
    counts_report = validate(counts)
    assert counts_report.value_kind == "raw_counts" and counts_report.layers == []  # 'counts' is X now
    assert report.layers == ["counts"]
    assert counts.uns[SOURCE_KEY]["matrix"] == "layers/counts"


def test_real_10x(shared_data):
    folder = read(shared_data / "10x_v3_chr21_subset" / "filtered_feature_bc_matrix")
    h5 = read(shared_data / "10x_v3_chr21_subset" / "filtered_feature_bc_matrix.h5")
    for a in (folder, h5):
        assert a.shape == (1107, 507) and a.X.format == "csr"
        assert a.var_names.is_unique and "gene_ids" in a.var
        assert validate(a).value_kind == "raw_counts"
    assert list(folder.var_names) == list(h5.var_names)
    np.testing.assert_array_equal(folder.X.toarray(), h5.X.toarray())


@pytest.mark.parametrize(("modality", "n_vars"), [("rna", 45), ("atac", 174)])
def test_real_h5mu(shared_data, modality, n_vars):
    adata = read(shared_data / "test_rna_atac.h5mu", modality=modality)
    assert adata.shape == (1000, n_vars)
    report = validate(adata)
    assert report.ok and report.value_kind == "raw_counts"
