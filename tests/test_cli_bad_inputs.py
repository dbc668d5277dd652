"""Every CLI command on every bad input: exit code 1, one paragraph (no traceback), nothing written, the inputs'
bytes unchanged.

Each case runs in a fresh folder holding copies of the tiny inputs built below; the folder's listing and every
file's sha256 are compared before and after the command, so a leftover output (a file, a folder, a temporary
file) or a touched input fails the case.
"""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scmamba2.cli import app

runner = CliRunner()
TINY = "model: {d_model: 32, n_layers: 1, d_state: 16, headdim: 16, chunk_size: 8}\n"


def _h5ad(adata, path):
    adata.write_h5ad(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of tiny inputs: counts, damaged files, a model, configs with mistakes."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from scmamba2 import ModelConfig, ScMamba2
    from scmamba2.data.tokenize import TokenizerConfig
    from scmamba2.data.vocab import GeneVocab

    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    n, g = 48, 40
    labels = rng.integers(0, 3, n)
    rate = np.full((n, g), 0.8)
    for k in range(3):
        rate[labels == k, k * 8:(k + 1) * 8] += 5.0
    counts = rng.poisson(rate).astype(np.float32)
    counts[:, 0] += 1
    obs = pd.DataFrame({"label": pd.Categorical([f"t{k}" for k in labels]),
                        "batch": pd.Categorical([f"b{i % 2}" for i in range(n)]),
                        "score": rng.normal(size=n),  # continuous: not a label
                        "condition": ["ctrl" if i % 3 else "GENE5" for i in range(n)]},
                       index=[f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"GENE{j}" for j in range(g)])
    a = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    _h5ad(a, root / "counts.h5ad")
    z = (counts - counts.mean(0)) / (counts.std(0) + 1e-6)
    _h5ad(ad.AnnData(X=z, obs=obs, var=var), root / "zscored.h5ad")
    neg = counts.copy()
    neg.flat[rng.choice(neg.size, 100, replace=False)] = -1
    _h5ad(ad.AnnData(X=neg, obs=obs, var=var), root / "negative.h5ad")
    nan = counts.copy()
    nan[2, 3] = np.nan
    _h5ad(ad.AnnData(X=nan, obs=obs, var=var), root / "nan.h5ad")
    other = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"OTHER{j}" for j in range(g)]))
    _h5ad(other, root / "other_genes.h5ad")
    whole = (root / "counts.h5ad").read_bytes()
    (root / "truncated.h5ad").write_bytes(whole[: len(whole) // 2])
    (root / "empty.h5ad").write_bytes(b"")
    (root / "binary.csv").write_bytes(bytes(range(256)) * 8)

    tok = TokenizerConfig(n_bins=11, max_len=32)
    vocab = GeneVocab([f"GENE{j}" for j in range(g)])
    cfg = ModelConfig(vocab_size=len(vocab), d_model=32, n_layers=1, d_state=16, headdim=16, chunk_size=8,
                      n_bins=tok.n_bins, max_len=tok.max_len)
    model = root / "model"
    ScMamba2(cfg, vocab=vocab, tokenizer_config=tok).save_pretrained(model)
    for name, damage in {"trunc_weights": lambda d: (d / "model.safetensors").write_bytes(
                             (d / "model.safetensors").read_bytes()[:100]),
                         "empty_weights": lambda d: (d / "model.safetensors").write_bytes(b""),
                         "bad_config": lambda d: (d / "config.json").write_text("{not json"),
                         "bad_perturb": lambda d: (d / "perturb.json").write_text("{\"kind\": ")}.items():
        shutil.copytree(model, root / name)
        damage(root / name)
    release = root / "release"
    release.mkdir()
    import torch

    torch.save({"encoder.embedding.weight": torch.zeros(4, 8)}, release / "best_model.pt")
    (release / "vocab.json").write_text('{"<pad>": 0, "A": 1, "B": 2, "<cls>": 3}')
    (release / "args.json").write_text("{embsize: 8")  # not JSON
    trunc_release = root / "trunc_release"
    shutil.copytree(release, trunc_release)
    (trunc_release / "args.json").unlink()
    (trunc_release / "best_model.pt").write_bytes((release / "best_model.pt").read_bytes()[:50])

    (root / "not_a_model").mkdir()  # a folder of data, no checkpoint
    shutil.copy(root / "counts.h5ad", root / "not_a_model" / "data.h5ad")
    (root / "typo_train.yaml").write_text(TINY + "train: {max_step: 3}\n")
    (root / "typo_section.yaml").write_text("modle: {d_model: 32}\n")
    (root / "typo_model.yaml").write_text("model: {d_modle: 32}\n")
    (root / "broken.yaml").write_text("model: {d_model: 32\ntrain: [1\n")
    (root / "bad_value.yaml").write_text("train: {batch_size: 0}\n")
    return root


M = "model"
# (id, arguments (paths relative to the case folder), text the message must contain)
CASES = [
    # reading files
    ("validate-truncated", ["validate", "truncated.h5ad"], "truncated"),
    ("validate-empty", ["validate", "empty.h5ad"], "empty.h5ad"),
    ("validate-binary-csv", ["validate", "binary.csv"], "binary.csv"),
    ("validate-missing", ["validate", "nope.h5ad"], "nope.h5ad"),
    ("validate-nan", ["validate", "nan.h5ad"], "NaN"),
    ("validate-scaled", ["validate", "zscored.h5ad"], "scaled"),
    ("validate-negative-counts", ["validate", "negative.h5ad"], "negative"),
    ("embed-truncated-data", ["embed", "truncated.h5ad", "--model", M, "--out", "o.h5ad"], "truncated"),
    ("integrate-binary-csv", ["integrate", "binary.csv", "--batch-key", "batch", "--out", "o.h5ad"], "binary.csv"),
    ("perturb-train-truncated", ["perturb", "train", "truncated.h5ad", "--perturbation-key", "condition",
                                 "--out", "pm"], "truncated"),
    ("multiomics-train-truncated", ["multiomics", "train", "truncated.h5ad", "--out", "o.h5ad", "--model-out", "mo"],
     "truncated"),
    # outputs
    ("embed-out-is-input", ["embed", "counts.h5ad", "--model", M, "--out", "counts.h5ad"], "input"),
    ("embed-out-in-model", ["embed", "counts.h5ad", "--model", M, "--out", "model/e.h5ad"], "input"),
    ("annotate-out-is-query", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                               "counts.h5ad", "--out", "counts.h5ad"], "input"),
    ("annotate-save-model-is-model", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                                      "counts.h5ad", "--out", "o.h5ad", "--model", M, "--save-model", M,
                                      "--overwrite"], "input"),
    ("integrate-out-is-input", ["integrate", "counts.h5ad", "--batch-key", "batch", "--out", "counts.h5ad"], "input"),
    ("integrate-save-model-nonempty", ["integrate", "counts.h5ad", "--batch-key", "batch", "--out", "o.h5ad",
                                       "--method", "finetune", "--save-model", "trunc_weights"], "--overwrite"),
    ("pretrain-out-nonempty", ["pretrain", "counts.h5ad", "--out", M, "--max-steps", "1"], "--overwrite"),
    ("pretrain-resume-and-overwrite", ["pretrain", "counts.h5ad", "--out", M, "--resume", "--overwrite"], "--resume"),
    ("perturb-train-out-is-model", ["perturb", "train", "counts.h5ad", "--perturbation-key", "condition",
                                    "--model", M, "--out", M, "--overwrite"], "input"),
    ("multiomics-train-out-is-data", ["multiomics", "train", "counts.h5ad", "--out", "counts.h5ad",
                                      "--model-out", "mo"], "input"),
    ("multiomics-predict-out-is-query", ["multiomics", "predict", "--model", M, "--query", "counts.h5ad",
                                         "--out", "counts.h5ad"], "input"),
    ("perturb-reverse-out-is-query", ["perturb", "reverse", "--model", M, "--query", "counts.h5ad",
                                      "--out", "counts.h5ad"], "input"),
    ("import-out-is-source", ["import-checkpoint", "release", "--out", "release"], "input"),
    # checkpoints
    ("embed-truncated-weights", ["embed", "counts.h5ad", "--model", "trunc_weights", "--out", "o.h5ad"],
     "model.safetensors"),
    ("embed-empty-weights", ["embed", "counts.h5ad", "--model", "empty_weights", "--out", "o.h5ad"],
     "model.safetensors"),
    ("embed-corrupt-config", ["embed", "counts.h5ad", "--model", "bad_config", "--out", "o.h5ad"], "config.json"),
    ("annotate-corrupt-model", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                                "counts.h5ad", "--out", "o.h5ad", "--model", "bad_config"], "config.json"),
    ("perturb-predict-corrupt-meta", ["perturb", "predict", "--model", "bad_perturb", "--perturbations", "GENE1",
                                      "--out", "p.h5ad"], "perturb"),
    ("multiomics-predict-reference-without-protein", ["multiomics", "predict", "--reference", "counts.h5ad",
                                                      "--query", "counts.h5ad", "--out", "o.h5ad"], "protein"),
    ("multiomics-predict-not-multiomics", ["multiomics", "predict", "--model", M, "--query", "counts.h5ad",
                                           "--out", "p.h5ad"], "multiomics.json"),
    ("import-corrupt-args", ["import-checkpoint", "release", "--out", "imported"], "args.json"),
    ("import-truncated-weights", ["import-checkpoint", "trunc_release", "--out", "imported"], "best_model.pt"),
    # --model is checked first: a folder that is no model (even when --out lies in it), a misspelt bundled name
    ("embed-model-not-a-model", ["embed", "counts.h5ad", "--model", "not_a_model", "--out", "not_a_model/x.h5ad"],
     "not_a_model is not a complete scmamba2 checkpoint"),
    ("embed-model-bundled-typo", ["embed", "counts.h5ad", "--model", "scmamba2-pbmc-smal", "--out", "o.h5ad"],
     "no such folder and no bundled model of that name (did you mean 'scmamba2-pbmc-small'?)"),
    ("validate-model-not-a-model", ["validate", "counts.h5ad", "--model", "not_a_model"],
     "not_a_model is not a complete scmamba2 checkpoint"),
    ("annotate-model-not-a-model", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                                    "counts.h5ad", "--out", "not_a_model/x.h5ad", "--model", "not_a_model"],
     "not_a_model is not a complete scmamba2 checkpoint"),
    ("integrate-model-not-a-model", ["integrate", "counts.h5ad", "--batch-key", "batch", "--out",
                                     "not_a_model/x.h5ad", "--model", "not_a_model"],
     "not_a_model is not a complete scmamba2 checkpoint"),
    ("multiomics-train-model-not-a-model", ["multiomics", "train", "counts.h5ad", "--out", "not_a_model/o.h5ad",
                                            "--model-out", "mo", "--model", "not_a_model"],
     "not_a_model is not a complete scmamba2 checkpoint"),
    ("multiomics-predict-model-not-a-model", ["multiomics", "predict", "--model", "not_a_model", "--query",
                                              "counts.h5ad", "--out", "not_a_model/p.h5ad"],
     "not_a_model is not a complete scmamba2 checkpoint"),
    ("perturb-train-model-not-a-model", ["perturb", "train", "counts.h5ad", "--perturbation-key", "condition",
                                         "--model", "not_a_model", "--out", "not_a_model/pm"],
     "not_a_model is not a complete scmamba2 checkpoint"),
    ("perturb-predict-model-not-a-model", ["perturb", "predict", "--model", "not_a_model", "--perturbations",
                                           "GENE1", "--out", "not_a_model/p.h5ad"],
     "not_a_model is not a complete scmamba2 checkpoint"),
    ("perturb-reverse-model-not-a-model", ["perturb", "reverse", "--model", "not_a_model", "--query", "counts.h5ad",
                                           "--out", "not_a_model/r.csv"],
     "not_a_model is not a complete scmamba2 checkpoint"),
    # configs
    ("config-train-typo", ["pretrain", "counts.h5ad", "--out", "m2", "--config", "typo_train.yaml"],
     "did you mean 'max_steps'"),
    ("config-section-typo", ["pretrain", "counts.h5ad", "--out", "m2", "--config", "typo_section.yaml"],
     "did you mean 'model'"),
    ("config-model-typo", ["pretrain", "counts.h5ad", "--out", "m2", "--config", "typo_model.yaml"],
     "did you mean 'd_model'"),
    ("config-broken-yaml", ["pretrain", "counts.h5ad", "--out", "m2", "--config", "broken.yaml"], "YAML"),
    ("config-bad-value", ["pretrain", "counts.h5ad", "--out", "m2", "--config", "bad_value.yaml"], "batch_size"),
    ("config-missing", ["pretrain", "counts.h5ad", "--out", "m2", "--config", "nope.yaml"], "nope.yaml"),
    # options, checked before any training
    ("pretrain-max-steps-0", ["pretrain", "counts.h5ad", "--out", "m2", "--max-steps", "0"], "--max-steps"),
    ("pretrain-n-top-genes-0", ["pretrain", "counts.h5ad", "--out", "m2", "--n-top-genes", "0"], "--n-top-genes"),
    ("pretrain-precision", ["pretrain", "counts.h5ad", "--out", "m2", "--precision", "bf16"], "--precision"),
    ("pretrain-scaled", ["pretrain", "zscored.h5ad", "--out", "m2", "--max-steps", "1"], "scaled"),
    ("quickstart-max-steps-0", ["quickstart", "--out", "qs", "--max-steps", "0"], "--max-steps"),
    ("integrate-steps-0", ["integrate", "counts.h5ad", "--batch-key", "batch", "--out", "o.h5ad", "--method", "finetune",
                           "--steps", "0"], "--steps"),
    ("integrate-harmony-with-steps", ["integrate", "counts.h5ad", "--batch-key", "batch", "--out", "o.h5ad",
                                     "--steps", "10"], "--method finetune"),
    ("multiomics-steps-0", ["multiomics", "train", "counts.h5ad", "--out", "o.h5ad", "--model-out", "mo",
                            "--steps", "0"], "--steps"),
    ("embed-batch-size-0", ["embed", "counts.h5ad", "--model", M, "--out", "o.h5ad", "--batch-size", "0"],
     "--batch-size"),
    ("embed-max-tokens-10", ["embed", "counts.h5ad", "--model", M, "--out", "o.h5ad", "--max-tokens", "10"],
     "max_tokens"),
    ("embed-max-len-1", ["embed", "counts.h5ad", "--model", M, "--out", "o.h5ad", "--max-len", "1"], "--max-len"),
    ("embed-readout-typo", ["embed", "counts.h5ad", "--model", M, "--out", "o.h5ad", "--readout", "profil"],
     "--readout"),
    ("annotate-epochs-0", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                           "counts.h5ad", "--out", "o.h5ad", "--epochs", "0"], "--epochs"),
    ("annotate-threshold-1.5", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                                "counts.h5ad", "--out", "o.h5ad", "--unknown-threshold", "1.5"], "[0, 1]"),
    ("annotate-gene-weight-2", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                               "counts.h5ad", "--out", "o.h5ad", "--gene-weight", "2"], "--gene-weight"),
    ("annotate-gene-weight-finetune", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                                      "counts.h5ad", "--out", "o.h5ad", "--method", "finetune", "--gene-weight", "0"],
     "--gene-weight"),
    ("annotate-no-shared-genes", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                                  "other_genes.h5ad", "--out", "o.h5ad", "--save-model", "ann", "--from-scratch"],
     "query"),
    ("annotate-bundled-model-no-shared-genes", ["annotate", "--reference", "counts.h5ad", "--label-key", "label",
                                                "--query", "counts.h5ad", "--out", "o.h5ad"], "model's vocabulary"),
    ("annotate-model-and-from-scratch", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                                         "counts.h5ad", "--out", "o.h5ad", "--model", M, "--from-scratch"],
     "not both"),
    ("annotate-method-typo", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                              "counts.h5ad", "--out", "o.h5ad", "--method", "probes"], "--method"),
    ("annotate-probe-from-scratch", ["annotate", "--reference", "counts.h5ad", "--label-key", "label", "--query",
                                     "counts.h5ad", "--out", "o.h5ad", "--method", "probe", "--from-scratch"],
     "pretrained encoder"),
    ("annotate-probe-with-pretrain-steps", ["annotate", "--reference", "counts.h5ad", "--label-key", "label",
                                            "--query", "counts.h5ad", "--out", "o.h5ad", "--model", M,
                                            "--pretrain-steps", "5"], "--method finetune"),
    ("annotate-no-shared-genes-pretrained", ["annotate", "--reference", "counts.h5ad", "--label-key", "label",
                                             "--query", "other_genes.h5ad", "--out", "o.h5ad", "--model", M],
     "query"),
    ("annotate-continuous-label", ["annotate", "--reference", "counts.h5ad", "--label-key", "score", "--query",
                                   "counts.h5ad", "--out", "o.h5ad"], "continuous"),
    ("annotate-annotator-and-save-model", ["annotate", "--annotator", M, "--query", "counts.h5ad", "--out", "o.h5ad",
                                          "--save-model", "ann"], "--save-model"),
    ("annotate-missing-label", ["annotate", "--reference", "counts.h5ad", "--label-key", "nope", "--query",
                                "counts.h5ad", "--out", "o.h5ad"], "nope"),
    ("annotate-zscored", ["annotate", "--reference", "zscored.h5ad", "--label-key", "label", "--query",
                          "counts.h5ad", "--out", "o.h5ad", "--from-scratch"], "scaled"),
    ("integrate-zscored", ["integrate", "zscored.h5ad", "--batch-key", "batch", "--out", "o.h5ad"], "scaled"),
    ("integrate-negative-counts", ["integrate", "negative.h5ad", "--batch-key", "batch", "--out", "o.h5ad"],
     "negative"),
    ("integrate-nan", ["integrate", "nan.h5ad", "--batch-key", "batch", "--out", "o.h5ad", "--method", "finetune",
                       "--save-model", "im"], "NaN"),
    ("perturb-train-max-steps-0", ["perturb", "train", "counts.h5ad", "--perturbation-key", "condition",
                                   "--out", "pm", "--max-steps", "0"], "--max-steps"),
    ("perturb-train-batch-size-0", ["perturb", "train", "counts.h5ad", "--perturbation-key", "condition",
                                    "--out", "pm", "--batch-size", "0"], "--batch-size"),
    ("perturb-train-holdout-empty", ["perturb", "train", "counts.h5ad", "--perturbation-key", "condition",
                                     "--out", "pm", "--holdout", "GENE5,"], "--holdout"),
    ("perturb-train-gene-knowledge", ["perturb", "train", "counts.h5ad", "--perturbation-key", "condition",
                                      "--out", "pm", "--gene-knowledge", "pcaa"], "--gene-knowledge"),
    ("perturb-predict-n-controls-0", ["perturb", "predict", "--model", M, "--perturbations", "GENE1",
                                      "--out", "p.h5ad", "--n-controls", "0"], "--n-controls"),
    ("perturb-predict-empty-names", ["perturb", "predict", "--model", M, "--perturbations", "MEIS1,,+",
                                     "--out", "p.h5ad"], "empty name"),
    ("perturb-predict-not-perturb", ["perturb", "predict", "--model", M, "--perturbations", "GENE1",
                                     "--out", "p.h5ad"], "perturbation model"),
    ("perturb-reverse-top-k-0", ["perturb", "reverse", "--model", M, "--query", "counts.h5ad", "--out", "r.csv",
                                 "--top-k", "0"], "--top-k"),
    ("perturb-reverse-empty-candidate", ["perturb", "reverse", "--model", M, "--query", "counts.h5ad",
                                         "--out", "r.csv", "--candidates", "A,,B"], "--candidates"),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("args,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(inputs, tmp_path, monkeypatch, args, needle):
    work = tmp_path / "case"
    shutil.copytree(inputs, work)
    monkeypatch.chdir(work)
    before = _snapshot(work)
    res = runner.invoke(app, ["--quiet", *args])
    text = res.output + (res.stderr if res.stderr_bytes is not None else "")
    assert res.exit_code == 1, (res.exit_code, text, res.exception)
    assert "Traceback" not in text
    assert "Error:" in text
    assert needle in " ".join(text.split()), (needle, text)
    after = _snapshot(work)
    assert after == before, ("files changed or left behind", set(after.items()) ^ set(before.items()))


def test_every_command_has_a_case():
    """A new command needs a row in the table above."""
    import typer.main

    group = typer.main.get_command(app)
    names = set()
    for name, cmd in group.commands.items():
        sub = getattr(cmd, "commands", None)
        names |= {f"{name} {s}" for s in sub} if sub else {name}
    covered = {" ".join(a[:2]) if a[0] in ("perturb", "multiomics") else a[0] for _, a, _ in CASES}
    # datasets and bench take no user data files; their errors are tested in tests/datasets and tests/bench
    assert names - covered <= {"datasets list", "datasets get", "bench"}, names - covered
