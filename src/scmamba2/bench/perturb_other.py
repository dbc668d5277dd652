"""The Kang (held-out cell type) and Norman (combinations) parts of the perturbation benchmark, and its figure
(see :mod:`scmamba2.bench.perturb`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.files import atomic_path
from .perturb import METRICS, correction_row, train_config
from .result import BenchResult

PAPALEXI_TABLE = "Papalexi ECCITE-seq: held-out knock-outs, mean over targets"
KANG_TABLE = "Kang IFN-beta: stimulated profile of a held-out cell type"
RECORDS = "Learned correction: kept only when it beats the baseline on the validation units"


# ---------------------------------------------------------------------------------------------------- kang
def kang(res: BenchResult, path: Path, seed: int, s: dict, held_type: str = "CD14+ Monocytes") -> None:
    import anndata as ad

    from ..eval.perturb_metrics import deg_weights, perturbation_metrics, top_de_genes, top_expressed
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
                                gene_knowledge="none", val_fraction=s["val_fraction"],
                                train_config=train_config(s["kang_steps"], s, seed))
    _add_record(res, correction_row("kang", 0, "scmamba2", pm))
    genes = pm.meta.genes
    X, _, _ = panel_matrix(adata, genes)
    held_ctrl = (ctype == held_type) & (cond == "ctrl")
    with res.step("kang: predict"):
        ours = np.asarray(predict_perturbation(pm, ["stim"], controls=adata[held_ctrl], n_controls=10_000).X[0])
        only = np.asarray(predict_perturbation(pm, ["stim"], controls=adata[held_ctrl], correction=False).X[0])
    ctrl_X, true = X[held_ctrl], X[(ctype == held_type) & (cond == "stim")]
    ctrl_mean = ctrl_X.mean(0)
    other = [t for t in np.unique(ctype) if t != held_type]
    shift = np.mean([X[(ctype == t) & (cond == "stim")].mean(0) - X[(ctype == t) & (cond == "ctrl")].mean(0)
                     for t in other], axis=0)
    methods = {"scmamba2": ours, "scmamba2_baseline_only": only, "train_mean": X[train & (cond == "stim")].mean(0),
               "control_mean": ctrl_mean, "control_plus_mean_shift": ctrl_mean + shift}
    de, w, expressed = top_de_genes(true, ctrl_X, 20), deg_weights(true, ctrl_X), top_expressed(X, 1000)
    rows = [{"held_out": held_type, "method": k,
             **perturbation_metrics(v, true.mean(0), ctrl_mean, de, weights=w, expressed_idx=expressed)}
            for k, v in methods.items()]
    tab = pd.DataFrame(rows)
    res.tables[KANG_TABLE] = tab[["held_out", "method", *METRICS, "pearson_de20"]]
    ok = tab.set_index("method")
    gap = ok.loc["scmamba2", "pearson_delta_de20"] - ok.loc["control_plus_mean_shift", "pearson_delta_de20"]
    verdict = "above" if gap > 1e-6 else "equal" if gap > -1e-6 else "BELOW"
    res.notes.append(f"kang: kang_muscat_ctrl_stim only; {held_type} stim cells held out, its control cells are "
                     f"the input; {len(genes)} HVGs of the training cells. The model's baseline for a cell type "
                     "the condition was not measured in is control + the mean stim-ctrl shift of the training cell "
                     "types (= control_plus_mean_shift, scGen's simple baseline); the correction is validated on "
                     f"{len(pm.meta.validation)} training cell type(s) whose stim cells it never trained on. "
                     f"scmamba2 Pearson-delta top-20 DE {ok.loc['scmamba2', 'pearson_delta_de20']:.3f} vs "
                     f"{ok.loc['control_plus_mean_shift', 'pearson_delta_de20']:.3f} ({verdict}), wMSE "
                     f"{ok.loc['scmamba2', 'wmse']:.4f} vs {ok.loc['control_plus_mean_shift', 'wmse']:.4f}. The linear "
                     "model needs gene targets and does not apply to a cytokine.")


# -------------------------------------------------------------------------------------------------- norman
def norman(res: BenchResult, path: Path, seed: int, s: dict) -> None:
    import anndata as ad

    from ..data.perturb import parse_perturbations, split_perturbations
    from ..eval.perturb_metrics import deg_weights, perturbation_metrics
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
                                train_config=train_config(s["norman_steps"], s, seed))
    _add_record(res, correction_row("norman", 0, "scmamba2", pm))
    X, genes, _ = panel_matrix(adata, pm.meta.genes, layer="counts", gene_column="gene_name")
    ctrl_X = X[labels.is_control]
    ctrl_mean = ctrl_X.mean(0)
    pred = predict_perturbation(pm, held, n_controls=s["n_controls"])
    train = pm.meta.train_perturbations
    single = {p: X[labels.names == p].mean(0) - ctrl_mean for p in train if len(labels.targets(p)) == 1}
    mean_eff = np.mean(list(single.values()), axis=0) if single else np.zeros(len(genes))
    rows = []
    for i, p in enumerate(held):
        Xp = X[labels.names == p]
        add = ctrl_mean + sum(single.get(g, mean_eff) for g in labels.targets(p))
        w = deg_weights(Xp, ctrl_X)
        for name, v in (("scmamba2", pred.X[i]), ("additive", add), ("train_mean", ctrl_mean + mean_eff),
                        ("control_mean", ctrl_mean)):
            m = perturbation_metrics(v, Xp.mean(0), ctrl_mean, weights=w)
            rows.append({"perturbation": p, "category": split.loc[p, "category"], "n_cells": len(Xp),
                         "method": name, "pearson_delta": m["pearson_delta"], "wmse": m["wmse"], "mse": m["mse"]})
    tab = pd.DataFrame(rows).groupby(["category", "method"]).agg(
        n=("perturbation", "nunique"), pearson_delta=("pearson_delta", "mean"), wmse=("wmse", "mean"),
        mse=("mse", "mean")).reset_index()
    res.tables["Norman GEARS subset: combinations end to end (50 cells, 1-2 cells per perturbation: too small "
               "to conclude anything)"] = tab
    n_combos = sum("+" in p for p in labels.perturbations)
    res.notes.append(f"norman: {len(labels.perturbations)} perturbations ({n_combos} combinations) parsed from GEARS "
                     f"'condition'; {len(held)} held out by category {split.loc[held, 'category'].value_counts().to_dict()}; "
                     "1-2 cells per perturbation and a 50-gene panel: the additive model and the combination path run "
                     "end to end, but no figure here measures anything (too small to conclude).")


def _add_record(res: BenchResult, row: dict) -> None:
    old = res.tables.get(RECORDS)
    res.tables[RECORDS] = pd.DataFrame([row]) if old is None else pd.concat([old, pd.DataFrame([row])],
                                                                            ignore_index=True)


# -------------------------------------------------------------------------------------------------- figure
def figure(res: BenchResult, path: Path) -> Path | None:
    """Bar charts of Pearson-delta top-20 DE and DEG-weighted MSE per method (Papalexi by effect, Kang)."""
    panels = []
    pap = res.tables.get(PAPALEXI_TABLE)
    if pap is not None:
        for kind in ("strong", "weak"):
            panels.append((f"Papalexi {kind}", pap[pap["effect"] == kind].set_index("method")))
    if KANG_TABLE in res.tables:
        panels.append(("Kang held-out cell type", res.tables[KANG_TABLE].set_index("method")))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 2.6 * len(panels)), squeeze=False)
    for r, (title, t) in enumerate(panels):
        t = t.drop(index=[m for m in ("control_mean",) if m in t.index])
        for c, metric in enumerate(("pearson_delta_de20", "wmse")):
            ax = axes[r, c]
            colors = ["tab:red" if m.startswith("scmamba2") else "tab:grey" for m in t.index]
            ax.barh(list(t.index), t[metric].to_numpy(), color=colors)
            ax.set_title(f"{title}: {metric}", fontsize=9)
            ax.tick_params(labelsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
