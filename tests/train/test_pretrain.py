"""Pretraining really learns: the held-out masked-expression loss drops, the checkpoint is complete."""

import json
from dataclasses import replace

import numpy as np
import pytest

from scmamba2 import ScMamba2, TokenizerConfig, TrainConfig, pretrain

TINY_MODEL = dict(d_model=32, n_layers=2, d_state=16, headdim=16, chunk_size=8, dropout=0.0)


def programme_counts(n_cells=160, n_genes=60, seed=0):
    """Three cell types, each with 12 strongly expressed genes of its own, on a Poisson background."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n_cells)
    rate = np.full((n_cells, n_genes), 0.7)
    for k in range(3):
        rate[labels == k, k * 12 : (k + 1) * 12] += np.linspace(2, 20, 12)
    X = rng.poisson(rate).astype(np.float32)
    X[:, -1] += 1
    obs = pd.DataFrame({"label": pd.Categorical([f"t{k}" for k in labels])}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def test_heldout_masked_loss_drops(tmp_path):
    adata = programme_counts()
    tok = TokenizerConfig(n_bins=11, max_len=64)
    train = TrainConfig(max_steps=120, batch_size=16, lr=3e-3, warmup_steps=10, val_fraction=0.15,
                        val_every_n_steps=60, progress_bar=False, seed=0)
    res = pretrain(adata, out_dir=tmp_path, model_config=TINY_MODEL, tokenizer_config=tok, train_config=train)
    assert res.val_loss_end < 0.3 * res.val_loss_start, (res.val_loss_start, res.val_loss_end)
    # The model beats the best constant guess, so it uses the genes and their context.
    from scmamba2.data.tokenize import tokenize

    vals = tokenize(adata, res.model.vocab, tok).values
    assert res.val_loss_end < np.var(vals[vals > 0])
    for f in ("config.json", "model.safetensors", "vocab.json", "train_config.json", "train_summary.json"):
        assert (tmp_path / f).is_file(), f
    assert (tmp_path / "logs" / "metrics.csv").is_file()
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["val_end"]["val/gep"] == pytest.approx(res.val_loss_end)
    # Beside the loss, what predicting each gene's mean value scores: the model must beat it.
    assert res.val_loss_end < 0.8 * res.val_end["val/gep_gene_mean"]
    ScMamba2.from_pretrained(tmp_path)


def test_profile_objective_learns_cell_state(tmp_path):
    """The default recipe (continuous values, profile decoder): the held-out profile loss falls well below
    what predicting each gene's mean scores, and the embedding separates the cell types."""
    adata = programme_counts(n_cells=200)
    train = TrainConfig(max_steps=150, batch_size=16, lr=3e-3, warmup_steps=10, val_fraction=0.15,
                        val_every_n_steps=150, gep_weight=0.0, mvc_weight=0.0, progress_bar=False, seed=0)
    res = pretrain(adata, out_dir=tmp_path, model_config=TINY_MODEL, train_config=train)
    model = res.model
    assert model.config.profile_genes == 60 and model.config.value_mode == "continuous"
    assert res.val_end["val/profile_gene_mean"] == pytest.approx(1.0, abs=0.3)
    # Most genes are Poisson noise here (48 of 60): 0.8 of the reference is far from gene means.
    assert res.val_loss_end < 0.8 * res.val_end["val/profile_gene_mean"], res.val_end
    assert res.val_loss_end < 0.8 * res.val_loss_start
    from scmamba2 import embed
    from scmamba2.eval.knn import knn_label_transfer_accuracy

    embed(adata, tmp_path, progress=False)
    acc, _ = knn_label_transfer_accuracy(adata.obsm["X_scmamba2"], adata.obs["label"], n_neighbors=5)
    assert acc > 0.9


def test_binned_values_with_a_profile_decoder_are_refused():
    from scmamba2 import InputError

    with pytest.raises(InputError, match="continuous"):
        pretrain(programme_counts(n_cells=40), model_config={**TINY_MODEL, "profile_genes": 10},
                 tokenizer_config=TokenizerConfig(n_bins=11, max_len=32),
                 train_config=TrainConfig(max_steps=1, progress_bar=False))


def test_expression_order_with_a_masked_value_loss_is_refused():
    from scmamba2 import InputError

    with pytest.raises(InputError, match="gene_order"):
        pretrain(programme_counts(n_cells=40), model_config=TINY_MODEL,
                 tokenizer_config=TokenizerConfig(n_bins=11, max_len=32, gene_order="expression"),
                 train_config=TrainConfig(max_steps=1, progress_bar=False))


