"""Batch integration: a strong additive batch shift is removed while cell types stay apart; switches and errors."""

import numpy as np
import pandas as pd
import pytest

from scmamba2.errors import InputError
from scmamba2.tasks.integrate import IntegrationConfig, integrate
from scmamba2.train.config import TrainConfig

TINY = dict(d_model=32, n_layers=2, headdim=16, chunk_size=8, d_state=16)


def shifted(seed=0, n=192, g=50):
    """3 cell types (8 marker genes each) and 2 batches; batch b adds +8 counts to 20 other genes."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    lab, bat = rng.integers(0, 3, n), rng.integers(0, 2, n)
    mu = rng.gamma(1.0, 1.0, (3, g))[lab]
    for k in range(3):
        mu[lab == k, k * 8:(k + 1) * 8] += 6.0
    mu[bat == 1, 30:] += 8.0
    obs = pd.DataFrame({"batch": np.array(["a", "b"])[bat], "label": np.array(["x", "y", "z"])[lab]},
                       index=[f"c{i}" for i in range(n)])
    return ad.AnnData(rng.poisson(mu).astype(np.float32), obs=obs,
                      var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))


def _tcfg(steps):
    return TrainConfig(max_steps=steps, batch_size=32, lr=3e-3, warmup_steps=10, progress_bar=False, seed=0)


def _asw(E, adata):
    import scib_metrics

    E = np.asarray(E, dtype=np.float32)
    lab, bat = adata.obs["label"].to_numpy(), adata.obs["batch"].to_numpy()
    shuffled = np.random.default_rng(1).permutation(lab)
    return (scib_metrics.silhouette_batch(E, lab, bat), scib_metrics.silhouette_label(E, lab),
            scib_metrics.silhouette_label(E, shuffled))


def test_batch_shift_is_removed_and_labels_kept():
    from scmamba2.eval.baselines import pca_embedding

    a = shifted()
    integrate(a, "batch", label_key="label", train_config=_tcfg(600), model_config=TINY, n_top_genes=None)
    pca_batch, pca_label, _ = _asw(pca_embedding(a, n_comps=10), a)
    ours_batch, ours_label, ours_shuffled = _asw(a.obsm["X_scmamba2"], a)
    assert ours_batch > pca_batch + 0.05  # batches mix better than unintegrated
    assert ours_label > ours_shuffled + 0.03  # cell types are still apart (no collapse to random)
    assert ours_label > pca_label  # and at least as far apart as without integration
    info = a.uns["scmamba2"]["X_scmamba2"]["integration"]
    assert info["batch_categories"] == ["a", "b"] and "asw_label" in info and "dab" in info["final_losses"]


def test_writes_keys_and_saves(tmp_path):
    from scmamba2 import ScMamba2
    from scmamba2.tasks.embed import embed

    a = shifted(n=64)
    cfg = IntegrationConfig(ecs=True, dsbn=True, batch_decoder=True)
    out = integrate(a, "batch", config=cfg, train_config=_tcfg(4), model_config=TINY, n_top_genes=None,
                    out_dir=tmp_path / "m", copy=True, key_added="X_int")
    assert "X_int" not in a.obsm and out.obsm["X_int"].shape == (64, 32)
    assert set(out.uns["scmamba2"]["X_int"]["integration"]["final_losses"]) >= {"gep", "mvc", "ecs", "dab"}
    model = ScMamba2.from_pretrained(tmp_path / "m")
    assert model.dsbn is not None and model.batch_encoder is not None
    with pytest.raises(InputError, match="batch_key"):
        embed(a, model, progress=False)
    b = a.copy()
    b.obs["batch"] = np.where(b.obs["batch"] == "a", "a", "new")
    with pytest.raises(InputError, match="not trained with"):
        embed(b, model, batch_key="batch", batch_categories=["a", "b"], progress=False)
    embed(a, model, batch_key="batch", batch_categories=["a", "b"], progress=False, key_added="again")
    np.testing.assert_allclose(a.obsm["again"], out.obsm["X_int"], atol=1e-5)  # same model, same cells


def test_batch_decoder_model_embeds_without_batches(tmp_path):
    from scmamba2 import ScMamba2
    from scmamba2.tasks.embed import embed

    a = shifted(n=64)
    out = integrate(a, "batch", train_config=_tcfg(4), model_config=TINY, n_top_genes=None, copy=True,
                    out_dir=tmp_path / "m")
    model = ScMamba2.from_pretrained(tmp_path / "m")
    assert model.batch_encoder is not None and model.dsbn is None  # the default: batch decoder, no DSBN
    b = a.copy()
    b.obs["batch"] = "a batch never seen"
    embed(b, model, progress=False)  # no batch_key needed: the embedding does not read the batch
    np.testing.assert_allclose(b.obsm["X_scmamba2"], out.obsm["X_scmamba2"], atol=1e-5)


def test_bad_input_and_config():
    a = shifted(n=32)
    with pytest.raises(InputError, match="not an obs column"):
        integrate(a, "donor", train_config=_tcfg(1))
    a.obs["one"] = "x"
    with pytest.raises(InputError, match="at least two"):
        integrate(a, "one", train_config=_tcfg(1))
    with pytest.raises(ValueError, match="every loss is off"):
        IntegrationConfig(gep=False, mvc=False, ecs=False, dab=False)
    with pytest.raises(ValueError, match="mask_ratio"):
        IntegrationConfig(mask_ratio=1.5)


def test_cli(tmp_path):
    import anndata as ad
    from typer.testing import CliRunner

    from scmamba2.cli import app

    shifted(n=64).write_h5ad(tmp_path / "d.h5ad")
    args = ["integrate", tmp_path / "d.h5ad", "--batch-key", "batch", "--label-key", "label", "--out",
            tmp_path / "o.h5ad", "--method", "finetune", "--steps", "2", "--dsbn", "--no-batch-decoder", "--save-model", tmp_path / "m"]
    res = CliRunner().invoke(app, [str(x) for x in args])
    assert res.exit_code == 0, res.output
    integrated = ad.read_h5ad(tmp_path / "o.h5ad").obsm["X_scmamba2"]
    assert integrated.shape[0] == 64
    assert not (tmp_path / "m" / "config.json").read_text().count('"batch_embedding": true')
    # embedding with the saved DSBN model needs the batches; their names come from integration.json
    res = CliRunner().invoke(app, [str(x) for x in ["embed", tmp_path / "d.h5ad", "--model", tmp_path / "m",
                                                     "--out", tmp_path / "e.h5ad"]])
    assert res.exit_code == 1 and "batch_key" in res.output
    res = CliRunner().invoke(app, [str(x) for x in ["embed", tmp_path / "d.h5ad", "--model", tmp_path / "m",
                                                     "--out", tmp_path / "e.h5ad", "--batch-key", "batch"]])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "e.h5ad").obsm["X_scmamba2"], integrated, atol=1e-5)
    res = CliRunner().invoke(app, [str(x) for x in ["integrate", tmp_path / "d.h5ad", "--batch-key", "nope",
                                                     "--out", tmp_path / "p.h5ad"]])
    assert res.exit_code == 1 and "not an obs column" in res.output
