"""Integration without training: a pretrained model's embedding corrected by Harmony."""

import numpy as np
import pytest

from scmamba2.errors import InputError
from scmamba2.tasks.integrate_harmony import integrate_harmony

from .test_integrate import shifted


def _model():
    import torch

    from scmamba2 import ModelConfig, ScMamba2, TokenizerConfig
    from scmamba2.data.vocab import GeneVocab

    torch.manual_seed(0)
    vocab = GeneVocab([f"g{i}" for i in range(50)])
    cfg = ModelConfig(vocab_size=len(vocab), d_model=32, n_layers=1, headdim=16, chunk_size=8, d_state=16,
                      value_mode="continuous", max_len=64, dropout=0.0)
    return ScMamba2(cfg, vocab=vocab, tokenizer_config=TokenizerConfig(value_mode="continuous", max_len=64)).eval()


def test_harmony_removes_a_batch_offset_and_keeps_the_types():
    import scib_metrics

    from scmamba2.tasks.integrate_harmony import harmony

    rng = np.random.default_rng(0)
    lab, bat = rng.integers(0, 3, 300), rng.integers(0, 2, 300)
    centres = rng.normal(0, 4, (3, 16))
    emb = centres[lab] + rng.normal(0, 1, (300, 16)) + 3.0 * bat[:, None] * rng.normal(0, 1, 16)
    fixed = harmony(emb, bat, seed=0)
    asw = lambda e, b: scib_metrics.silhouette_batch(np.asarray(e, np.float32), lab, b)  # noqa: E731
    assert asw(fixed, bat) > asw(emb, bat) + 0.1
    assert scib_metrics.silhouette_label(fixed, lab) > 0.6
    np.testing.assert_array_equal(harmony(emb, bat, seed=0), fixed)  # seeded


def test_writes_the_corrected_and_the_pretrained_embedding():
    a = shifted()
    integrate_harmony(a, "batch", model=_model(), label_key="label", seed=0)
    assert a.obsm["X_scmamba2"].shape == a.obsm["X_scmamba2_pretrained"].shape == (a.n_obs, 32)
    assert not np.allclose(a.obsm["X_scmamba2"], a.obsm["X_scmamba2_pretrained"])
    info = a.uns["scmamba2"]["X_scmamba2"]["integration"]
    assert info["batch_categories"] == ["a", "b"] and {"asw_batch", "asw_label"} <= set(info)


def test_scale_standardises_each_dimension_before_harmony():
    from scmamba2.tasks.integrate_harmony import harmony

    a, b = shifted(), shifted()
    integrate_harmony(a, "batch", model=_model(), seed=0)
    integrate_harmony(b, "batch", model=_model(), seed=0, scale=False)
    raw = a.obsm["X_scmamba2_pretrained"].astype(np.float64)
    np.testing.assert_allclose(b.obsm["X_scmamba2_pretrained"], raw)
    codes = a.obs["batch"].astype("category").cat.codes.to_numpy()
    z = (raw - raw.mean(0)) / raw.std(0)
    np.testing.assert_allclose(a.obsm["X_scmamba2"], harmony(z, codes, seed=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.obsm["X_scmamba2"], harmony(raw, codes, seed=0), rtol=1e-5, atol=1e-5)
    assert a.uns["scmamba2"]["X_scmamba2"]["integration"]["scaled"] is True


def test_bad_batch_or_label_column_is_refused():
    a = shifted(n=40)
    with pytest.raises(InputError, match="not an obs column"):
        integrate_harmony(a, "donor", model=_model())
    with pytest.raises(InputError, match="not an obs column"):
        integrate_harmony(a, "batch", model=_model(), label_key="celltype")


def test_cli_harmony_method(tmp_path):
    from typer.testing import CliRunner

    from scmamba2.cli import app

    a = shifted(n=60)
    data = tmp_path / "d.h5ad"
    a.write_h5ad(data)
    _model().save_pretrained(tmp_path / "m")
    res = CliRunner().invoke(app, ["integrate", str(data), "--batch-key", "batch", "--out", str(tmp_path / "o.h5ad"),
                                   "--method", "harmony", "--model", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    import anndata as ad

    out = ad.read_h5ad(tmp_path / "o.h5ad")
    assert out.obsm["X_scmamba2"].shape == (60, 32) and "X_scmamba2_pretrained" in out.obsm
    res = CliRunner().invoke(app, ["integrate", str(data), "--batch-key", "batch", "--out", str(tmp_path / "p.h5ad"),
                                   "--method", "harmony", "--save-model", str(tmp_path / "s")])
    assert res.exit_code == 1 and "trains nothing" in res.output and not (tmp_path / "p.h5ad").exists()
