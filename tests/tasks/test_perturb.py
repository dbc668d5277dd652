"""Perturbation response and reverse perturbation on synthetic data with distinct effects."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scmamba2.data.perturb import parse_perturbations
from scmamba2.data.vocab import GeneVocab
from scmamba2.errors import CheckpointError, InputError
from scmamba2.eval.perturb_metrics import perturbation_metrics, top_de_genes, topk_accuracy
from scmamba2.model import ModelConfig, ScMamba2
from scmamba2.tasks.perturb import (SMALL_MODEL, PerturbationModel, PerturbMeta, panel_matrix, predict_perturbation,
                                    reverse_perturbation, train_perturbation)
from scmamba2.tasks.perturb_correction import CorrectionHead
from scmamba2.tasks.perturb_effects import EffectTable
from scmamba2.train.config import TrainConfig

N_GENES = 24
# Each perturbation raises its own block of 4 genes; "XOUT" is a target that is not among the measured genes.
EFFECTS = {"ctrl": None, "G0": 4, "G1": 8, "XOUT": 12, "G2": 16, "G0+G1": (4, 8)}


def _synthetic(n_per=40, seed=0):
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for name, block in EFFECTS.items():
        rate = np.full((n_per, N_GENES), 2.0)
        for b in ([] if block is None else [block] if isinstance(block, int) else block):
            rate[:, b:b + 4] = 12.0
        rows.append(rng.poisson(rate))
        labels += [name if name == "ctrl" or "+" in name else f"{name}+ctrl"] * n_per
    X = np.vstack(rows).astype(np.float32)
    obs = pd.DataFrame({"condition": labels, "half": np.tile(np.arange(n_per) % 2, len(EFFECTS)).astype(str)},
                       index=[f"c{i}" for i in range(len(X))])
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(N_GENES)]))


TRAIN = TrainConfig(max_steps=400, batch_size=32, lr=3e-3, warmup_steps=10, progress_bar=False, seed=0)
SMALL = dict(d_model=32, n_layers=1, headdim=16, d_state=16, chunk_size=8)


@pytest.fixture(scope="module")
def trained():
    data = _synthetic()
    train = data[data.obs["half"] == "0"].copy()
    pm = train_perturbation(train, perturbation_key="condition", control="ctrl", model_config=SMALL,
                            train_config=TRAIN, anonymise=0.0)
    return pm, data[data.obs["half"] == "1"].copy()


def test_seen_perturbations_get_their_own_effect(trained):
    pm, _ = trained
    pred = predict_perturbation(pm, ["ctrl", "G1", "XOUT"], n_controls=32)
    X = pred.X
    assert pred.obs["perturbation"].tolist() == ["ctrl", "G1", "XOUT"]
    assert pred.obs["source"].tolist() == ["seen"] * 3
    assert list(pred.var_names) == [f"G{j}" for j in range(N_GENES)]
    # G1 raises block 8..11; the out-of-panel target XOUT raises block 12..15.
    assert X[1, 8:12].mean() - X[0, 8:12].mean() > 0.5
    assert X[2, 12:16].mean() - X[0, 12:16].mean() > 0.5
    assert abs(X[1, 20:24].mean() - X[0, 20:24].mean()) < 0.3


def test_controls_from_a_file_with_perturbed_cells_use_its_control_cells(trained):
    pm, held = trained
    only = predict_perturbation(pm, ["G1", "G2"], controls=held[held.obs["condition"] == "ctrl"].copy(), n_controls=32)
    mixed = predict_perturbation(pm, ["G1", "G2"], controls=held, n_controls=32)
    np.testing.assert_array_equal(mixed.X, only.X)  # the perturbed cells of `held` are left out
    no_label = held[held.obs["condition"] == "ctrl"].copy()
    del no_label.obs["condition"]  # a file of control cells without the column: every cell is a control
    np.testing.assert_array_equal(predict_perturbation(pm, ["G1", "G2"], controls=no_label, n_controls=32).X, only.X)
    with pytest.raises(InputError, match="no cell labelled 'ctrl'"):
        predict_perturbation(pm, ["G1"], controls=held[held.obs["condition"] != "ctrl"].copy())
    relabelled = held.copy()  # controls labelled as training reads them too: 'ctrl+ctrl', padded; one label missing
    cond = relabelled.obs["condition"].astype(object).to_numpy()
    ctrl = np.flatnonzero(cond == "ctrl")
    cond[ctrl[::2]] = "ctrl+ctrl"
    cond[ctrl[1::2]] = " ctrl"
    cond[np.setdiff1d(np.arange(len(cond)), ctrl)[-1]] = np.nan  # a perturbed cell without a label
    relabelled.obs["condition"] = cond
    np.testing.assert_array_equal(predict_perturbation(pm, ["G1", "G2"], controls=relabelled, n_controls=32).X, only.X)


def test_correction_is_kept_only_when_it_beats_the_baseline_on_validation(trained):
    pm, _ = trained
    rec = pm.meta.correction
    assert pm.meta.validation and rec["val_baseline"]["n_units"] == len(pm.meta.validation)
    with_corr = predict_perturbation(pm, ["G2+XOUT"], n_controls=16).X
    without = predict_perturbation(pm, ["G2+XOUT"], correction=False).X
    if rec["accepted"]:
        assert rec["val_best"]["wmse"] < rec["val_baseline"]["wmse"]
        assert rec["val_best"]["pearson_delta_de20"] >= rec["val_baseline"]["pearson_delta_de20"]
    else:  # dropped: the correction is exactly zero
        np.testing.assert_array_equal(with_corr, without)
        assert pm.head.out_w.abs().sum() == 0 and pm.head.out_b.abs().sum() == 0


def _fresh_model(data, train):
    """A perturbation model with freshly initialised network and correction head (the correction marked kept)."""
    X, genes, _ = panel_matrix(data)
    labels = parse_perturbations(data, "condition", "ctrl")
    keep = labels.is_control | np.isin(labels.names, train)
    targets = {p: list(labels.targets(p)) for p in labels.perturbations}
    effects = EffectTable.from_cells(X[keep], labels.names[keep], None, "ctrl", targets=targets)
    vocab = GeneVocab(genes + ["XOUT"])
    cfg = ModelConfig(vocab_size=len(vocab), **{**SMALL_MODEL, **SMALL}, value_mode="continuous", mvc=False,
                      n_pert_flags=2, max_len=N_GENES + 3)
    rng = np.random.default_rng(0)
    meta = PerturbMeta(key="condition", control="ctrl", kind="genetic", genes=genes,
                       perturbations=labels.perturbations, train_perturbations=list(train), targets=targets,
                       control_mean=X[labels.is_control].mean(0).tolist(), flagged_genes=["G0", "G1", "XOUT"],
                       correction={"accepted": True})
    head = CorrectionHead(cfg.d_model, N_GENES, rng.normal(size=(N_GENES, 3)))
    pm = PerturbationModel(ScMamba2(cfg, vocab=vocab), meta, X[labels.is_control][:20], head=head, effects=effects)
    return pm, X, labels


def test_fresh_model_predicts_exactly_the_baseline():
    data = _synthetic(n_per=10)
    pm, X, labels = _fresh_model(data, ["G0", "G1", "XOUT"])
    ctrl = X[labels.is_control].mean(0).astype(np.float64)
    eff = {p: X[labels.names == p].mean(0) - ctrl for p in ("G0", "G1", "XOUT")}
    expected = np.stack([ctrl + (eff["G0"] + eff["G1"] + eff["XOUT"]) / 3,  # unseen single: training mean effect
                         ctrl + eff["G0"] + eff["G1"],  # combination of seen singles: additive
                         ctrl + eff["G1"], ctrl])  # seen: its own effect; the control
    pred = predict_perturbation(pm, ["G2", "G1+G0", "G1", "ctrl"], n_controls=8)
    assert pred.obs["source"].tolist() == ["baseline+correction", "baseline+correction", "seen", "seen"]
    assert pred.obs["perturbation"].tolist()[1] == "G0+G1" and pred.obs["requested"].tolist()[1] == "G1+G0"
    np.testing.assert_allclose(pred.X, np.maximum(expected, 0), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(pred.X, predict_perturbation(pm, ["G2", "G0+G1", "G1", "ctrl"], correction=False).X)


def test_reverse_ranks_the_true_perturbation_first(trained):
    pm, held_out_cells = trained
    ranks = reverse_perturbation(held_out_cells, pm, groupby="condition", top_k=3, n_controls=32)
    assert list(ranks.columns) == ["query", "rank", "perturbation", "score", "source"]
    assert set(ranks["source"]) == {"seen"}  # every candidate was trained on
    truth = {q: pm.canonical(q) for q in ranks["query"].unique() if q != "ctrl"}
    assert len(truth) == 5
    assert topk_accuracy(ranks, truth, ks=(1,))["top1"] == 1.0
    assert ranks.groupby("query")["score"].apply(lambda s: s.is_monotonic_decreasing).all()


def test_save_load_round_trip_and_unknown_target(trained, tmp_path):
    pm, _ = trained
    pm.save(tmp_path / "m")
    again = PerturbationModel.load(tmp_path / "m")
    a = predict_perturbation(pm, ["G0+G1"], n_controls=16).X
    b = predict_perturbation(tmp_path / "m", ["G1+G0"], n_controls=16).X
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert again.meta.genes == pm.meta.genes
    with pytest.raises(InputError, match="not in the model's vocabulary"):
        predict_perturbation(again, ["NOTAGENE"])
    with pytest.raises(InputError, match="'g0' is spelled 'G0' there"):  # a target's case is named, not guessed
        predict_perturbation(again, ["g0"])


def test_panel_genes_spelled_in_another_case_reuse_the_pretrained_tokens():
    from scmamba2.tasks.perturb import _vocab

    genes = [f"G{j}" for j in range(N_GENES)]
    base = ScMamba2(ModelConfig(vocab_size=4 + N_GENES, **SMALL), vocab=GeneVocab(genes))
    panel = ["g0", *genes[1:], "NEW1"]  # g0: the pretrained G0; NEW1: a gene the base never saw
    vocab = _vocab(panel, ["G1"], base)
    assert vocab.genes == [*genes, "NEW1"]
    np.testing.assert_array_equal(vocab.lookup(panel), [4 + j for j in range(N_GENES)] + [4 + N_GENES])


@pytest.mark.parametrize("name", ["perturb_head.pt", "perturb_controls.npz"])
def test_a_damaged_model_file_is_one_checkpoint_error(trained, tmp_path, name):
    import os

    pm, _ = trained
    out = pm.save(tmp_path / "m")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]  # the writer left no temporary file
    assert oct(os.stat(out / name).st_mode & 0o777) == oct(0o666 & ~_umask())
    data = (out / name).read_bytes()
    (out / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged perturbation model"):
        PerturbationModel.load(out)


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_held_out_perturbations_never_reach_training(monkeypatch):
    import scmamba2.tasks.perturb_train as tp

    seen = {}

    class Spy(tp.PairDataset):
        def __init__(self, X, pert_index, tokens, *a, **kw):
            seen["n"], seen["tokens"] = len(X), tokens
            super().__init__(X, pert_index, tokens, *a, **kw)

    monkeypatch.setattr(tp, "PairDataset", Spy)
    data = _synthetic(n_per=8)
    pm = train_perturbation(data, perturbation_key="condition", holdout=["G1", "XOUT"], model_config=SMALL,
                            train_config=TrainConfig(max_steps=2, batch_size=8, warmup_steps=1, progress_bar=False))
    # G1 is held out, and G0+G1 follows it (G1 must never carry a flag in training).
    assert set(pm.meta.train_perturbations) == {"G0", "G2"}
    assert pm.meta.split["G1"] == pm.meta.split["G0+G1"] == "test"
    assert seen["n"] == 8 * 3  # ctrl + two training perturbations
    g1, xout = pm.meta.genes.index("G1"), pm.model.vocab["XOUT"]
    assert not any(g1 in pos.tolist() or xout in ids.tolist() for pos, ids in seen["tokens"])
    # XOUT's token was never trained: it enters as the generic (flagged <mask>) perturbation.
    mask = pm.model.vocab.mask_id
    assert pm.meta.untrained_genes == ["XOUT"] and pm.tokens("XOUT")[1].tolist() == [mask]
    pos, ids, _ = pm.tokens("G1", generic_unseen=True)
    assert len(pos) == 0 and ids.tolist() == [mask] and pm.tokens("G1")[0].tolist() == [g1]


def test_condition_kind_with_matched_controls():
    rng = np.random.default_rng(1)
    X = rng.poisson(3.0, (80, 12)).astype(np.float32)
    cond = np.repeat(["ctrl", "stim"], 40)
    ctype = np.tile(["a", "b"], 40)
    X[(cond == "stim"), :4] += 20
    obs = pd.DataFrame({"condition": cond, "cell_type": ctype}, index=[f"c{i}" for i in range(80)])
    data = ad.AnnData(X=X, obs=obs,
                      var=pd.DataFrame(index=[f"g{j}" for j in range(12)]))
    pm = train_perturbation(data, perturbation_key="condition", kind="condition", match_key="cell_type",
                            model_config=SMALL, train_config=TRAIN)
    pred = predict_perturbation(pm, ["ctrl", "stim"], control_group="a")
    assert pred.X[1, :4].mean() - pred.X[0, :4].mean() > 0.5
    with pytest.raises(InputError, match="unknown to this model"):
        predict_perturbation(pm, ["drugX"])


def test_top_de_genes_and_metrics():
    rng = np.random.default_rng(0)
    ctrl = rng.random((50, 30))
    pert = ctrl + 0.0
    pert[:, :3] += 2.0
    de = top_de_genes(pert, ctrl, n=5)
    assert set(range(3)) <= set(de.tolist())
    m = perturbation_metrics(pert.mean(0), pert.mean(0), ctrl.mean(0), de)
    assert m["pearson_delta_de20"] == pytest.approx(1.0) and m["mse"] == 0.0


def test_cli_train_predict_reverse(tmp_path):
    from typer.testing import CliRunner

    from scmamba2.cli import app

    data = _synthetic(n_per=8)
    data.write_h5ad(tmp_path / "d.h5ad")
    runner = CliRunner()
    r = runner.invoke(app, ["--quiet", "perturb", "train", str(tmp_path / "d.h5ad"), "--perturbation-key", "condition",
                            "--control", "ctrl", "--out", str(tmp_path / "m"), "--holdout", "G2", "--max-steps", "3"])
    assert r.exit_code == 0, r.output
    assert "learned correction" in r.output
    r = runner.invoke(app, ["perturb", "predict", "--model", str(tmp_path / "m"), "--perturbations", "G2,G1+G0",
                            "--out", str(tmp_path / "p.h5ad")])
    assert r.exit_code == 0, r.output
    pred = ad.read_h5ad(tmp_path / "p.h5ad")
    assert pred.obs["perturbation"].tolist() == ["G2", "G0+G1"] and pred.n_vars == N_GENES
    src = pred.obs["source"].tolist()  # G2 held out (baseline, + correction if kept); G0+G1 trained
    assert src[0] in ("baseline", "baseline+correction") and src[1] == "seen"
    r = runner.invoke(app, ["perturb", "predict", "--model", str(tmp_path / "m"), "--perturbations", "G2",
                            "--baseline-only", "--out", str(tmp_path / "b.h5ad")])
    assert r.exit_code == 0 and ad.read_h5ad(tmp_path / "b.h5ad").obs["source"].tolist() == ["baseline"]
    again = ["perturb", "predict", "--model", str(tmp_path / "m"), "--perturbations", "G1", "--out", str(tmp_path / "b.h5ad")]
    r = runner.invoke(app, again)  # an existing output is kept without --overwrite
    assert r.exit_code == 1 and "--overwrite" in r.output
    assert ad.read_h5ad(tmp_path / "b.h5ad").obs["perturbation"].tolist() == ["G2"]
    r = runner.invoke(app, [*again, "--overwrite"])
    assert r.exit_code == 0 and ad.read_h5ad(tmp_path / "b.h5ad").obs["perturbation"].tolist() == ["G1"]
    r = runner.invoke(app, ["perturb", "reverse", "--model", str(tmp_path / "m"), "--query", str(tmp_path / "d.h5ad"),
                            "--groupby", "condition", "--top-k", "2", "--out", str(tmp_path / "r.csv")])
    assert r.exit_code == 0, r.output
    ranks = pd.read_csv(tmp_path / "r.csv")
    assert list(ranks.columns) == ["query", "rank", "perturbation", "score", "source"] and len(ranks) == 2 * len(EFFECTS)
    r = runner.invoke(app, ["perturb", "reverse", "--model", str(tmp_path / "m"), "--query", str(tmp_path / "d.h5ad"),
                            "--groupby", "condition", "--top-k", "10", "--out", str(tmp_path / "all.csv")])
    assert r.exit_code == 0, r.output
    by_name = pd.read_csv(tmp_path / "all.csv").drop_duplicates("perturbation").set_index("perturbation")["source"]
    assert by_name["G2"].startswith("baseline") and by_name["G1"] == "seen"  # G2 was held out of training
    assert set(ranks["perturbation"]) <= {"G0", "G1", "XOUT", "G2", "G0+G1"}  # G2 held out of training, ranked too
    r = runner.invoke(app, ["perturb", "predict", "--model", str(tmp_path / "m"), "--perturbations", "NOPE",
                            "--out", str(tmp_path / "x.h5ad")])
    assert r.exit_code == 1 and "vocabulary" in r.output


def _lineage_data(seed=0, n=40):
    """Six cell types (marker genes 0-5) in two lineages (marker gene 6 or 7); stimulation raises genes 8-11 in lineage A and
    genes 12-15 in lineage B, so the mean shift over cell types is wrong for every one of them."""
    rng = np.random.default_rng(seed)
    rows, cond, ctype = [], [], []
    for t in range(6):
        lineage_a = t < 3
        for c in ("ctrl", "stim"):
            rate = np.full((n, 16), 2.0)
            rate[:, t] = 10.0
            rate[:, 6 if lineage_a else 7] = 12.0
            if c == "stim":
                rate[:, 8:12 if lineage_a else 16] = 14.0 if lineage_a else 2.0
                if not lineage_a:
                    rate[:, 12:16] = 14.0
            rows.append(rng.poisson(rate))
            cond += [c] * n
            ctype += [f"t{t}"] * n
    X = np.vstack(rows).astype(np.float32)
    obs = pd.DataFrame({"condition": cond, "cell_type": ctype}, index=[f"c{i}" for i in range(len(X))])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(16)]))


def test_correction_learns_what_the_mean_shift_misses_for_a_new_cell_type():
    data = _lineage_data()
    held = (data.obs["cell_type"] == "t0").to_numpy()
    train = data[~(held & (data.obs["condition"] == "stim").to_numpy())].copy()
    pm = train_perturbation(train, perturbation_key="condition", kind="condition", match_key="cell_type",
                            model_config=SMALL, val_fraction=0.25,
                            train_config=TrainConfig(max_steps=300, batch_size=32, lr=3e-3, warmup_steps=10,
                                                     val_every_n_steps=50, progress_bar=False, seed=0))
    assert pm.meta.correction["accepted"], pm.meta.correction
    ctrl = data[held & (data.obs["condition"] == "ctrl").to_numpy()]
    X, _, _ = panel_matrix(data[held & (data.obs["condition"] == "stim").to_numpy()])
    truth = X.mean(0)
    ours = predict_perturbation(pm, ["stim"], controls=ctrl).X[0]
    base = predict_perturbation(pm, ["stim"], controls=ctrl, correction=False).X[0]
    err = lambda p: float(np.abs(p[8:16] - truth[8:16]).mean())  # noqa: E731
    assert err(ours) < 0.7 * err(base)


def test_targets_that_are_no_measured_gene_are_warned_with_the_column_to_use(caplog):
    """Symbols as targets, Ensembl ids as var_names: a warning that names the var column of symbols."""
    from scmamba2.tasks.perturb_train import _check_targets_measured

    data = _synthetic(n_per=2)
    data.var["symbol"] = list(data.var_names)
    data.var_names = [f"ENSG{j:011d}" for j in range(N_GENES)]
    targets = ["G0", "G1", "G2", "XOUT"]
    with caplog.at_level("WARNING", logger="scmamba2"):
        _check_targets_measured(data, targets, layer=None, use_raw=False, gene_column=None)
    assert "only 0 of the 4 perturbation targets" in caplog.text
    assert "var column 'symbol' holds 3 of them: pass --gene-column symbol" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="scmamba2"):
        _check_targets_measured(data, targets, layer=None, use_raw=False, gene_column="symbol")  # 3 of 4: fine
    assert caplog.text == ""
    data.var["symbol"] = [f"S{j}" for j in range(N_GENES)]  # symbols, none a target (e.g. a subset of genes)
    with caplog.at_level("WARNING", logger="scmamba2"):
        _check_targets_measured(data, targets, layer=None, use_raw=False, gene_column=None)
    assert "The targets are gene symbols, the genes are not; var column 'symbol' holds gene symbols" in caplog.text


def test_log_normalised_x_with_a_counts_layer_gets_validates_hint(caplog):
    from scmamba2.data.preprocess import normalize_log1p

    data = _synthetic(n_per=2)
    data.layers["counts"] = data.X.copy()
    data.X = normalize_log1p(data.X, 1e4)
    data.var["symbol"] = list(data.var_names)
    for column in (None, "symbol"):  # the layers are kept when the genes are named by a column
        caplog.clear()
        with caplog.at_level("INFO", logger="scmamba2"):
            panel_matrix(data, gene_column=column)
        assert "layer 'counts' holds raw counts if you prefer them (--layer counts" in caplog.text, column
    caplog.clear()
    with caplog.at_level("INFO", logger="scmamba2"):
        panel_matrix(data, layer="counts")
    assert "holds raw counts" not in caplog.text