def test_panel_view_fraction_without_a_panel_is_refused():
    from scmamba2 import InputError

    with pytest.raises(InputError, match="no profile decoder"):
        pretrain(programme_counts(n_cells=40), model_config=TINY_MODEL, tokenizer_config=TokenizerConfig(max_len=32),
                 train_config=TrainConfig(max_steps=1, progress_bar=False, panel_view_fraction=0.3))


def test_depth_thinning_needs_raw_counts_with_continuous_values():
    from scmamba2 import InputError

    with pytest.raises(InputError, match="depth_thinning reads cells as if sequenced less deeply"):
        pretrain(programme_counts(n_cells=40), model_config=TINY_MODEL,
                 tokenizer_config=TokenizerConfig(max_len=32, value_mode="binned"),
                 train_config=TrainConfig(max_steps=1, progress_bar=False, depth_thinning=0.3))
    with pytest.raises(InputError, match="depth_thinning reads cells as if sequenced less deeply"):
        pretrain(programme_counts(n_cells=40), model_config=TINY_MODEL,
                 tokenizer_config=TokenizerConfig(max_len=32, value_mode="continuous", include_zeros="all"),
                 train_config=TrainConfig(max_steps=1, progress_bar=False, depth_thinning=0.3))
    with pytest.raises(ValueError, match="depth_thinning"):
        TrainConfig(depth_thinning=1.5)


def test_cluster_balance_needs_a_profile_decoder_and_a_valid_exponent():
    from scmamba2 import InputError

    with pytest.raises(InputError, match="cluster_balance clusters cells by their profile panel"):
        pretrain(programme_counts(n_cells=40), model_config={**TINY_MODEL, "profile_genes": 0},
                 tokenizer_config=TokenizerConfig(max_len=32, value_mode="continuous"),
                 train_config=TrainConfig(max_steps=1, progress_bar=False, cluster_balance=0.5))
    with pytest.raises(ValueError, match="cluster_balance"):
        TrainConfig(cluster_balance=1.5)


def test_cluster_balance_draws_rare_cells_more_often(monkeypatch):
    """Pretraining with cluster_balance=1 feeds a type of a tenth of the cells about as often as the others."""
    import scmamba2.train.pretrain as pre
    from scmamba2.data import balance

    monkeypatch.setattr(balance, "MAX_CLUSTERS", 3)  # one cluster a type
    monkeypatch.setattr(balance, "CELLS_PER_CLUSTER", 10)
    seen = {}
    real = pre.LengthBucketSampler

    def spy(*args, **kwargs):
        seen["weights"] = kwargs.get("weights")
        return real(*args, **kwargs)

    monkeypatch.setattr(pre, "LengthBucketSampler", spy)
    adata = programme_counts(n_cells=200)
    labels = adata.obs["label"].to_numpy()
    adata = adata[(labels != "t2") | (np.cumsum(labels == "t2") <= 15)].copy()  # t2: 15 cells of ~145
    train = TrainConfig(max_steps=1, batch_size=8, val_fraction=0.0, progress_bar=False, cluster_balance=1.0)
    pretrain(adata, model_config={**TINY_MODEL, "profile_genes": 30},
             tokenizer_config=TokenizerConfig(max_len=32, value_mode="continuous"), train_config=train)
    w, labels = seen["weights"], adata.obs["label"].to_numpy()
    assert w is not None and w.mean() == pytest.approx(1.0)
    assert w[labels == "t2"].min() > 2 * w[labels != "t2"].max()


def test_same_seed_same_weights():
    adata = programme_counts(n_cells=48)
    tok = TokenizerConfig(n_bins=11, max_len=32)
    train = TrainConfig(max_steps=5, batch_size=8, warmup_steps=1, val_fraction=0.0, progress_bar=False, seed=3)
    a = pretrain(adata, model_config=TINY_MODEL, tokenizer_config=tok, train_config=train).model.state_dict()
    b = pretrain(adata, model_config=TINY_MODEL, tokenizer_config=tok, train_config=train).model.state_dict()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k


def test_a_smaller_panel_is_logged_against_the_genes_read(caplog):
    """Fewer genes than the panel's size: the log names how many genes were read, not only the panel size."""
    import logging

    adata = programme_counts(n_cells=48)
    train = TrainConfig(max_steps=2, batch_size=8, warmup_steps=1, val_fraction=0.0, progress_bar=False, seed=0)
    with caplog.at_level(logging.INFO, logger="scmamba2.train.pretrain"):
        res = pretrain(adata, model_config={**TINY_MODEL, "profile_genes": 500}, train_config=train,
                       n_top_genes=40)
    n = res.model.config.profile_genes
    assert f"{n} of the 40 genes read qualify" in caplog.text, caplog.text
    assert f"holds {n} genes instead of its usual 500" in caplog.text
    assert "asked for" not in caplog.text


