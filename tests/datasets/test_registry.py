"""The registry: well-formed public records, local files registered from ../shared/data, get() and converters."""

import hashlib
import json
import tarfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from scmamba2.cli import app
from scmamba2.datasets import PUBLIC, ChecksumError, DatasetRecord, RemoteFile, get, list_datasets
from scmamba2.datasets import registry
from scmamba2.datasets.convert import CONVERTERS
from scmamba2.errors import InputError


def tiny(n=20, label_col="celltype", seed=0):
    rng = np.random.default_rng(seed)
    return ad.AnnData(X=sp.csr_matrix(rng.poisson(1.0, (n, 8)).astype(np.float32)),
                      obs=pd.DataFrame({label_col: rng.choice(["a", "b"], n)}, index=[f"c{seed}_{i}" for i in range(n)]),
                      var=pd.DataFrame(index=[f"G{j}" for j in range(8)]))


def test_public_records_are_complete():
    names = [r.name for r in PUBLIC]
    assert len(names) == len(set(names))
    for r in PUBLIC:
        assert r.tasks and r.licence and r.homepage.startswith("http") and r.shape_source, r.name
        assert r.converter in CONVERTERS, r.name
        assert all(f.url.startswith("https://") for f in r.files), r.name
        assert all(f.sha256 is None for f in r.files), "no checksum was verified offline; none may be claimed"
    covered = {t for r in PUBLIC for t in r.tasks}
    assert {"annotate", "integrate", "multiomics", "perturb"} <= covered


def test_records_validate_their_fields():
    with pytest.raises(ValueError, match="sha256"):
        RemoteFile("https://x", "f", sha256="abc")
    with pytest.raises(ValueError, match="unknown task"):
        DatasetRecord("x", "x", ("dance",), "MIT", "https://x", files=(RemoteFile("https://x", "f"),))
    with pytest.raises(ValueError, match="canonical"):
        DatasetRecord("x", "x", ("annotate",), "MIT", "https://x", files=(RemoteFile("https://x", "f"),),
                      obs_keys={"label": ("y",)})


def test_shared_data_is_registered_and_checked(shared_data):
    recs = {r.name: r for r in list_datasets(shared_data)}
    assert {"pbmc3k_raw_labeled", "ifnb1k", "norman_subset_gears", "test_rna_atac"} <= set(recs)
    r = recs["ifnb1k"]
    assert r.source == "local" and "integrate" in r.tasks and r.files[0].sha256
    path = get("ifnb1k", shared_dir=shared_data)
    assert path == shared_data / "ifnb1k.h5ad"
    a = ad.read_h5ad(path, backed="r")
    assert (a.n_obs, a.n_vars) == (r.n_obs, r.n_vars)
    assert all(k in a.obs for k in r.obs_keys)


def _local_folder(tmp_path, sha=None):
    folder = tmp_path / "shared"
    folder.mkdir(parents=True)
    tiny().write_h5ad(folder / "mini.h5ad")
    digest = hashlib.sha256((folder / "mini.h5ad").read_bytes()).hexdigest()
    entry = {"file": "mini.h5ad", "title": "mini", "task": "annotation", "licence": ["MIT"], "sources": ["test"],
             "sha256": sha or digest, "n_obs": 20, "n_vars": 8, "obs_columns": {"celltype": {}}}
    (folder / "manifest.json").write_text(json.dumps({"files": [entry]}))
    return folder


def test_local_checksum_mismatch_is_refused(tmp_path):
    folder = _local_folder(tmp_path, sha="1" * 64)
    with pytest.raises(ChecksumError, match="modified or damaged"):
        get("mini", shared_dir=folder)
    folder2 = _local_folder(tmp_path / "ok")
    assert get("mini", shared_dir=folder2) == folder2 / "mini.h5ad"


def test_folder_without_manifest(tmp_path):
    tiny().write_h5ad(tmp_path / "Some_Set.h5ad")
    (rec,) = list_datasets(tmp_path)[-1:]
    assert rec.name == "some_set" and rec.source == "local"
    assert get("some_set", shared_dir=tmp_path) == tmp_path / "Some_Set.h5ad"
    tiny().write_h5ad(tmp_path / "norman.h5ad")  # named like a public record: both stay reachable
    names = {r.name: r.source for r in list_datasets(tmp_path)}
    assert names["norman"] == "remote" and names["local_norman"] == "local"


