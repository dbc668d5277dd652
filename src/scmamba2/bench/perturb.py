"""Perturbation benchmark: forward prediction of held-out perturbations and reverse perturbation, with every
simple baseline in the same run (training mean, control mean, additive single effects, the linear ridge-on-PCA
model of Ahlmann-Eltze et al. 2025) and the model as baseline only and with its learned correction.

Data (the local data folder): ``papalexi_eccite.h5ad`` (CRISPR knock-outs, confident cells, whole targets held
out in folds stratified by effect strength), ``kang_muscat_ctrl_stim.h5ad`` (IFN-beta: predict a held-out cell
type's stimulated profile) and ``norman_subset_gears.h5ad`` (GEARS format, combinations; 50 cells: a plumbing
check, too small to conclude anything). Kang and Norman live in :mod:`.perturb_other`.

Metrics (:mod:`scmamba2.eval.perturb_metrics`): Pearson-delta on the top-20 DE genes, L2 of the mean profile
over the 1,000 most expressed genes, DEG-weighted MSE (Mejia et al. 2025 style), per target and overall.
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
METRICS = ("pearson_delta_de20", "wmse", "l2_top1000", "pearson_delta", "mse")
STRONG_RATIO = 2.0  # strong effect: effect >= 2 x the 95th percentile of the non-targeting null
VARIANTS = {"scmamba2": "pca", "scmamba2_own_emb": "none"}  # method name -> gene_knowledge of the correction


def _default_data_dir() -> Path:
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def run(data_dir: str | Path | None = None, out_dir: str | Path = "benchmarks/results", seed: int = 0,
        quick: bool = False) -> BenchResult:
    """Run the three parts; returns the :class:`BenchResult` (also written by ``benchmarks/perturb.py``)."""
    import torch

    from .._malloc import tune_cpu_allocator
    from .perturb_other import figure, kang, norman

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
        kang(res, data / "kang_muscat_ctrl_stim.h5ad", seed, settings)
        norman(res, data / "norman_subset_gears.h5ad", seed, settings)
    finally:
        torch.set_num_threads(threads)
    png = figure(res, Path(out_dir) / f"perturb{'_quick' if quick else ''}.png")
    if png is not None:
        res.figures["Pearson-delta on the top-20 DE genes (left, higher is better) and DEG-weighted MSE (right, "
                    "lower is better) of held-out perturbations, every method"] = png
    res.meta["cpu_minutes"] = round((time.process_time() - cpu0) / 60, 2)
    return res


def _settings(quick: bool) -> dict:
    return {
        "papalexi_folds": 1 if quick else 2,
        "papalexi_steps": 60 if quick else 80,
        "kang_steps": 60 if quick else 120,
        "kang_genes": 300 if quick else 500,
        "norman_steps": 30,
        "batch_size": 32,
        "lr": 2e-3,
        "val_every": 40,
        "val_fraction": 0.25,
        "n_controls": 64,
        "model": {"d_model": 64, "n_layers": 2, "headdim": 16, "d_state": 32, "chunk_size": 32},
    }


def train_config(steps: int, s: dict, seed: int):
    from ..train.config import TrainConfig

    return TrainConfig(max_steps=steps, batch_size=s["batch_size"], lr=s["lr"], warmup_steps=min(50, steps // 5),
                       progress_bar=False, seed=seed, val_every_n_steps=s["val_every"])


def correction_row(dataset: str, fold, method: str, pm) -> dict:
    """One row of the correction record table (accepted or not, validation figures)."""
    rec = pm.meta.correction
    base, best = rec.get("val_baseline", {}), rec.get("val_best", {})
    return {"dataset": dataset, "fold": fold, "method": method, "accepted": rec.get("accepted", False),
            "scale": rec.get("scale", 0.0), "best_step": rec.get("best_step", 0), "steps": rec.get("steps", 0),
            "val_units": len(pm.meta.validation), "val_wmse_baseline": base.get("wmse", np.nan),
            "val_wmse_kept": best.get("wmse", np.nan), "val_pd20_baseline": base.get("pearson_delta_de20", np.nan),
            "val_pd20_kept": best.get("pearson_delta_de20", np.nan)}


# ------------------------------------------------------------------------------------------------ papalexi
def _papalexi(res: BenchResult, path: Path, seed: int, s: dict) -> None:
    import anndata as ad

    from ..eval.perturb_baselines import LinearPerturbation
    from ..eval.perturb_metrics import (deg_weights, effect_size, perturbation_metrics, top_de_genes,
                                        top_expressed, topk_accuracy)
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
        expressed = top_expressed(X, 1000)
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

    forward, reverse, records = [], [], []
    candidates = list(targets)
    for f, held in enumerate(folds):
        held = sorted(held.tolist())
        train_t = [t for t in targets if t not in held]
        train_rows = ~test_cell & np.isin(pert, [control] + train_t)
        preds = {}
        for method, knowledge in VARIANTS.items():
            with res.step(f"papalexi fold {f}: train {method} ({len(train_t)} targets, {int(train_rows.sum())} "
                          "cells)"):
                pm = train_perturbation(adata[train_rows], perturbation_key="perturbation", control=control,
                                        extra_targets=held, model_config=s["model"], gene_knowledge=knowledge,
                                        val_fraction=s["val_fraction"],
                                        train_config=train_config(s["papalexi_steps"], s, seed))
            records.append(correction_row("papalexi", f, method, pm))
            with res.step(f"papalexi fold {f}: predict with {method}"):
                p = predict_perturbation(pm, [control] + candidates, n_controls=s["n_controls"], seed=seed)
                preds[method] = dict(zip([control] + candidates, np.asarray(p.X, np.float64)))
        only = predict_perturbation(pm, [control] + candidates, correction=False)
        preds["scmamba2_baseline_only"] = dict(zip([control] + candidates, np.asarray(only.X, np.float64)))
        with res.step(f"papalexi fold {f}: baselines"):
            ctrl_train = X[train_rows & (pert == control)].mean(0)
            means = {t: X[train_rows & (pert == t)].mean(0) for t in train_t}
            train_mean = np.mean([means[t] for t in train_t], axis=0)  # each training perturbation once
            lin = LinearPerturbation(n_components=10, ridge=0.1).fit(
                np.stack([means[t] - ctrl_train for t in train_t]), [[t] for t in train_t], genes)
            preds |= {"train_mean": dict.fromkeys([control] + candidates, train_mean),
                      "control_mean": dict.fromkeys([control] + candidates, ctrl_mean),
                      "linear": {t: ctrl_train + lin.predict([t]) for t in targets} | {control: ctrl_mean}}
        for t in held:
            Xt = X[pert == t]
            de, w = top_de_genes(Xt, ctrl_X, 20), deg_weights(Xt, ctrl_X)
            eff, null, kind = strength[t]
            for name, pr in preds.items():
                m = perturbation_metrics(pr[t], Xt.mean(0), ctrl_mean, de, weights=w, expressed_idx=expressed)
                forward.append({"fold": f, "target": t, "effect": kind, "effect_ratio": eff / null,
                                "in_panel": t in genes, "n_cells": len(Xt), "method": name, **m})
        # Reverse: held-out targets (all their cells) and seen targets (their never-trained 20% of cells).
        q_rows = np.isin(pert, held) | (test_cell & np.isin(pert, train_t))
        query = ad.AnnData(X=adata.X[q_rows], obs=pd.DataFrame({"target": pert[q_rows]}),
                           var=pd.DataFrame(index=genes))
        centroids = {t: means.get(t, train_mean) for t in targets} | {control: ctrl_mean}
        for name, pr in (("scmamba2", preds["scmamba2"]), ("scmamba2_own_emb", preds["scmamba2_own_emb"]),
                         ("linear", preds["linear"]), ("train_centroids", centroids)):
            P = ad.AnnData(X=np.stack([pr[c] for c in candidates]),
                           obs=pd.DataFrame({"perturbation": candidates}, index=candidates))
            ranks = reverse_perturbation(query, pm, groupby="target", top_k=5, predictions=P)
            for group, qs in (("held-out targets", held), ("seen targets, held-out cells", train_t)):
                acc = topk_accuracy(ranks, {q: q for q in qs}, ks=(1, 5))
                reverse.append({"fold": f, "queries": group, "method": name, "n_queries": len(qs),
                                "top1": acc["top1"], "top5": acc["top5"], "chance_top1": 1 / len(candidates)})
    fw = pd.DataFrame(forward)
    res.tables["Papalexi ECCITE-seq: held-out knock-outs, mean over targets"] = _summary(fw)
    wide = fw.pivot_table(index=["target", "effect", "effect_ratio", "in_panel", "n_cells"], columns="method",
                          values=["pearson_delta_de20", "wmse"]).reset_index()
    wide.columns = [c if isinstance(c, str) else (c[0] if not c[1] else f"{c[1]} {'pd20' if c[0].startswith('p') else 'wmse'}")
                    for c in wide.columns]
    res.tables["Papalexi: per held-out target, Pearson-delta top-20 DE (pd20) and DEG-weighted MSE (wmse)"] = \
        wide.sort_values("effect_ratio", ascending=False)
    rv = pd.DataFrame(reverse).groupby(["queries", "method"]).agg(
        n_queries=("n_queries", "sum"), top1=("top1", "mean"), top5=("top5", "mean"),
        chance_top1=("chance_top1", "first")).reset_index()
    res.tables["Papalexi: reverse perturbation (queries = mean of cells per true target, 25 candidates)"] = rv
    res.tables["Learned correction: kept only when it beats the baseline on the validation units"] = \
        pd.DataFrame(records)
    n_strong = sum(v[2] == "strong" for v in strength.values())
    res.notes.append(f"papalexi: {len(targets)} targets, {n_strong} strong (effect >= {STRONG_RATIO} x the 95th "
                     "percentile of the distance between equally sized random halves of non-targeting cells), "
                     f"{len(folds)} fold(s) of held-out targets; {adata.n_obs} confident cells, {len(genes)} genes "
                     "(so the 1,000 most expressed genes are all of them). train_mean = the mean of the training "
                     "perturbations' mean profiles (each perturbation once), which is exactly the model's baseline "
                     "for an unseen target; linear = control + ridge (lambda 0.1) of the effect on [1, G[target]], G "
                     "= 10 PCA components of the training effects; a target outside the 299 measured genes has no "
                     "row in G and gets the intercept.")
    _goal_notes(res, fw)


def _summary(fw: pd.DataFrame) -> pd.DataFrame:
    keys = ["effect", "method"]
    out = pd.concat([fw.assign(effect="all"), fw]).groupby(keys)[list(METRICS)].mean().reset_index()
    n = pd.concat([fw.assign(effect="all"), fw]).groupby(keys).size().rename("n_targets").reset_index()
    return out.merge(n)


def _goal_notes(res: BenchResult, fw: pd.DataFrame) -> None:
    for kind in ("all", "strong", "weak"):
        sub = (fw if kind == "all" else fw[fw["effect"] == kind]).groupby("method")[["pearson_delta_de20", "wmse"]].mean()
        for ours in ("scmamba2", "scmamba2_own_emb"):
            parts = []
            for base in ("train_mean", "linear"):
                pd_ok = sub.loc[ours, "pearson_delta_de20"] >= sub.loc[base, "pearson_delta_de20"] - 1e-6
                w_ok = sub.loc[ours, "wmse"] < sub.loc[base, "wmse"] * (1 - 1e-6)
                parts.append(f"vs {base}: Pearson-delta {sub.loc[ours, 'pearson_delta_de20']:.3f} vs "
                             f"{sub.loc[base, 'pearson_delta_de20']:.3f} ({'at or above' if pd_ok else 'BELOW'}), "
                             f"wMSE {sub.loc[ours, 'wmse']:.4f} vs {sub.loc[base, 'wmse']:.4f} "
                             f"({'below' if w_ok else 'NOT below'})")
            res.notes.append(f"papalexi {kind} held-out targets, {ours}: " + "; ".join(parts) + ".")