def test_fine_tune_starts_from_a_model_and_skips_unmeasured_panel_genes():
    import torch

    adata = programme_counts(n_cells=120)
    train = TrainConfig(max_steps=8, batch_size=16, warmup_steps=1, val_fraction=0.2, val_every_n_steps=8,
                        gep_weight=0.0, mvc_weight=0.0, progress_bar=False, seed=0)
    base = pretrain(adata, model_config=TINY_MODEL, train_config=train).model
    before = {k: v.clone() for k, v in base.state_dict().items()}
    part = adata[:, 10:].copy()  # a dataset that never measured the first 10 genes
    tuned = pretrain(part, init_model=base, train_config=train)
    for k, v in base.state_dict().items():  # the model we started from is untouched
        assert torch.equal(v, before[k]), k
    assert torch.equal(tuned.model.profile_head.gene_ids, base.profile_head.gene_ids)
    assert np.isfinite(tuned.val_loss_end)
    # The panel keeps the genes this data set did not measure (their targets are NaN: tests/data/test_panel.py).
    unmeasured = set(base.vocab.lookup([f"g{j}" for j in range(10)]).tolist())
    missing = [i in unmeasured for i in tuned.model.profile_head.gene_ids.tolist()]
    assert sum(missing) == 10
    with pytest.raises(Exception, match="fine-tune keeps"):
        pretrain(part, init_model=base, model_config=TINY_MODEL, train_config=train)


def test_fine_tune_leaves_out_panel_genes_expressed_in_too_few_new_cells(caplog):
    import logging

    adata = programme_counts(n_cells=120)
    train = TrainConfig(max_steps=8, batch_size=16, warmup_steps=1, val_fraction=0.2, val_every_n_steps=8,
                        gep_weight=0.0, mvc_weight=0.0, progress_bar=False, seed=0)
    base = pretrain(adata, model_config=TINY_MODEL, train_config=train).model
    assert base.vocab.lookup(["g5"])[0] in base.profile_head.gene_ids.tolist()
    part = adata.copy()
    x = part.X.toarray()
    x[3:, 5] = 0  # g5, a panel gene, is expressed in at most 3 of the new cells: no statistics to standardise by
    part.X = type(adata.X)(x)
    with caplog.at_level(logging.INFO, logger="scmamba2.data.panel"):
        tuned = pretrain(part, init_model=base, train_config=train)
    assert "fine-tune: 1 of " in caplog.text and "fewer than 10 training cells" in caplog.text
    assert np.isfinite(tuned.val_loss_end)
    with caplog.at_level(logging.INFO, logger="scmamba2.data.panel"):
        caplog.clear()
        pretrain(adata, init_model=base, train_config=train)  # every panel gene well expressed: all are targets
    assert "fewer than 10 training cells" not in caplog.text
    from scmamba2.errors import InputError

    with pytest.raises(InputError, match="no target"):  # 9 cells: no panel gene can be expressed in 10
        pretrain(adata[:9].copy(), init_model=base, train_config=replace(train, val_fraction=0.0))


def test_fine_tune_on_a_new_panel_chosen_on_the_data():
    adata = programme_counts(n_cells=120)
    train = TrainConfig(max_steps=8, batch_size=16, warmup_steps=1, val_fraction=0.2, val_every_n_steps=8,
                        gep_weight=0.0, mvc_weight=0.0, progress_bar=False, seed=0)
    base = pretrain(adata, model_config=TINY_MODEL, train_config=train).model
    part = adata[:, 10:].copy()  # a dataset that never measured the first 10 genes
    tuned = pretrain(part, init_model=base, train_config=replace(train, finetune_panel="data")).model
    measured = set(base.vocab.lookup(part.var_names).tolist())
    ids = tuned.profile_head.gene_ids.tolist()
    assert set(ids) <= measured and len(ids) == tuned.config.profile_genes > 0
    assert len(ids) < base.config.profile_genes  # every gene of the panel was measured here
    # the encoder starts from the base model: the embeddings of genes never seen here are only weight-decayed
    unseen = base.vocab.lookup([f"g{j}" for j in range(10)])
    key = "gene_encoder.embedding.weight"
    assert np.allclose(tuned.state_dict()[key][unseen].numpy(), base.state_dict()[key][unseen].numpy(), rtol=1e-3)