def _served_toy(serve, tmp_path, monkeypatch, *, checksum: bool):
    """A one-file public record 'toy' served from 127.0.0.1: (its bytes, the server)."""
    src = tmp_path / "src.h5ad"
    tiny(label_col="Celltype").write_h5ad(src)
    data = src.read_bytes()
    srv = serve(data)
    sha = hashlib.sha256(data).hexdigest() if checksum else None
    rec = DatasetRecord("toy", "toy", ("annotate",), "MIT", "https://example.org",
                        files=(RemoteFile(srv.url, "toy_raw.h5ad", sha),),
                        n_obs=20, n_vars=8, shape_source="test", obs_keys={"cell_type": ("celltype", "Celltype")})
    monkeypatch.setattr(registry, "PUBLIC", (rec,))
    return data, srv


def test_get_downloads_converts_and_caches(serve, tmp_path, monkeypatch):
    _, srv = _served_toy(serve, tmp_path, monkeypatch, checksum=True)
    out = get("toy", cache=tmp_path / "cache", shared_dir=tmp_path / "none")
    a = ad.read_h5ad(out)
    assert out == tmp_path / "cache" / "toy" / "toy.h5ad"
    assert list(a.obs["cell_type"]) == list(a.obs["Celltype"])
    assert a.uns["scmamba2_dataset"]["url"] == srv.url
    n = len(srv.requests)
    assert get("toy", cache=tmp_path / "cache", shared_dir=tmp_path / "none") == out
    assert len(srv.requests) == n


def test_file_without_registry_checksum_is_pinned_on_first_fetch(serve, tmp_path, monkeypatch):
    data, _ = _served_toy(serve, tmp_path, monkeypatch, checksum=False)
    cache = tmp_path / "cache"
    get("toy", cache=cache, shared_dir=tmp_path / "none")
    pin = cache / "toy" / "raw" / "toy_raw.h5ad.sha256"
    assert pin.read_text().split()[0] == hashlib.sha256(data).hexdigest()
    (cache / "toy" / "toy.h5ad").unlink()  # convert again from the cached raw file, now damaged
    (cache / "toy" / "raw" / "toy_raw.h5ad").write_bytes(data[:-10] + bytes(10))
    with pytest.raises(ChecksumError, match="first fetched"):
        get("toy", cache=cache, shared_dir=tmp_path / "none")


def test_manual_record_says_where_to_put_files(tmp_path, monkeypatch):
    rec = DatasetRecord("drive", "d", ("annotate",), "MIT", "https://example.org",
                        files=(RemoteFile("https://drive.example/folder", "ref.h5ad"),
                               RemoteFile("https://drive.example/folder", "query.h5ad")),
                        obs_keys={"cell_type": ("celltype",)}, converter="ref_query", manual="manual: test")
    monkeypatch.setattr(registry, "PUBLIC", (rec,))
    raw = tmp_path / "drive" / "raw"
    with pytest.raises(InputError, match="https://drive.example/folder") as e:
        get("drive", cache=tmp_path, shared_dir=tmp_path / "none")
    assert str(raw) in str(e.value) and "ref.h5ad, query.h5ad" in str(e.value)
    raw.mkdir(parents=True)
    tiny(seed=0).write_h5ad(raw / "ref.h5ad")
    tiny(n=10, seed=1).write_h5ad(raw / "query.h5ad")
    a = ad.read_h5ad(get("drive", cache=tmp_path, shared_dir=tmp_path / "none"))
    assert a.obs["split"].value_counts().to_dict() == {"reference": 20, "query": 10}
    assert "cell_type" in a.obs


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_gears_archive_gets_perturbation_column(tmp_path, monkeypatch, kind):
    import zipfile

    a = tiny(n=4)
    a.obs["condition"] = ["ctrl", "KLF1+ctrl", "ctrl+MAP2K6", "KLF1+MAP2K6"]
    (tmp_path / "norman").mkdir()
    a.write_h5ad(tmp_path / "norman" / "perturb_processed.h5ad")
    raw = tmp_path / "cache" / "g" / "raw"
    raw.mkdir(parents=True)
    if kind == "zip":  # the layout GEARS downloads from Dataverse
        with zipfile.ZipFile(raw / f"g.{kind}", "w") as zf:
            zf.write(tmp_path / "norman" / "perturb_processed.h5ad", "norman/perturb_processed.h5ad")
    else:
        with tarfile.open(raw / f"g.{kind}", "w:gz") as tf:
            tf.add(tmp_path / "norman", arcname="norman")
    rec = DatasetRecord("g", "g", ("perturb",), "MIT", "https://example.org",
                        files=(RemoteFile("https://example.org/g", f"g.{kind}"),), converter="gears",
                        obs_keys={"condition": ("condition",)}, manual="manual: test")
    monkeypatch.setattr(registry, "PUBLIC", (rec,))
    out = ad.read_h5ad(get("g", cache=tmp_path / "cache", shared_dir=tmp_path / "none"))
    assert list(out.obs["perturbation"]) == ["control", "KLF1", "MAP2K6", "KLF1+MAP2K6"]


