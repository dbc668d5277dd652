"""Multi-omics: joint embedding, protein prediction from RNA (beats the mean on synthetic data), the feature
vocabulary saved and reloaded with the model, determinism, errors and the CLI."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scmamba2.data.multiomics import clr
from scmamba2.errors import CheckpointError, InputError
from scmamba2.tasks.multiomics import MultiomicModel, MultiomicsConfig, multiomics, predict_modality
from scmamba2.train.config import TrainConfig

TINY = dict(d_model=32, n_layers=2, headdim=16, chunk_size=8, d_state=16, dropout=0.0)


def cite(n=160, g=30, seed=0):
    """RNA of 3 cell types (6 marker genes each) and 5 proteins that are a known function of the RNA: protein k
    (k < 3) follows the cell's total of programme k's marker counts, protein 3 one gene, protein 4 is constant."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 3, n)
    mu = np.full((n, g), 0.5)
    for k in range(3):
        mu[lab == k, k * 6:(k + 1) * 6] += rng.gamma(4.0, 1.0, ((lab == k).sum(), 1))  # cell-level programme
    mu[:, 20] += rng.gamma(2.0, 2.0, n)
    X = rng.poisson(mu).astype(np.float32)
    rate = np.stack([5 + 8 * X[:, k * 6:(k + 1) * 6].sum(1) for k in range(3)] + [5 + 20 * X[:, 20],
                                                                                   np.full(n, 50.0)], 1)
    obs = pd.DataFrame({"batch": rng.choice(["a", "b"], n), "label": np.array(["x", "y", "z"])[lab]},
                       index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))
    a.obsm["protein_expression"] = rng.poisson(rate).astype(np.float32)
    a.uns["protein_names"] = np.array([f"P{j}" for j in range(5)])
    return a


def _tcfg(steps, seed=0):
    return TrainConfig(max_steps=steps, batch_size=32, lr=3e-3, warmup_steps=5, progress_bar=False, seed=seed)


def _fit(a, steps=3, seed=0, **kw):
    cfg = MultiomicsConfig(n_top_genes=None, rna_max_len=32)
    return multiomics(a, config=cfg, from_scratch=True, model_config=TINY, train_config=_tcfg(steps, seed), **kw)


def test_protein_prediction_beats_the_mean():
    a = cite(n=224)
    train, test = a[:160].copy(), a[160:].copy()
    mm = _fit(train, steps=150, batch_key="batch")
    predict_modality(test, mm, "prot")
    pred, truth = test.obsm["scmamba2_pred_prot"], clr(test.obsm["protein_expression"])
    mean = clr(train.obsm["protein_expression"]).mean(0)
    mse_model, mse_mean = ((pred - truth) ** 2).mean(), ((mean - truth) ** 2).mean()
    assert mse_model < 0.7 * mse_mean, (mse_model, mse_mean)
    r = [np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in range(3)]  # the three programme proteins
    assert min(r) > 0.5, r
    assert list(test.uns["scmamba2_pred_prot_names"]) == ["P0", "P1", "P2", "P3", "P4"]