def test_training_with_the_contrastive_term_logs_it_and_it_falls(tmp_path):
    adata = programme_counts(n_cells=160)
    train = TrainConfig(max_steps=80, batch_size=16, lr=3e-3, warmup_steps=5, val_fraction=0.1,
                        val_every_n_steps=80, log_every_n_steps=5, gep_weight=0.0, mvc_weight=0.0,
                        contrastive_weight=0.5, progress_bar=False, seed=0)
    pretrain(adata, out_dir=tmp_path, model_config=TINY_MODEL, train_config=train)
    import pandas as pd

    m = pd.read_csv(tmp_path / "logs" / "metrics.csv").dropna(subset=["train/contrastive"])
    first, last = m["train/contrastive"].iloc[:3].mean(), m["train/contrastive"].iloc[-3:].mean()
    assert last < 0.8 * first, (first, last)
    assert first < np.log(16) + 1.0


def test_negative_binomial_profile_likelihood():
    # The NB loss equals scipy's negative binomial (mean mu, inverse dispersion theta) on the measured entries,
    # and a short pretraining run with it lowers the held-out NB loss below predicting each gene's mean.
    import numpy as np
    import torch
    from scipy.stats import nbinom

    from scmamba2.train.losses import nb_nll

    rng = np.random.default_rng(0)
    log_rate = torch.tensor(rng.normal(0, 1, (3, 4)), dtype=torch.float64)
    counts = torch.tensor(rng.poisson(3, (3, 4)), dtype=torch.float64)
    counts[1, 2] = float("nan")
    library = torch.tensor([800.0, 1500.0, 3000.0], dtype=torch.float64)
    log_theta = torch.tensor(rng.normal(0, 0.5, 4), dtype=torch.float64)
    got = nb_nll(log_rate, counts, library, log_theta, 1e4)
    mu = (library[:, None] / 1e4 * log_rate.exp()).numpy()
    theta = np.broadcast_to(log_theta.exp().numpy(), mu.shape)
    ok = ~np.isnan(counts.numpy())
    want = -nbinom.logpmf(counts.numpy()[ok], theta[ok], theta[ok] / (theta[ok] + mu[ok])).mean()
    assert abs(float(got) - want) < 1e-9


def test_negative_binomial_profile_objective_learns_cell_state(tmp_path):
    """The NB likelihood on raw counts: the held-out NB loss falls below predicting each gene's mean, the
    embedding separates the cell types; log-normalised input is refused before training."""
    from scmamba2 import InputError, embed
    from scmamba2.eval.knn import knn_label_transfer_accuracy

    adata = programme_counts(n_cells=200)
    train = TrainConfig(max_steps=150, batch_size=16, lr=3e-3, warmup_steps=10, val_fraction=0.15,
                        val_every_n_steps=150, gep_weight=0.0, mvc_weight=0.0, progress_bar=False, seed=0)
    res = pretrain(adata, out_dir=tmp_path / "nb", model_config={**TINY_MODEL, "profile_likelihood": "nb"},
                   train_config=train)
    assert res.model.profile_head.log_theta is not None
    assert res.val_loss_end < res.val_end["val/profile_gene_mean"] < res.val_loss_start, res.val_end
    embed(adata, tmp_path / "nb", progress=False)
    acc, _ = knn_label_transfer_accuracy(adata.obsm["X_scmamba2"], adata.obs["label"], n_neighbors=5)
    assert acc > 0.9
    loaded = ScMamba2.from_pretrained(tmp_path / "nb")
    assert loaded.config.profile_likelihood == "nb"
    assert torch_equal(loaded.profile_head.log_theta, res.model.profile_head.log_theta)

    import scanpy as sc

    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    with pytest.raises(InputError, match="raw counts"):
        pretrain(lognorm, model_config={**TINY_MODEL, "profile_likelihood": "nb"},
                 train_config=TrainConfig(max_steps=1, progress_bar=False))


def torch_equal(a, b):
    import torch

    return torch.equal(a.detach(), b.detach())


def test_panel_input_trains_on_the_panel_genes_only(monkeypatch):
    """``input_genes="panel"``: every training and held-out cell the datasets get holds panel genes only."""
    import scmamba2.train.pretrain as pre

    seen = []
    real = pre.TokenizedDataset

    def spy(cells, *args, **kwargs):
        seen.append((cells, kwargs.get("panel")))
        return real(cells, *args, **kwargs)

    monkeypatch.setattr(pre, "TokenizedDataset", spy)
    train = TrainConfig(max_steps=3, batch_size=16, val_fraction=0.15, val_every_n_steps=3, progress_bar=False)
    res = pretrain(programme_counts(), model_config={**TINY_MODEL, "profile_genes": 20, "input_genes": "panel"},
                   train_config=train)
    panel = res.model.profile_head.gene_ids.numpy()
    assert len(seen) == 2 and res.model.config.input_genes == "panel"
    for cells, p in seen:
        np.testing.assert_array_equal(p.ids, panel)
        assert np.isin(cells.gene_ids, panel).all() and len(cells.gene_ids) > 0
