"""Perturbation benchmark: forward prediction of held-out perturbations and reverse perturbation, with the
simple baselines in the same run (training mean of perturbed cells, control mean, additive single effects,
a linear model in the style of Ahlmann-Eltze et al. 2025).

Data (the local data folder): ``papalexi_eccite.h5ad`` (CRISPR knock-outs, confident cells, whole targets held
out in folds), ``kang_muscat_ctrl_stim.h5ad`` (IFN-beta: predict a held-out cell type's stimulated profile;
one Kang file only, so no cross-file leakage) and ``norman_subset_gears.h5ad`` (GEARS format: loader and
combinations end to end; 50 cells, a plumbing check, not a measurement).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .result import BenchResult

log = logging.getLogger(__name__)

DATASETS = ("papalexi_eccite", "kang_muscat_ctrl_stim", "norman_subset_gears")
METRICS = ("pearson_delta_de20", "pearson_delta", "pearson", "mse")
STRONG_RATIO = 2.0  # strong effect: effect >= 2 x the 95th percentile of the non-targeting null


def _default_data_dir() -> Path:
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def run(data_dir: str | Path | None = None, out_dir: str | Path = "benchmarks/results", seed: int = 0,
        quick: bool = False) -> BenchResult:
    """Run the three parts; returns the :class:`BenchResult` (also written by ``benchmarks/perturb.py``)."""
    import torch

    from .._malloc import tune_cpu_allocator

    tune_cpu_allocator()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine two threads contend and ran many times slower
    data = Path(data_dir) if data_dir is not None else _default_data_dir()
    res = BenchResult(task="perturb")
    settings = _settings(quick)
    res.meta.update({"seed": seed, "quick": quick, "torch_threads": 1, **settings})
    cpu0 = time.process_time()
    try:
        _papalexi(res, data / "papalexi_eccite.h5ad", seed, settings)
        _kang(res, data / "kang_muscat_ctrl_stim.h5ad", seed, settings)
        _norman(res, data / "norman_subset_gears.h5ad", seed, settings)
    finally:
        torch.set_num_threads(threads)
    res.meta["cpu_minutes"] = round((time.process_time() - cpu0) / 60, 2)
    return res


def _settings(quick: bool) -> dict:
    return {
        "papalexi_folds": 1 if quick else 2,
        "papalexi_steps": 80 if quick else 500,
        "kang_steps": 60 if quick else 300,
        "kang_genes": 300 if quick else 500,
        "norman_steps": 30,
        "batch_size": 32,
        "lr": 2e-3,
        "n_controls": 64 if quick else 128,
        "model": {"d_model": 64, "n_layers": 2, "headdim": 16, "d_state": 32, "chunk_size": 32},
    }


def _train_config(steps: int, s: dict, seed: int):
    from ..train.config import TrainConfig

    return TrainConfig(max_steps=steps, batch_size=s["batch_size"], lr=s["lr"], warmup_steps=min(50, steps // 5),
                       progress_bar=False, seed=seed)


# ------------------------------------------------------------------------------------------------ papalexi
def _papalexi(res: BenchResult, path: Path, seed: int, s: dict) -> None:
    import anndata as ad

    from ..eval.perturb_baselines import LinearPerturbation
    from ..eval.perturb_metrics import effect_size, perturbation_metrics, top_de_genes, topk_accuracy
    from ..tasks.perturb import panel_matrix, predict_perturbation, reverse_perturbation, train_perturbation

    if not path.is_file():
        res.notes.append(f"papalexi: {path.name} not found, skipped")
        return
    with res.step("papalexi: load, normalise, effect sizes"):
        adata = ad.read_h5ad(path)
        adata = adata[adata.obs["confident"].astype(str) == "True"].copy()
        X, genes, _ = panel_matrix(adata)
        pert = adata.obs["perturbation"].astype(str).to_numpy()
        control = "non-targeting"
        targets = sorted(set(pert) - {control})
        ctrl_X = X[pert == control]
        ctrl_mean = ctrl_X.mean(0)
        rng = np.random.default_rng(seed)
        strength = {}
        for t in targets:
            eff, null = effect_size(X[pert == t], ctrl_X, rng)
            strength[t] = (eff, null, "strong" if eff >= STRONG_RATIO * null else "weak")
        # A seeded 20% of each target's cells never train: queries for reverse on seen perturbations.
        test_cell = np.zeros(len(pert), dtype=bool)
        for t in targets:
            rows = np.flatnonzero(pert == t)
            test_cell[rng.choice(rows, max(1, len(rows) // 5), replace=False)] = True
        # Folds stratified by effect: each holds out its share of the strong targets (dealt round-robin).
        n_folds = max(2, s["papalexi_folds"])
        order = [t for kind in ("strong", "weak")
                 for t in rng.permutation([t for t in targets if strength[t][2] == kind])]
        folds = [np.array(sorted(order[k::n_folds])) for k in range(n_folds)][: s["papalexi_folds"]]

    forward, reverse = [], []
    candidates = list(targets)
    for f, held in enumerate(folds):
        held = sorted(held.tolist())
        train_t = [t for t in targets if t not in held]
        train_rows = ~test_cell & np.isin(pert, [control] + train_t)
        with res.step(f"papalexi fold {f}: train scmamba2 ({len(train_t)} targets, {int(train_rows.sum())} cells)"):
            pm = train_perturbation(adata[train_rows], perturbation_key="perturbation", control=control,
                                    extra_targets=held, model_config=s["model"],
                                    train_config=_train_config(s["papalexi_steps"], s, seed))
        with res.step(f"papalexi fold {f}: predict {len(candidates)} perturbations"):
            pred = predict_perturbation(pm, [control] + candidates, n_controls=s["n_controls"], seed=seed)
            ours = dict(zip([control] + candidates, np.asarray(pred.X)))
            generic = predict_perturbation(pm, held, n_controls=s["n_controls"], seed=seed, generic_unseen=True)
            ours_generic = dict(zip(held, np.asarray(generic.X)))
        with res.step(f"papalexi fold {f}: baselines"):
            base_train = X[train_rows & (pert != control)].mean(0)
            means = {t: X[train_rows & (pert == t)].mean(0) for t in train_t}
            lin = LinearPerturbation(n_components=10, ridge=0.1).fit(np.stack([means[t] for t in train_t]),
                                                                     [[t] for t in train_t], genes)
            methods = {"scmamba2": ours, "scmamba2_generic": ours_generic,
                       "train_mean": dict.fromkeys([control] + candidates, base_train),
                       "control_mean": dict.fromkeys([control] + candidates, ctrl_mean),
                       "linear": {t: lin.predict([t]) for t in targets} | {control: ctrl_mean}}
        for t in held:
            Xt = X[pert == t]
            de = top_de_genes(Xt, ctrl_X, 20)
            eff, null, kind = strength[t]
            for name, preds in methods.items():
                m = perturbation_metrics(preds[t], Xt.mean(0), ctrl_mean, de)
                forward.append({"fold": f, "target": t, "effect": kind, "effect_ratio": eff / null,
                                "in_panel": t in genes, "n_cells": len(Xt), "method": name, **m})
        # Reverse: held-out targets (all their cells) and seen targets (their never-trained 20% of cells).
        q_rows = np.isin(pert, held) | (test_cell & np.isin(pert, train_t))
        query = ad.AnnData(X=adata.X[q_rows], obs=pd.DataFrame({"target": pert[q_rows]}),
                           var=pd.DataFrame(index=genes))
        seen_centroid = {t: means.get(t, base_train) for t in targets} | {control: ctrl_mean}
        for name, preds in (("scmamba2", ours), ("linear", methods["linear"]), ("train_centroids", seen_centroid)):
            P = ad.AnnData(X=np.stack([preds[c] for c in candidates]),
                           obs=pd.DataFrame({"perturbation": candidates}, index=candidates))
            ranks = reverse_perturbation(query, pm, groupby="target", top_k=3, predictions=P)
            for group, qs in (("held-out targets", held), ("seen targets, held-out cells", train_t)):
                acc = topk_accuracy(ranks, {q: q for q in qs}, ks=(1, 3))
                strong = [q for q in qs if strength[q][2] == "strong"]
                acc_s = topk_accuracy(ranks, {q: q for q in strong}, ks=(1,)) if strong else {"top1": float("nan")}
                reverse.append({"fold": f, "queries": group, "method": name, "n_queries": len(qs),
                                "top1": acc["top1"], "top3": acc["top3"], "top1_strong": acc_s["top1"],
                                "n_strong": len(strong), "chance_top1": 1 / len(candidates)})
    fw = pd.DataFrame(forward)
    summary = (fw.groupby(["effect", "method"])[list(METRICS)].mean().reset_index()
               .merge(fw.groupby(["effect", "method"]).size().rename("n_targets").reset_index()))
    res.tables["Papalexi ECCITE-seq: held-out knock-outs, mean over targets"] = summary
    wide = fw.pivot_table(index=["target", "effect", "effect_ratio", "in_panel", "n_cells"], columns="method",
                          values="pearson_delta_de20").reset_index()
    res.tables["Papalexi: Pearson-delta on top-20 DE genes per held-out target"] = wide.sort_values("effect_ratio",
                                                                                                   ascending=False)
    rv = pd.DataFrame(reverse).groupby(["queries", "method"]).agg(
        n_queries=("n_queries", "sum"), top1=("top1", "mean"), top3=("top3", "mean"),
        top1_strong=("top1_strong", "mean"), chance_top1=("chance_top1", "first")).reset_index()
    res.tables["Papalexi: reverse perturbation (queries = mean of cells per true target)"] = rv
    n_strong = sum(v[2] == "strong" for v in strength.values())
    res.notes.append(f"papalexi: {len(targets)} targets, {n_strong} strong (effect >= {STRONG_RATIO} x the 95th "
                     "percentile of the distance between equally sized random halves of non-targeting cells), "
                     f"{len(folds)} fold(s) of held-out targets; {adata.n_obs} confident cells, {len(genes)} genes.")
    _goal_note(res, fw, "papalexi")


def _goal_note(res: BenchResult, fw: pd.DataFrame, name: str) -> None:
    for kind in ("strong", "weak"):
        sub = fw[fw["effect"] == kind].groupby("method")["pearson_delta_de20"].mean()
        others = sub[[m for m in sub.index if not m.startswith("scmamba2")]].dropna()
        if others.empty:
            continue
        best = others.idxmax()
        for ours in (m for m in sub.index if m.startswith("scmamba2")):
            gap = sub[ours] - others.max()
            res.notes.append(f"{name} {kind}-effect targets: {ours} Pearson-delta top-20 DE {sub[ours]:.3f}, "
                             f"{'above' if gap > 0 else 'BELOW'} the best baseline ({best}, {others.max():.3f}) "
                             f"by {abs(gap):.3f}.")


# ---------------------------------------------------------------------------------------------------- kang
def _kang(res: BenchResult, path: Path, seed: int, s: dict, held_type: str = "CD14+ Monocytes") -> None:
    import anndata as ad

    from ..eval.perturb_metrics import perturbation_metrics, top_de_genes
    from ..tasks.perturb import panel_matrix, predict_perturbation, train_perturbation

    if not path.is_file():
        res.notes.append(f"kang: {path.name} not found, skipped")
        return
    adata = ad.read_h5ad(path)
    cond, ctype = adata.obs["condition"].astype(str).to_numpy(), adata.obs["cell_type"].astype(str).to_numpy()
    train = ~((ctype == held_type) & (cond == "stim"))
    with res.step(f"kang: train scmamba2 (stim of {held_type} held out)"):
        pm = train_perturbation(adata[train], perturbation_key="condition", control="ctrl", kind="condition",
                                match_key="cell_type", n_top_genes=s["kang_genes"], model_config=s["model"],
                                train_config=_train_config(s["kang_steps"], s, seed))
    genes = pm.meta.genes
    X, _, _ = panel_matrix(adata, genes)
    held_ctrl = (ctype == held_type) & (cond == "ctrl")
    with res.step("kang: predict"):
        ours = np.asarray(predict_perturbation(pm, ["stim"], controls=adata[held_ctrl], n_controls=10_000).X[0])
    ctrl_mean, true = X[held_ctrl].mean(0), X[(ctype == held_type) & (cond == "stim")]
    other = [t for t in np.unique(ctype) if t != held_type]
    shift = np.mean([X[(ctype == t) & (cond == "stim")].mean(0) - X[(ctype == t) & (cond == "ctrl")].mean(0)
                     for t in other], axis=0)
    methods = {"scmamba2": ours, "train_mean": X[train & (cond == "stim")].mean(0), "control_mean": ctrl_mean,
               "control_plus_mean_shift": ctrl_mean + shift}
    de = top_de_genes(true, X[held_ctrl], 20)
    rows = [{"held_out": held_type, "method": k, **perturbation_metrics(v, true.mean(0), ctrl_mean, de)}
            for k, v in methods.items()]
    res.tables["Kang IFN-beta: stimulated profile of a held-out cell type"] = pd.DataFrame(rows)
    res.notes.append(f"kang: kang_muscat_ctrl_stim only (one Kang file: no barcode overlap to remove); {held_type} "
                     f"stim cells held out, its control cells are the input; {len(genes)} HVGs of the training "
                     "cells; control_plus_mean_shift = held-out controls + the mean stim-ctrl shift of the other "
                     "cell types (scGen's simple baseline). The Ahlmann-Eltze linear model needs gene targets and "
                     "does not apply to a cytokine.")


# -------------------------------------------------------------------------------------------------- norman
def _norman(res: BenchResult, path: Path, seed: int, s: dict) -> None:
    import anndata as ad

    from ..data.perturb import parse_perturbations, split_perturbations
    from ..eval.perturb_metrics import perturbation_metrics
    from ..tasks.perturb import panel_matrix, predict_perturbation, train_perturbation

    if not path.is_file():
        res.notes.append(f"norman: {path.name} not found, skipped")
        return
    adata = ad.read_h5ad(path)
    labels = parse_perturbations(adata, "condition", "ctrl")
    split = split_perturbations(labels, test_fraction=0.3, seed=seed)
    held = split.index[split["split"] == "test"].tolist()
    with res.step("norman: train scmamba2 (tiny, plumbing)"):
        pm = train_perturbation(adata, perturbation_key="condition", control="ctrl", holdout=held,
                                layer="counts", gene_column="gene_name", model_config=s["model"],
                                train_config=_train_config(s["norman_steps"], s, seed))
    X, genes, _ = panel_matrix(adata, pm.meta.genes, layer="counts", gene_column="gene_name")
    ctrl_mean = X[labels.is_control].mean(0)
    pred = predict_perturbation(pm, held, n_controls=s["n_controls"])
    single = {p: X[labels.names == p].mean(0) for p in pm.meta.train_perturbations if len(labels.targets(p)) == 1}
    rows = []
    for i, p in enumerate(held):
        true = X[labels.names == p].mean(0)
        add = ctrl_mean + sum((single[g] - ctrl_mean) for g in labels.targets(p) if g in single)
        for name, v in (("scmamba2", pred.X[i]), ("additive", add), ("control_mean", ctrl_mean)):
            m = perturbation_metrics(v, true, ctrl_mean)
            rows.append({"perturbation": p, "category": split.loc[p, "category"],
                         "n_cells": int((labels.names == p).sum()), "method": name, "pearson_delta": m["pearson_delta"],
                         "mse": m["mse"]})
    tab = pd.DataFrame(rows).groupby(["category", "method"]).agg(
        n=("perturbation", "nunique"), pearson_delta=("pearson_delta", "mean"), mse=("mse", "mean")).reset_index()
    res.tables["Norman GEARS subset: end to end (50 cells, 1-2 cells per perturbation: plumbing, "
               "not a measurement)"] = tab
    in_panel = sum(g in genes for p in labels.perturbations for g in labels.targets(p))
    n_combos = sum("+" in p for p in labels.perturbations)
    res.notes.append(f"norman: {len(labels.perturbations)} perturbations ({n_combos} "
                     f"combinations) parsed from GEARS 'condition'; {len(held)} held out by category "
                     f"{split.loc[held, 'category'].value_counts().to_dict()}; {in_panel} target-gene occurrences "
                     "fall in the 50-gene panel, every other target enters as its own vocabulary token.")
