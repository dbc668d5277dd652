"""Pretraining really learns: the held-out masked-expression loss drops, the checkpoint is complete."""

import json

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
    assert summary["val_gep_end"] == pytest.approx(res.val_loss_end)
    ScMamba2.from_pretrained(tmp_path)


def test_same_seed_same_weights():
    adata = programme_counts(n_cells=48)
    tok = TokenizerConfig(n_bins=11, max_len=32)
    train = TrainConfig(max_steps=5, batch_size=8, warmup_steps=1, val_fraction=0.0, progress_bar=False, seed=3)
    a = pretrain(adata, model_config=TINY_MODEL, tokenizer_config=tok, train_config=train).model.state_dict()
    b = pretrain(adata, model_config=TINY_MODEL, tokenizer_config=tok, train_config=train).model.state_dict()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