def test_cli_list_and_get(shared_data):
    runner = CliRunner()
    res = runner.invoke(app, ["datasets", "list", "--shared-dir", str(shared_data)])
    assert res.exit_code == 0, res.output
    assert "pbmc3k_raw_labeled" in res.output and "scib_immune_human" in res.output
    row = next(line for line in res.output.splitlines() if line.split()[:1] == ["scib_immune_human"])
    assert "obs columns" in res.output and "cell_type,batch" in row  # the columns the tasks read
    res = runner.invoke(app, ["datasets", "get", "ifnb1k", "--shared-dir", str(shared_data)])
    assert res.exit_code == 0 and "ifnb1k.h5ad" in res.output
    res = runner.invoke(app, ["datasets", "get", "no_such_set", "--shared-dir", str(shared_data)])
    assert res.exit_code == 1 and "unknown dataset" in res.output and "Traceback" not in res.output


def test_zheng68k_converter_joins_labels_by_barcode(tmp_path):
    import scipy.io

    from scmamba2.datasets.convert import convert

    rng = np.random.default_rng(0)
    mex = tmp_path / "src" / "filtered_matrices_mex" / "hg19"
    mex.mkdir(parents=True)
    counts = sp.csr_matrix(rng.poisson(1.0, (5, 4)).astype(np.float32))  # genes x cells, as 10x v1 writes it
    scipy.io.mmwrite(str(mex / "matrix.mtx"), counts)
    (mex / "genes.tsv").write_text("".join(f"ENSG{i}\tGENE{i}\n" for i in range(5)))
    barcodes = [f"AAAC{i}-1" for i in range(4)]
    (mex / "barcodes.tsv").write_text("".join(b + "\n" for b in barcodes))
    tar = tmp_path / "z.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(tmp_path / "src" / "filtered_matrices_mex", arcname="filtered_matrices_mex")
    labels = tmp_path / "labels.tsv"
    pd.DataFrame({"TSNE.1": 0.0, "TSNE.2": 0.0, "barcodes": barcodes[::-1], "celltype": ["d", "c", "b", "a"]}
                 ).to_csv(labels, sep="\t", index=False)
    rec = next(r for r in PUBLIC if r.name == "zheng68k")
    files = {"fresh_68k_pbmc_donor_a_filtered_gene_bc_matrices.tar.gz": tar, "68k_pbmc_barcodes_annotation.tsv": labels}
    a = ad.read_h5ad(convert(rec, files, tmp_path / "out"))
    assert a.shape == (4, 5) and list(a.obs["cell_type"]) == ["a", "b", "c", "d"]
    assert np.allclose(a.X.toarray(), counts.T.toarray())


def test_bmmc_converter_moves_adt_to_obsm(tmp_path):
    from scmamba2.datasets.convert import convert

    a = tiny(n=6)
    a.var["feature_types"] = ["GEX"] * 6 + ["ADT"] * 2
    a.layers["counts"] = a.X.copy()
    a.obs["cell_type"], a.obs["batch"] = "t", "s1"
    src = tmp_path / "bmmc.h5ad"
    a.write_h5ad(src)
    rec = next(r for r in PUBLIC if r.name == "bmmc_cite")
    out = ad.read_h5ad(convert(rec, {"bmmc.h5ad": src}, tmp_path))
    assert out.n_vars == 6 and out.obsm["protein_counts"].shape == (6, 2)
    assert list(out.uns["protein_names"]) == ["G6", "G7"]
    assert np.allclose(out.obsm["protein_counts"], a.X[:, 6:].toarray())


def test_mudata_is_written_whole_then_renamed(tmp_path, monkeypatch):
    import mudata as md

    from scmamba2.datasets import convert as conv

    rec = DatasetRecord("mm", "mm", ("multiomics",), "MIT", "https://example.org",
                        files=(RemoteFile("https://example.org/mm", "mm.h5"),), converter="toy_mudata")
    monkeypatch.setitem(conv.CONVERTERS, "toy_mudata", lambda r, f, o: md.MuData({"rna": tiny(), "atac": tiny()}))
    out = conv.convert(rec, {}, tmp_path)
    assert out == tmp_path / "mm.h5mu" and sorted(p.name for p in tmp_path.iterdir()) == ["mm.h5mu"]
    m = md.read_h5mu(out)
    assert set(m.mod) == {"rna", "atac"} and m.uns["scmamba2_dataset"]["name"] == "mm"
