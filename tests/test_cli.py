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
    # The tiny file's genes are not the bundled model's: validate says so (the file is still fine to pretrain on) ...
    assert "bundled model" in text and "cannot read this file" in text
    # ... and with --model bundled the same mismatch is the error.
    code, text = run("validate", p, "--model", "bundled")
    assert_clean_error(code, text, "vocabulary")


def test_validate_notes_the_bundled_models_overlap(tiny_counts, tmp_path):
    from scmamba2.pretrained import load

    a = tiny_counts.copy()
    a.var_names = load().vocab.genes[10 : 10 + a.n_vars]  # genes of the bundled model's vocabulary
    a.write_h5ad(tmp_path / "c.h5ad")
    code, text = run("validate", tmp_path / "c.h5ad")
    assert code == 0 and f"{a.n_vars} of the file's genes are in its vocabulary" in text, text


def test_python_dash_m():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "scmamba2", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("scmamba2 "), res.stderr


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
        "tokenizer: {max_len: 32}\n"
        "train: {batch_size: 16, warmup_steps: 1, val_fraction: 0.1, val_every_n_steps: 2, progress_bar: false}\n"
    )
    code, text = run("--quiet", "pretrain", p, "--out", tmp_path / "m", "--config", cfg, "--max-steps", 3, "--seed", 1,
               "--n-top-genes", 40, "--precision", "bf16-mixed")
    assert code == 0, text
    assert (tmp_path / "m" / "model.safetensors").is_file()
    import json

    saved = json.loads((tmp_path / "m" / "train_config.json").read_text())
    assert saved["precision"] == "bf16-mixed"
    # A config that sets no loss weights keeps the default objective: the whole profile, GEP and MVC off.
    assert (saved["gep_weight"], saved["mvc_weight"]) == (0.0, 0.0)
    from scmamba2.data.vocab import GeneVocab

    assert len(GeneVocab.load(tmp_path / "m" / "vocab.json").genes) == 40  # --n-top-genes
    code, text = run("--quiet", "embed", p, "--model", tmp_path / "m", "--out", tmp_path / "e.h5ad",
                     "--umap", tmp_path / "u.png", "--color", "label")
    assert code == 0, text
    import anndata as ad

    assert ad.read_h5ad(tmp_path / "e.h5ad").obsm["X_scmamba2"].shape == (tiny_counts.n_obs, 32)
    before = (tmp_path / "e.h5ad").stat().st_mtime_ns
    code, text = run("embed", p, "--model", tmp_path / "m", "--out", tmp_path / "e.h5ad")  # exists: kept
    assert_clean_error(code, text, "--overwrite")
    assert (tmp_path / "e.h5ad").stat().st_mtime_ns == before
    code, text = run("--quiet", "embed", p, "--model", tmp_path / "m", "--out", tmp_path / "e.h5ad", "--overwrite")
    assert code == 0, text
    # The written file keeps the input's X as stored (CSC of int32 here), and the embedding does not depend on it.
    import scipy.sparse as sp

    csc = tiny_counts.copy()
    csc.X = sp.csc_matrix(csc.X.astype(np.int32))
    csc.write_h5ad(tmp_path / "csc.h5ad")
    code, text = run("--quiet", "embed", tmp_path / "csc.h5ad", "--model", tmp_path / "m", "--out", tmp_path / "ec.h5ad")
    assert code == 0, text
    ec, e = ad.read_h5ad(tmp_path / "ec.h5ad"), ad.read_h5ad(tmp_path / "e.h5ad")
    assert ec.X.format == "csc" and ec.X.dtype == np.int32
    np.testing.assert_array_equal(ec.X.toarray(), csc.X.toarray())
    np.testing.assert_allclose(ec.obsm["X_scmamba2"], e.obsm["X_scmamba2"], atol=1e-6)
    code, text = run("embed", p, "--model", tmp_path / "m", "--out", tmp_path / "e.csv")  # not what it writes
    assert_clean_error(code, text, ".h5ad")
    assert not (tmp_path / "e.csv").exists()
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


