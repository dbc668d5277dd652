"""The CLI: commands work end to end; bad input ends with one paragraph, exit code 1 and no traceback."""

import numpy as np
from typer.testing import CliRunner

from scmamba2.cli import app

runner = CliRunner()


def run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output + (res.stderr if res.stderr_bytes is not None else "")


def assert_clean_error(code, text, *needles):
    assert code == 1, text
    assert "Traceback" not in text
    assert "Error:" in text
    for n in needles:
        assert n in text, (n, text)


def test_validate_ok(tiny_counts, tmp_path):
    p = tmp_path / "c.h5ad"
    tiny_counts.write_h5ad(p)
    code, text = run("validate", p)
    assert code == 0, text
    assert "raw_counts" in text


def test_scaled_values_refused(tiny_counts, tmp_path):
    import scanpy as sc

    a = tiny_counts.copy()
    a.X = a.X.toarray()
    sc.pp.scale(a)
    p = tmp_path / "scaled.h5ad"
    a.write_h5ad(p)
    code, text = run("pretrain", p, "--out", tmp_path / "m", "--max-steps", 2)
    assert_clean_error(code, text, "raw")
    code, text = run("validate", p)
    assert_clean_error(code, text)


def test_nan_refused(tiny_counts, tmp_path):
    a = tiny_counts.copy()
    a.X = a.X.toarray()
    a.X[3, 4] = np.nan
    p = tmp_path / "nan.h5ad"
    a.write_h5ad(p)
    code, text = run("validate", p)
    assert_clean_error(code, text, "NaN")


def test_pretrain_embed_and_vocab_mismatch(tiny_counts, tmp_path):
    p = tmp_path / "c.h5ad"
    tiny_counts.write_h5ad(p)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "model: {d_model: 32, n_layers: 1, d_state: 16, headdim: 16, chunk_size: 8}\n"
        "tokenizer: {n_bins: 11, max_len: 32}\n"
        "train: {batch_size: 16, warmup_steps: 1, val_fraction: 0.1, val_every_n_steps: 2, progress_bar: false}\n"
    )
    code, text = run("--quiet", "pretrain", p, "--out", tmp_path / "m", "--config", cfg, "--max-steps", 3, "--seed", 1,
               "--n-top-genes", 40)
    assert code == 0, text
    assert (tmp_path / "m" / "model.safetensors").is_file()
    from scmamba2.data.vocab import GeneVocab

    assert len(GeneVocab.load(tmp_path / "m" / "vocab.json").genes) == 40  # --n-top-genes
    code, text = run("--quiet", "embed", p, "--model", tmp_path / "m", "--out", tmp_path / "e.h5ad",
                     "--umap", tmp_path / "u.png", "--color", "label")
    assert code == 0, text
    import anndata as ad

    assert ad.read_h5ad(tmp_path / "e.h5ad").obsm["X_scmamba2"].shape == (tiny_counts.n_obs, 32)
    assert (tmp_path / "u.png").stat().st_size > 1000
    other = tiny_counts.copy()
    other.var_names = [f"ENSG{i:011d}" for i in range(other.n_vars)]
    q = tmp_path / "other.h5ad"
    other.write_h5ad(q)
    code, text = run("embed", q, "--model", tmp_path / "m", "--out", tmp_path / "x.h5ad")
    assert_clean_error(code, text, "ENSG")
    code, text = run("validate", q, "--model", tmp_path / "m")
    assert_clean_error(code, text, "ENSG")


def test_missing_file(tmp_path):
    code, text = run("validate", tmp_path / "nope.h5ad")
    assert_clean_error(code, text, "nope.h5ad")
