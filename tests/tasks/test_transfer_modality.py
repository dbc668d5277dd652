"""Protein from RNA by nearest reference cells in a pretrained embedding (nothing trained)."""

import anndata as ad
import numpy as np
import pytest
from typer.testing import CliRunner

from scmamba2.data.multiomics import clr
from scmamba2.errors import InputError
from scmamba2.tasks.transfer_modality import transfer_modality

from .test_integrate_harmony import _model  # a 50-gene vocabulary g0..g49 covers cite()'s g0..g29
from .test_multiomics import cite


def test_one_neighbour_of_a_reference_cell_is_that_cell():
    ref = cite(n=60)
    q = ad.AnnData(ref.X.copy(), obs=ref.obs.copy(), var=ref.var.copy())
    transfer_modality(ref, q, model=_model(), n_neighbors=1)
    np.testing.assert_allclose(q.obsm["scmamba2_pred_prot"], clr(ref.obsm["protein_expression"]), atol=1e-6)
    assert list(q.uns["scmamba2_pred_prot_names"]) == [f"P{j}" for j in range(5)]
    assert q.uns["scmamba2"]["scmamba2_pred_prot"]["n_neighbors"] == 1


def test_prediction_beats_the_reference_mean_on_held_out_cells():
    a = cite(n=240, seed=1)
    ref, test = a[:180].copy(), a[180:].copy()
    q = ad.AnnData(test.X.copy(), obs=test.obs.copy(), var=test.var.copy())
    transfer_modality(ref, q, model=_model())
    truth, pred = clr(test.obsm["protein_expression"]), q.obsm["scmamba2_pred_prot"]
    mean = clr(ref.obsm["protein_expression"]).mean(0)
    for k in range(3):  # the proteins that follow a cell type's programme
        assert ((pred[:, k] - truth[:, k]) ** 2).mean() < 0.8 * ((mean[k] - truth[:, k]) ** 2).mean()


def test_errors_name_the_problem():
    ref = cite(n=20)
    q = ad.AnnData(ref.X.copy(), var=ref.var.copy())
    with pytest.raises(InputError, match="fewer than n_neighbors"):
        transfer_modality(ref, q, model=_model(), n_neighbors=50)
    rna_only = ad.AnnData(ref.X.copy(), var=ref.var.copy())
    with pytest.raises(InputError, match="no protein counts"):
        transfer_modality(rna_only, q, model=_model())


def test_cli_reference_mode(tmp_path):
    from scmamba2.cli import app

    ref = cite(n=60)
    ref.write_h5ad(tmp_path / "ref.h5ad")
    ad.AnnData(ref.X.copy(), obs=ref.obs.copy(), var=ref.var.copy()).write_h5ad(tmp_path / "q.h5ad")
    _model().save_pretrained(tmp_path / "m")
    runner = CliRunner()
    base = ["multiomics", "predict", "--query", str(tmp_path / "q.h5ad")]
    res = runner.invoke(app, base + ["--reference", str(tmp_path / "ref.h5ad"), "--model", str(tmp_path / "m"),
                                     "--out", str(tmp_path / "p.h5ad")])
    assert res.exit_code == 0, res.output
    assert ad.read_h5ad(tmp_path / "p.h5ad").obsm["scmamba2_pred_prot"].shape == (60, 5)
    for extra, msg in ((["--out", str(tmp_path / "x.h5ad")], "--reference"),
                       (["--reference", str(tmp_path / "ref.h5ad"), "--modality", "atac", "--out",
                         str(tmp_path / "x.h5ad")], "protein only")):
        res = runner.invoke(app, base + extra)
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.h5ad").exists()