def test_writes_keys_and_the_feature_vocabulary_is_saved(tmp_path):
    a = cite(n=48)
    mm = _fit(a, batch_key="batch", out_dir=tmp_path / "m")  # label_key's silhouettes: tests/tasks/test_integrate
    assert a.obsm["X_scmamba2"].shape == (48, 32) and np.isfinite(a.obsm["X_scmamba2"]).all()
    info = a.uns["scmamba2"]["X_scmamba2"]
    assert info["modalities"] == ["rna", "prot"] and info["batch_categories"] == ["a", "b"]
    assert {"gep", "mvc", "dab"} <= set(info["final_losses"])
    vocab = json.loads((tmp_path / "m" / "vocab.json").read_text())
    assert [t for t in vocab if t.startswith("prot:")] == [f"prot:P{j}" for j in range(5)]
    meta = json.loads((tmp_path / "m" / "multiomics.json").read_text())
    assert meta["token_ids"]["prot"] == [vocab[f"prot:P{j}"] for j in range(5)]
    back = MultiomicModel.load(tmp_path / "m")
    assert back.spec == mm.spec and back.model.vocab == mm.model.vocab and back.info["batch_categories"] == ["a", "b"]
    q1, q2 = a.copy(), a.copy()
    predict_modality(q1, mm)
    predict_modality(q2, tmp_path / "m")
    np.testing.assert_allclose(q1.obsm["scmamba2_pred_prot"], q2.obsm["scmamba2_pred_prot"], rtol=1e-5, atol=1e-6)
    q5 = a.copy()  # five genes spelled in upper case (G0 for the model's g0): matched ignoring case, same result
    q5.var_names = [n.upper() if i < 5 else n for i, n in enumerate(a.var_names)]
    predict_modality(q5, mm)
    np.testing.assert_allclose(q5.obsm["scmamba2_pred_prot"], q1.obsm["scmamba2_pred_prot"], rtol=1e-5, atol=1e-6)
    assert q5.uns["scmamba2"]["scmamba2_pred_prot"]["n_genes_found"] == 30
    # the batch decoder: known batches are predicted as themselves, unknown ones with the mean batch vector
    assert back.model.batch_encoder is not None
    q3, q4 = a.copy(), a.copy()
    predict_modality(q3, mm, batch_key="batch")
    q4.obs["batch"] = "never seen"
    predict_modality(q4, mm, batch_key="batch")
    np.testing.assert_allclose(q4.obsm["scmamba2_pred_prot"], q1.obsm["scmamba2_pred_prot"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(q3.obsm["scmamba2_pred_prot"], q1.obsm["scmamba2_pred_prot"])
    # a vocabulary that lost a protein token no longer fits the model's multi-omics spec
    del vocab["prot:P4"]
    vocab["prot:PX"] = len(vocab)
    (tmp_path / "m" / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match="prot"):
        MultiomicModel.load(tmp_path / "m")


def test_exported_from_the_package():
    import scmamba2

    assert scmamba2.multiomics is multiomics
    assert scmamba2.predict_modality is predict_modality
    from scmamba2.tasks import annotate, integrate, perturb, perturb_predict

    assert scmamba2.annotate is annotate.annotate and scmamba2.integrate is integrate.integrate
    assert scmamba2.train_perturbation is perturb.train_perturbation
    assert scmamba2.predict_perturbation is perturb_predict.predict_perturbation
    assert scmamba2.reverse_perturbation is perturb_predict.reverse_perturbation


def test_same_seed_same_embedding():
    a, b, c = cite(n=48), cite(n=48), cite(n=48)
    _fit(a, steps=4, seed=1)
    _fit(b, steps=4, seed=1)
    _fit(c, steps=4, seed=2)
    np.testing.assert_array_equal(a.obsm["X_scmamba2"], b.obsm["X_scmamba2"])
    assert not np.allclose(a.obsm["X_scmamba2"], c.obsm["X_scmamba2"])


def test_prediction_errors_name_the_problem():
    a = cite(n=40)
    mm = _fit(a, steps=1)
    with pytest.raises(InputError, match="not 'atac'"):
        predict_modality(a.copy(), mm, "atac")
    other = ad.AnnData(a.X.copy(), var=pd.DataFrame(index=[f"ENSG{i:011d}" for i in range(a.n_vars)]))
    with pytest.raises(InputError, match="0 of the model's 30 RNA genes"):
        predict_modality(other, mm, "prot")
    bad = a.copy()
    bad.obsm["protein_expression"][0, 0] = -3
    with pytest.raises(InputError, match="negative"):
        _fit(bad, steps=1)


def _rna_atac(n=48, seed=0):
    import mudata

    a = cite(n=n, seed=seed)
    rng = np.random.default_rng(seed)
    peaks = (rng.random((n, 12)) < 0.2 + 0.6 * (a.X[:, :12] > 1)).astype(np.float32)
    atac = ad.AnnData(peaks, obs=pd.DataFrame(index=a.obs_names),
                      var=pd.DataFrame(index=[f"chr1-{100 * j}-{100 * j + 50}" for j in range(12)]))
    prot = ad.AnnData(a.obsm["protein_expression"], obs=pd.DataFrame(index=a.obs_names),
                      var=pd.DataFrame(index=list(a.uns["protein_names"])))
    rna = ad.AnnData(a.X, obs=a.obs.copy(), var=a.var.copy())
    return mudata.MuData({"rna": rna, "prot": prot, "atac": atac})


def test_cli_train_default_command_and_predict(tmp_path):
    import mudata

    from scmamba2.cli import app

    runner = CliRunner()
    data, out, model = tmp_path / "in.h5mu", tmp_path / "out.h5mu", tmp_path / "model"
    _rna_atac().write(str(data))
    res = runner.invoke(app, ["multiomics", str(data), "--out", str(out), "--model-out", str(model),
                              "--batch-key", "batch", "--steps", "2", "--n-top-genes", "30", "--from-scratch"])
    assert res.exit_code == 0, res.output
    back = mudata.read_h5mu(str(out))
    assert back.obsm["X_scmamba2"].shape[0] == 48 and set(back.mod) == {"rna", "prot", "atac"}
    import scipy.sparse as sp

    q = tmp_path / "q.h5ad"
    query = back.mod["rna"].copy()
    query.X = sp.csc_matrix(np.asarray(query.X.todense() if sp.issparse(query.X) else query.X).astype(np.int32))
    query.write_h5ad(q)
    for modality, n in (("adt", 5), ("atac", 12)):
        pred = tmp_path / f"pred_{modality}.h5ad"
        res = runner.invoke(app, ["multiomics", "predict", "--model", str(model), "--query", str(q),
                                  "--modality", modality, "--out", str(pred)])
        assert res.exit_code == 0, res.output
        key = "scmamba2_pred_prot" if modality == "adt" else "scmamba2_pred_atac"
        written = ad.read_h5ad(pred)
        assert written.obsm[key].shape == (48, n)
        assert written.X.format == "csc" and written.X.dtype == np.int32  # the query's X as stored
    res = runner.invoke(app, ["multiomics", "predict", "--model", str(model), "--query", str(q),
                              "--modality", "rna", "--out", str(tmp_path / "x.h5ad")])
    assert res.exit_code == 1 and "Traceback" not in res.output and "Error:" in res.output


def test_cli_refuses_rna_only_input(tmp_path):
    from scmamba2.cli import app

    a = cite(n=20)
    del a.obsm["protein_expression"]
    p = tmp_path / "rna.h5ad"
    a.write_h5ad(p)
    res = CliRunner().invoke(app, ["multiomics", str(p), "--out", str(tmp_path / "o.h5mu"),
                                   "--model-out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "no protein counts found" in res.output and "Traceback" not in res.output


def test_cli_umap_without_keys_draws_an_uncoloured_umap(tmp_path):
    from scmamba2.cli import app

    p, png = tmp_path / "cite.h5ad", tmp_path / "u.png"
    cite(n=48).write_h5ad(p)
    res = CliRunner().invoke(app, ["multiomics", str(p), "--out", str(tmp_path / "o.h5ad"), "--model-out",
                                   str(tmp_path / "m"), "--steps", "1", "--n-top-genes", "30", "--from-scratch",
                                   "--umap", str(png)])
    assert res.exit_code == 0, res.output
    assert png.stat().st_size > 1000


def test_real_multiome_end_to_end(shared_data):
    from scmamba2.data.io import read

    path = shared_data / "test_rna_atac.h5mu"
    mm = multiomics(path, config=MultiomicsConfig(n_top_genes=None, n_top_peaks=64), from_scratch=True, model_config=TINY,
                    train_config=_tcfg(2))
    assert mm.spec.modalities == ["rna", "atac"] and len(mm.spec.features["atac"]) == 64
    q = read(path, modality="rna")[:50].copy()
    predict_modality(q, mm, "atac")
    assert q.obsm["scmamba2_pred_atac"].shape == (50, 64)


def test_default_starts_from_the_bundled_model():
    from scmamba2.pretrained import load

    bundled = load()
    a = cite(n=64)
    a.var_names = bundled.vocab.genes[:30]  # genes the bundled model knows
    mm = multiomics(a, config=MultiomicsConfig(), train_config=_tcfg(2))
    net = mm.model
    assert net.config.d_model == bundled.config.d_model and net.config.n_layers == bundled.config.n_layers
    assert [t for t in net.vocab.tokens if t.startswith("prot:")] == [f"prot:P{j}" for j in range(5)]
    key = "gene_encoder.embedding.weight"
    unused = bundled.vocab.lookup(bundled.vocab.genes[100:200])  # genes this data set does not have
    assert np.allclose(net.state_dict()[key][unused].numpy(), bundled.state_dict()[key][unused].numpy(), rtol=1e-3)
    with pytest.raises(InputError, match="from_scratch=True"):
        multiomics(a, model_config=TINY, train_config=_tcfg(1))
    with pytest.raises(InputError, match="leave out model"):
        multiomics(a, model=bundled, from_scratch=True, train_config=_tcfg(1))