def test_version_and_short_help():
    from scmamba2 import __version__

    code, text = run("--version")
    assert code == 0 and text.strip() == f"scmamba2 {__version__}"
    code, text = run("-h")
    assert code == 0 and "pretrain" in text and "--version" in text
    code, text = run("perturb", "predict", "-h")
    assert code == 0 and "--n-controls" in text


def test_quiet_training_prints_only_the_result(tiny_counts, tmp_path):
    """A subprocess, so that Lightning's own handlers (bound to the real stderr) are seen too."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    p = tmp_path / "c.h5ad"
    tiny_counts.write_h5ad(p)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "scmamba2.cli", "--quiet", "integrate", str(p), "--batch-key",
                          "batch", "--method", "finetune", "--from-scratch", "--steps", "2", "--out", str(tmp_path / "i.h5ad"), "--save-model",
                          str(tmp_path / "m")], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # no Lightning tips, GPU/TPU lines, deprecation warnings or progress bars
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tiny_counts.n_obs} cells integrated over 2 batches")
    res = subprocess.run([sys.executable, "-m", "scmamba2.cli", "--quiet", "integrate", str(p), "--batch-key",
                          "batch", "--method", "finetune", "--from-scratch", "--steps", "1", "--out", str(tmp_path / "j.h5ad"), "--save-model",
                          str(tmp_path / "m")], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 1 and "--overwrite" in res.stderr and "Traceback" not in res.stderr


def test_overwrite_replaces_a_model_folder_whole(tiny_counts, tmp_path):
    import anndata as ad
    import scipy.sparse as sp

    p = tmp_path / "c.h5ad"
    stored = tiny_counts.copy()
    stored.X = sp.csc_matrix(stored.X.astype(np.int32))  # integrate writes it back as stored
    stored.write_h5ad(p)
    m = tmp_path / "m"
    m.mkdir()
    (m / "stale.txt").write_text("from another run")
    code, text = run("--quiet", "integrate", p, "--batch-key", "batch", "--method", "finetune", "--from-scratch", "--steps", 1, "--out", tmp_path / "i.h5ad",
                     "--save-model", m, "--overwrite")
    assert code == 0, text
    names = {q.name for q in m.iterdir()}
    assert "stale.txt" not in names and {"config.json", "model.safetensors", "integration.json"} <= names
    assert sorted(q.name for q in tmp_path.iterdir()) == ["c.h5ad", "i.h5ad", "m"]  # no staging folder left
    written = ad.read_h5ad(tmp_path / "i.h5ad")
    assert written.X.format == "csc" and written.X.dtype == np.int32 and "X_scmamba2" in written.obsm
    code, text = run("--quiet", "embed", p, "--model", m, "--out", tmp_path / "e.h5ad", "--batch-size", 8)
    assert code == 0, text


def test_help_texts_keep_their_defaults():
    """Rich reads '[default: ...]' in a help text as markup and drops it (the help then ended in ' .')."""
    for command in (["integrate"], ["multiomics", "train"], ["embed"], ["annotate"]):
        code, text = run(*command, "--help")
        assert code == 0 and " . " not in " ".join(text.replace("│", " ").split()) + " ", (command, text)


def test_the_raw_option_names_raw_with_one_dot():
    code, text = run("embed", "--help")
    assert code == 0 and "from .raw instead" in " ".join(text.replace("│", " ").split()), text
    assert "..raw" not in text


def _labelled_query(truth, classes):
    import anndata as ad
    import pandas as pd

    q = ad.AnnData(np.ones((len(truth), 2), dtype=np.float32),
                   obs=pd.DataFrame({"cell_type": truth, "scmamba2_label": [classes[0]] * len(truth)},
                                    index=[f"c{i}" for i in range(len(truth))]))
    q.uns["scmamba2_annotation"] = {"classes": list(classes)}
    return q


def test_annotate_does_not_score_a_query_whose_labels_are_named_differently(tmp_path, capsys):
    """'B' / 'CD14 Mono' against 'B cells' / 'CD14+ Monocytes': a warning, no scores and no confusion matrix."""
    from scmamba2.cli.tasks import _confusion_path, _print_scores

    out_path = tmp_path / "q.h5ad"
    _print_scores(_labelled_query(["B", "CD14 Mono"] * 3, ["B cells", "CD14+ Monocytes"]), "cell_type", out_path)
    text = " ".join((lambda c: c.out + c.err)(capsys.readouterr()).split())
    assert "no label of the query's 'cell_type' is a class of the reference" in text, text
    assert "'B', 'CD14 Mono'" in text and "'B cells', 'CD14+ Monocytes'" in text
    assert "macro-F1" not in text and not _confusion_path(out_path).exists()
    # Some labels match: scored, with a count of the cells whose label the reference does not have.
    _print_scores(_labelled_query(["B cells", "B cells", "NK"], ["B cells", "T cells"]), "cell_type", out_path)
    text = " ".join((lambda c: c.out + c.err)(capsys.readouterr()).split())
    assert "1 of the 3 labelled query cells have a label the reference does not have ('NK')" in text, text
    assert "accuracy 0.667" in text and _confusion_path(out_path).exists()


def test_validate_titles_its_report_by_what_it_checks(tiny_counts, tmp_path):
    p = tmp_path / "c.h5ad"
    tiny_counts.write_h5ad(p)
    code, text = run("validate", p)
    assert code == 0 and "input check (pretraining input): OK" in text, text
    code, text = run("validate", p, "--model", "bundled")  # the genes are not the model's: the report, then the error
    assert "input check (input of the model bundled)" in text and "(pretrain" not in text, text


def test_validate_says_which_vocabulary_it_checked_and_prints_an_error_once(tiny_counts, tmp_path):
    import scanpy as sc

    tiny_counts.write_h5ad(tmp_path / "c.h5ad")
    code, text = run("validate", tmp_path / "c.h5ad")
    assert code == 0 and "not checked" not in text, text
    assert "vocabulary    : bundled model scmamba2-pbmc-small's (no --model; note below): 0.0% of genes" in text
    a = tiny_counts.copy()
    a.X = a.X.toarray()
    sc.pp.scale(a)
    a.write_h5ad(tmp_path / "scaled.h5ad")
    res = runner.invoke(app, ["validate", str(tmp_path / "scaled.h5ad")])  # output: stdout and stderr, once
    assert_clean_error(res.exit_code, res.output, "1 error(s)")
    assert " ".join(res.output.split()).count("X holds scaled values") == 1, res.output


def test_embed_says_which_modality_of_a_mudata_it_embeds(tiny_counts, tmp_path):
    import anndata as ad
    import mudata

    from scmamba2.pretrained import load

    rna = tiny_counts.copy()
    rna.var_names = load().vocab.genes[10 : 10 + rna.n_vars]  # genes of the bundled model's vocabulary
    prot = ad.AnnData(np.ones((rna.n_obs, 3), dtype=np.float32), obs=rna.obs[[]].copy())
    mudata.MuData({"rna": rna, "prot": prot}).write(tmp_path / "m.h5mu")
    code, text = run("embed", tmp_path / "m.h5mu", "--model", "bundled", "--out", tmp_path / "e.h5ad")
    assert code == 0, text
    logged = " ".join(text.split())  # the CLI's log lines
    assert "Reading the 'rna' modality of the MuData file (its modalities: 'prot', 'rna')" in logged, logged
    assert "--modality NAME embeds another" in logged
    code, text = run("embed", tmp_path / "m.h5mu", "--model", "bundled", "--out", tmp_path / "p.h5ad",
                     "--modality", "prot")  # chosen, and read: its genes are not the model's
    assert_clean_error(code, text, "vocabulary")
