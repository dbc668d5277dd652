"""Batch-integration benchmark: scmamba2 against unintegrated PCA, Harmony and scVI, scored with scib-metrics.

Data (the local data folder): ``kang_muscat_8donors.h5ad`` (batch = ``donor``, labels = ``cell_type``; a seeded
subsample of the cells to fit the CPU budget) and ``ifnb1k.h5ad`` (batch = ``condition``, ctrl vs IFN-beta,
labels = ``cell_type``). The two files share cells (Kang leakage warning in the data MANIFEST), but nothing
is trained on one and tested on the other here: every method is fitted on each dataset by itself, without
labels. All methods see the same genes (highly variable genes of the raw counts).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .._threads import keep_torch_threads
from .result import BenchResult

log = logging.getLogger(__name__)

DATASETS = {  # name -> (batch key, label key)
    "kang_muscat_8donors": ("donor", "cell_type"),
    "ifnb1k": ("condition", "cell_type"),
}
METHODS = {"Unintegrated PCA": "X_pca", "Harmony": "X_harmony", "scVI": "X_scvi",
           "scmamba2 (default: bundled model + Harmony)": "X_scmamba2_harmony",
           "scmamba2 bundled model fine-tuned (--method finetune)": "X_scmamba2_finetuned",
           "scmamba2 bundled model fine-tuned, then Harmony": "X_scmamba2_finetuned_harmony",
           "scmamba2 fine-tuned from scratch (--method finetune --from-scratch)": "X_scmamba2"}


def accepts(record) -> bool:
    """Also reads the registry's public integration sets (obs 'batch' and 'cell_type')."""
    return (record.source == "remote" and "integrate" in record.tasks
            and {"batch", "cell_type"} <= set(record.obs_keys))


def _default_data_dir() -> Path:
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _settings(quick: bool) -> dict:
    return {
        "max_cells": 1500 if quick else 5000,
        "n_top_genes": 2000,
        "steps": 80 if quick else 500,
        "batch_size": 32,
        "lr": 1e-3,
        "max_len": 256,
        "model": {"d_model": 64, "n_layers": 2, "headdim": 16, "d_state": 32, "chunk_size": 32, "dropout": 0.1},
        "scvi_epochs": 10 if quick else 100,
        "scvi_n_latent": 30,
        "n_pcs": 50,
        "scib_metrics": "fast" if quick else "full",
    }


def run(data_dir: str | Path | None = None, out_dir: str | Path = "benchmarks/results", seed: int = 0,
        quick: bool = False, datasets: tuple[str, ...] | None = None) -> BenchResult:
    """Integrate each dataset with the four methods, score with scib-metrics, draw UMAP panels."""
    import torch

    from .._malloc import tune_cpu_allocator

    tune_cpu_allocator()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads contend on the shared 2-core machine and ran ~10x slower
    data = Path(data_dir) if data_dir is not None else _default_data_dir()
    out = Path(out_dir)
    s = _settings(quick)
    res = BenchResult(task="integrate")
    res.meta.update({"seed": seed, "quick": quick, "torch_threads": 1, **s})
    cpu0 = time.process_time()
    rows = []
    try:
        for name in datasets or tuple(DATASETS):
            rows.append(_dataset(res, data / f"{name}.h5ad", name, out, seed, s, quick))
    finally:
        torch.set_num_threads(threads)
    table = pd.concat(rows, ignore_index=True)
    res.tables["scIB metrics (scib-metrics Benchmarker, unscaled; total = 0.4 batch + 0.6 bio)"] = table
    res.notes.extend(_verdict(table))
    res.meta["cpu_minutes"] = round((time.process_time() - cpu0) / 60, 2)
    return res


