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
    integrate(a, "batch", label_key="label", train_config=_tcfg(600), from_scratch=True, model_config=TINY, n_top_genes=None)
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
    out = integrate(a, "batch", config=cfg, train_config=_tcfg(4), from_scratch=True, model_config=TINY, n_top_genes=None,
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
    out = integrate(a, "batch", train_config=_tcfg(4), from_scratch=True, model_config=TINY, n_top_genes=None, copy=True,
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
        integrate(a, "donor", train_config=_tcfg(1), from_scratch=True)
    a.obs["one"] = "x"
    with pytest.raises(InputError, match="at least two"):
        integrate(a, "one", train_config=_tcfg(1), from_scratch=True)
    a.obs["depth"] = np.random.default_rng(0).gamma(2.0, 1000.0, a.n_obs)  # a continuous column, not batches
    with pytest.raises(InputError, match="looks like a continuous value"):
        integrate(a, "depth", train_config=_tcfg(1), from_scratch=True)
    with pytest.raises(InputError, match="either a pretrained model"):
        integrate(a, "batch", model="somewhere", from_scratch=True, train_config=_tcfg(1))
    with pytest.raises(ValueError, match="every loss is off"):
        IntegrationConfig(gep=False, mvc=False, profile=False, ecs=False, dab=False)
    with pytest.raises(InputError, match="every loss"):  # profile only: nothing left for a model without it
        IntegrationConfig(gep=False, mvc=False, dab=False).resolved(has_profile=False)
    off = IntegrationConfig(profile=False).resolved(has_profile=True)  # the profile loss off: GEP + MVC come back
    assert off.gep and off.mvc and not off.profile
    with pytest.raises(ValueError, match="mask_ratio"):
        IntegrationConfig(mask_ratio=1.5)


def test_cli(tmp_path):
    import anndata as ad
    from typer.testing import CliRunner

    from scmamba2.cli import app

    shifted(n=64).write_h5ad(tmp_path / "d.h5ad")
    args = ["integrate", tmp_path / "d.h5ad", "--batch-key", "batch", "--label-key", "label", "--out",
            tmp_path / "o.h5ad", "--method", "finetune", "--from-scratch", "--steps", "2", "--dsbn", "--no-batch-decoder", "--save-model", tmp_path / "m"]
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


def _profile_model(n_genes=60, panel=30):
    """A tiny 'pretrained' model with a whole-profile decoder over genes g0..g{n_genes-1}; its panel is every
    other gene, so it reaches genes the test data lacks."""
    import torch

    from scmamba2 import ModelConfig, ScMamba2, TokenizerConfig
    from scmamba2.data.vocab import GeneVocab

    torch.manual_seed(0)
    vocab = GeneVocab([f"g{i}" for i in range(n_genes)])
    cfg = ModelConfig(vocab_size=len(vocab), value_mode="continuous", max_len=64, profile_genes=panel, **TINY)
    net = ScMamba2(cfg, vocab=vocab, tokenizer_config=TokenizerConfig(value_mode="continuous", max_len=64))
    net.profile_head.set_panel(vocab.lookup([f"g{2 * i}" for i in range(panel)]), np.zeros(panel), np.ones(panel))
    return net


def test_fine_tunes_a_pretrained_profile_model_on_its_own_objective(tmp_path):
    from scmamba2 import ScMamba2

    a = shifted(n=96)[:, :40].copy()  # g0..g39: ten of the panel's 30 genes (g40..g58) are not measured
    out = integrate(a, "batch", model=_profile_model(), train_config=_tcfg(3), copy=True, out_dir=tmp_path / "m")
    info = out.uns["scmamba2"]["X_scmamba2"]["integration"]
    assert {"profile", "dab"} <= set(info["final_losses"]) and not {"gep", "mvc"} & set(info["final_losses"])
    assert info["config"]["gep"] is False and info["config"]["profile"] is True  # resolved for this model
    saved = ScMamba2.from_pretrained(tmp_path / "m")
    assert saved.batch_encoder is not None and saved.profile_head is not None
    # the panel's statistics are refitted on these cells: measured genes get their own mean, unmeasured keep 0
    names = [saved.vocab.tokens[i] for i in saved.profile_head.gene_ids.tolist()]
    mean = dict(zip(names, saved.profile_head.gene_mean.numpy()))
    assert mean["g30"] > 0 and mean["g50"] == 0
    # and the loss masks what this data did not measure: g40..g58 are no targets
    from scmamba2.data.prepare import prepare_cells
    from scmamba2.tasks.integrate import _profile_targets

    net = _profile_model()
    cells = prepare_cells(a, net.vocab, net.tokenizer_config, purpose="finetune").cells
    targets = _profile_targets(net, cells, a, None, False, None)
    measured = dict(zip(names, targets["measured"][0]))
    assert sum(measured.values()) == 20 and measured["g38"] and not measured["g40"]
    prefixed = a.copy()
    prefixed.var_names = [f"GRCh38_{g}" for g in a.var_names]  # the tokenizer strips a genome prefix: so do targets
    targets = _profile_targets(net, cells, prefixed, None, False, None)
    assert targets["measured"][0].sum() == 20
    with pytest.raises(InputError, match="None of the 30 genes of the model's panel"):
        other = a.copy()
        other.var_names = [f"x{i}" for i in range(a.n_vars)]
        _profile_targets(net, cells, other, None, False, None)


def test_from_scratch_keeps_gep_and_mvc():
    a = shifted(n=64)
    out = integrate(a, "batch", from_scratch=True, train_config=_tcfg(2), model_config=TINY, n_top_genes=None,
                    copy=True)
    cfg = out.uns["scmamba2"]["X_scmamba2"]["integration"]["config"]
    assert cfg["gep"] is True and cfg["mvc"] is True and cfg["profile"] is False