def _dataset(res: BenchResult, path: Path, name: str, out: Path, seed: int, s: dict, quick: bool) -> pd.DataFrame:
    import scanpy as sc

    from ..data.io import read
    from ..eval.plots import umap_panels
    from ..eval.scib import scib_benchmark

    batch_key, label_key = DATASETS.get(name, ("batch", "cell_type"))  # a public set: the canonical columns
    adata = read(path)
    missing = [k for k in (batch_key, label_key) if k not in adata.obs]
    if missing:
        raise ValueError(f"{name}: obs has no {missing}; integrate reads obs[{batch_key!r}] and obs[{label_key!r}]")
    if adata.n_obs > s["max_cells"]:
        rng = np.random.default_rng(seed)
        adata = adata[np.sort(rng.choice(adata.n_obs, s["max_cells"], replace=False))].copy()
    full = adata  # every gene: what the pretrained model reads
    if adata.n_vars > s["n_top_genes"]:
        a = adata.copy()
        with keep_torch_threads():  # scanpy's numba kernels reset torch's OpenMP threads
            sc.pp.normalize_total(a, target_sum=1e4)
            sc.pp.log1p(a)
            sc.pp.highly_variable_genes(a, n_top_genes=s["n_top_genes"], flavor="seurat")
        adata = adata[:, a.var["highly_variable"].to_numpy()].copy()
    adata.layers["counts"] = adata.X.copy()
    log.info("%s: %d cells x %d genes, %d batches", name, adata.n_obs, adata.n_vars, adata.obs[batch_key].nunique())
    with res.step(f"{name}: PCA"):
        from ..eval.baselines import pca_embedding

        adata.obsm["X_pca"] = pca_embedding(adata, n_comps=s["n_pcs"], seed=seed)
    with res.step(f"{name}: Harmony"):
        adata.obsm["X_harmony"] = _harmony(adata.obsm["X_pca"], adata.obs, batch_key, seed)
    with res.step(f"{name}: scVI ({s['scvi_epochs']} epochs)"):
        adata.obsm["X_scvi"] = _scvi(adata, batch_key, seed, s)
    with res.step(f"{name}: scmamba2 fine-tuned from scratch ({s['steps']} steps)"):
        _ours(adata, batch_key, label_key, seed, s)
    with res.step(f"{name}: scmamba2 bundled model fine-tuned ({s['steps']} steps)"):
        adata.obsm["X_scmamba2_finetuned"] = _ours_bundled(full, batch_key, seed, s)
    with res.step(f"{name}: scmamba2 bundled model fine-tuned, then Harmony"):
        from ..tasks.integrate_harmony import standardise

        adata.obsm["X_scmamba2_finetuned_harmony"] = _harmony(standardise(adata.obsm["X_scmamba2_finetuned"]),
                                                              adata.obs, batch_key, seed)
    with res.step(f"{name}: scmamba2 default, bundled model + Harmony (nothing trained)"):
        from ..tasks.integrate_harmony import integrate_harmony

        e = full.copy()
        integrate_harmony(e, batch_key, seed=seed)
        adata.obsm["X_scmamba2_harmony"] = e.obsm["X_scmamba2"]
    with res.step(f"{name}: scIB metrics"):
        df = scib_benchmark(adata, batch_key, label_key, list(METHODS.values()), pre_integrated_key="X_pca",
                            metrics=s["scib_metrics"])
    df.index = [k for k in METHODS]  # obsm keys -> method names, same order
    df.insert(0, "method", df.index)
    df.insert(0, "dataset", name)
    with res.step(f"{name}: UMAP panels"):
        png = out / f"integrate{'_quick' if quick else ''}_{name}.png"
        umap_panels(adata, reps=METHODS, color=[batch_key, label_key], path=png, seed=seed)
        res.figures[f"{name}: UMAP by {batch_key} (left) and {label_key} (right), one row per method"] = png
    res.meta.setdefault("data", {})[name] = {"cells": int(adata.n_obs), "genes": int(adata.n_vars),
                                             "batch_key": batch_key, "label_key": label_key,
                                             "batches": int(adata.obs[batch_key].nunique())}
    return df.reset_index(drop=True)


@keep_torch_threads()
def _harmony(pca: np.ndarray, obs: pd.DataFrame, batch_key: str, seed: int) -> np.ndarray:
    from ..tasks.integrate_harmony import harmony

    return harmony(pca, obs[batch_key].to_numpy(), seed=seed)


@keep_torch_threads()
def _scvi(adata, batch_key: str, seed: int, s: dict) -> np.ndarray:
    import scvi

    scvi.settings.seed = seed
    a = adata.copy()
    a.obs[batch_key] = a.obs[batch_key].astype(str).astype("category")
    scvi.model.SCVI.setup_anndata(a, layer="counts", batch_key=batch_key)
    m = scvi.model.SCVI(a, n_latent=s["scvi_n_latent"])
    m.train(max_epochs=s["scvi_epochs"], accelerator="cpu", devices=1, enable_progress_bar=False)
    return np.asarray(m.get_latent_representation(), dtype=np.float32)


def _ours(adata, batch_key: str, label_key: str, seed: int, s: dict) -> None:
    from ..data.tokenize import TokenizerConfig
    from ..tasks.integrate import IntegrationConfig, integrate
    from ..train.config import TrainConfig

    tcfg = TrainConfig(max_steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"],
                       warmup_steps=min(100, s["steps"] // 5), progress_bar=False, seed=seed)
    integrate(adata, batch_key, label_key=label_key, config=IntegrationConfig(), train_config=tcfg,
              from_scratch=True, model_config=s["model"], tokenizer_config=TokenizerConfig(max_len=s["max_len"], value_mode="continuous"),
              n_top_genes=None, layer="counts")


def _ours_bundled(full, batch_key: str, seed: int, s: dict) -> np.ndarray:
    """``integrate``'s fine-tune from the bundled model (its own objective, batch-conditioned decoder, DAB) on
    every gene of the cells, the same steps as from scratch."""
    from ..tasks.integrate import integrate
    from ..train.config import TrainConfig

    tcfg = TrainConfig(max_steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"],
                       warmup_steps=min(100, s["steps"] // 5), progress_bar=False, seed=seed)
    e = full.copy()
    integrate(e, batch_key, train_config=tcfg)
    return e.obsm["X_scmamba2"]


def _verdict(table: pd.DataFrame) -> list[str]:
    """Each scmamba2 row against the best baseline: ahead or behind on the total, and which term."""
    notes = []
    for name, df in table.groupby("dataset", sort=False):
        df = df.set_index("method")
        ours = [m for m in df.index if m.startswith("scmamba2")]
        best = df.drop(index=ours)["Total"].idxmax()
        b = df.loc[best]
        for m in ours:
            o = df.loc[m]
            gaps = {t: o[t] - b[t] for t in ("Bio conservation", "Batch correction")}
            verdict = "at or above" if o["Total"] >= b["Total"] else "below"
            notes.append(f"{name}: {m} total {o['Total']:.3f} is {verdict} the best baseline, {best} "
                         f"({b['Total']:.3f}; {o['Total'] - b['Total']:+.3f}): bio conservation "
                         f"{gaps['Bio conservation']:+.3f}, batch correction {gaps['Batch correction']:+.3f}.")
    notes.append("The bundled model was pretrained, without labels, on cells of these experiments (the Kang training "
                  "donors and ifnb1k; see its model card), so its rows are not those of a model that never saw the "
                  "data; every method here is fitted to each dataset without labels anyway.")
    return notes
