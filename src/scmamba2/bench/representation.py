"""Benchmark: does the cell embedding learn cell state? Pretraining recipes against PCA and scVI, same run.

Each recipe pretrains a small model self-supervised (no labels) and embeds the evaluation cells; the table
gives 5-fold kNN label transfer (accuracy, macro-F1), the scIB bio-conservation metrics of scib-metrics and
the training time, with PCA-50 (scanpy recipe) and scVI on the same cells in the same run. Each recipe's
held-out profile/GEP loss is printed next to what predicting per-gene means scores.

- ``pbmc3k``: its 2,638 QC cells and 2,000 HVGs (seurat flavour); the model trains on these cells (not their
  labels), as PCA and scVI are fitted on them.
- ``kang``: ``kang_muscat_8donors``; the model, PCA and scVI are trained on five donors and evaluated on the
  cells of three held-out donors (``KANG_HELDOUT``, the annotation benchmark's seed-0 query donors), which
  the model never saw; PCA and scVI embed the held-out cells with the loadings/encoder fitted on the others.

A recipe is a diff against the package's pretraining defaults; the first rows reproduce the earlier
defaults, so the chain of changes is read top to bottom.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .._threads import keep_torch_threads
from ..eval.knn import knn_label_transfer_scores as knn_scores
from ..eval.scib import bio_conservation
from .result import BenchResult

log = logging.getLogger(__name__)

KANG_HELDOUT = ("107", "1244", "1488")
MODEL = dict(d_model=64, n_layers=2, headdim=32, chunk_size=64, dropout=0.1)
TRAIN = dict(max_steps=250, batch_size=32, lr=3e-3, warmup_steps=25, mask_ratio=0.4, val_fraction=0.05,
             val_every_n_steps=1000, log_every_n_steps=50, progress_bar=False)
MAX_LEN = 256

# name -> (model overrides, tokenizer overrides, train overrides)
RECIPES: dict[str, tuple[dict, dict, dict]] = {
    "previous default: binned values, <cls> readout, GEP + MVC, lr 1e-3":
        (dict(cell_pooling="cls", profile_genes=0), dict(value_mode="binned"), dict(lr=1e-3)),
    "+ mean-pooled readout":
        (dict(cell_pooling="mean", profile_genes=0), dict(value_mode="binned"), dict(lr=1e-3)),
    "+ continuous values, lr 3e-3":
        (dict(profile_genes=0), {}, {}),
    "default: profile decoder (linear, 2,000 genes), GEP and MVC off":
        ({}, {}, dict(gep_weight=0.0, mvc_weight=0.0)),
    "default + GEP kept on":
        ({}, {}, dict(gep_weight=1.0, mvc_weight=0.0)),
    "default with an MLP profile decoder (256 hidden)":
        (dict(profile_hidden=256), {}, dict(gep_weight=0.0, mvc_weight=0.0)),
    "default + contrastive term (two views, weight 0.2)":
        ({}, {}, dict(gep_weight=0.0, mvc_weight=0.0, contrastive_weight=0.2)),
    "default with a negative-binomial likelihood (counts, library size, per-gene dispersion)":
        (dict(profile_likelihood="nb"), {}, dict(gep_weight=0.0, mvc_weight=0.0)),
    "default at 2x steps":
        ({}, {}, dict(gep_weight=0.0, mvc_weight=0.0, max_steps=500)),
}
QUICK_RECIPES = ("previous default: binned values, <cls> readout, GEP + MVC, lr 1e-3",
                 "default: profile decoder (linear, 2,000 genes), GEP and MVC off")


def pbmc3k_qc_cells(data_dir: Path):
    """pbmc3k's 2,638 labelled cells that pass QC, raw counts of every gene."""
    import anndata as ad

    a = ad.read_h5ad(Path(data_dir) / "pbmc3k_raw_labeled.h5ad")
    return a[a.obs["qc_pass"].astype(bool) & (a.obs["cell_type"].astype(str) != "unlabeled")].copy()


def load_pbmc3k(data_dir: Path):
    """pbmc3k QC cells with labels, raw counts of 2,000 HVGs; ``(train, eval)`` are the same cells."""
    import scanpy as sc

    a = pbmc3k_qc_cells(data_dir)
    sc.pp.filter_genes(a, min_cells=3)
    norm = a.copy()
    with keep_torch_threads():
        sc.pp.normalize_total(norm, target_sum=1e4)
        sc.pp.log1p(norm)
        sc.pp.highly_variable_genes(norm, n_top_genes=2000, flavor="seurat")
    a = a[:, norm.var["highly_variable"].to_numpy()].copy()
    return a, a


def load_kang(data_dir: Path):
    """kang_muscat_8donors: ``(train, eval)`` = five donors, the three held-out donors."""
    import anndata as ad

    a = ad.read_h5ad(data_dir / "kang_muscat_8donors.h5ad")
    held = a.obs["donor"].astype(str).isin(KANG_HELDOUT).to_numpy()
    return a[~held].copy(), a[held].copy()


DATASETS = {"pbmc3k": load_pbmc3k, "kang": load_kang}


def log_norm(a):
    import scanpy as sc

    b = a.copy()
    with keep_torch_threads():
        sc.pp.normalize_total(b, target_sum=1e4)
        sc.pp.log1p(b)
    return b


def pca_train_eval(train, evaluate, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """scanpy recipe (normalise, log1p, scale, PCA 50) fitted on ``train``, applied to ``evaluate``."""
    from sklearn.decomposition import PCA

    def dense(a):
        return np.asarray(a.X.toarray() if hasattr(a.X, "toarray") else a.X, dtype=np.float64)

    xt, xe = dense(log_norm(train)), dense(log_norm(evaluate))
    mu, sd = xt.mean(0), xt.std(0)
    sd[sd == 0] = 1.0
    zt, ze = np.clip((xt - mu) / sd, -10, 10), np.clip((xe - mu) / sd, -10, 10)
    pca = PCA(n_components=min(n_comps, min(zt.shape) - 1), random_state=seed).fit(zt)
    return pca.transform(ze).astype(np.float32)


def scvi_train_eval(train, evaluate, seed: int = 0, max_epochs: int = 100) -> np.ndarray | None:
    """scVI (30 latent dims) trained on ``train``'s counts, latent means of ``evaluate``; None without scvi-tools."""
    try:
        import scvi
    except ImportError:
        log.warning("scvi-tools is not installed: the scVI baseline is left out (pip install 'scmamba2[bench]')")
        return None
    import torch

    with keep_torch_threads():
        scvi.settings.seed = seed
        t = train.copy()
        scvi.model.SCVI.setup_anndata(t)
        m = scvi.model.SCVI(t, n_latent=30)
        m.train(max_epochs=max_epochs, accelerator="cpu", enable_progress_bar=False)
        e = evaluate.copy()
        z = m.get_latent_representation(e)
    torch.set_num_threads(1)
    return np.asarray(z, dtype=np.float32)


def run_recipe(name: str, train, evaluate, seed: int = 0, steps: int | None = None,
               recipe: tuple[dict, dict, dict] | None = None) -> dict:
    """Pretrain with recipe ``name`` of :data:`RECIPES` (or ``recipe``: model, tokenizer and train overrides) on
    ``train``; returns the embedding of ``evaluate`` and the losses."""
    import torch

    from ..data.tokenize import TokenizerConfig
    from ..tasks.embed import embed
    from ..train.config import TrainConfig
    from ..train.pretrain import pretrain

    model_o, tok_o, train_o = recipe or RECIPES[name]
    tcfg = TrainConfig(**{**TRAIN, **train_o, "seed": seed, **({"max_steps": steps} if steps else {})})
    tok = TokenizerConfig(**{"max_len": MAX_LEN, "value_mode": "continuous", **tok_o})
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = pretrain(train, out_dir=None, model_config={**MODEL, **model_o}, tokenizer_config=tok, train_config=tcfg)
    minutes = (time.perf_counter() - t0) / 60
    e = evaluate[:, evaluate.var_names.isin(res.model.vocab.genes)].copy()
    embed(e, res.model, progress=False)
    return {"X": e.obsm["X_scmamba2"], "minutes": minutes, "val": res.val_end, "steps": tcfg.max_steps}


def loss_note(val: dict) -> str:
    parts = []
    if "val/profile" in val:
        parts.append(f"profile {val['val/profile']:.3f} (gene means {val.get('val/profile_gene_mean', np.nan):.3f})")
    if "val/gep" in val:
        parts.append(f"GEP {val['val/gep']:.3f} (gene means {val.get('val/gep_gene_mean', np.nan):.3f})")
    if "val/mvc" in val:
        parts.append(f"MVC {val['val/mvc']:.3f}")
    return "; ".join(parts)


def run(data_dir: str | Path, out_dir: str | Path, *, seed: int = 0, quick: bool = False,
        recipes: tuple[str, ...] | None = None, sets: tuple[str, ...] | None = None,
        extra_models: dict[str, str | Path] | None = None) -> BenchResult:
    """Every recipe on every data set (``sets``: keys of :data:`DATASETS`), PCA-50 and scVI beside; the bundled
    model (and any ``extra_models``, label -> checkpoint) embeds the evaluation cells zero-shot."""
    import pandas as pd
    import torch

    from ..tasks.embed import embed

    data_dir, out = Path(data_dir), Path(out_dir)
    stem = "representation_quick" if quick else "representation"
    res = BenchResult(task=stem)
    names = recipes or (QUICK_RECIPES if quick else tuple(RECIPES))
    torch.set_num_threads(1)
    if extra_models is None:  # label -> embed's model argument (None: embed's default, the bundled builds)
        from ..pretrained import DEFAULT_EMBEDDING, DEFAULT_MODEL, available, model_path

        extra_models = ({f"bundled {DEFAULT_MODEL} alone, zero-shot": model_path(),
                         f"embed's default: bundled {' + '.join(DEFAULT_EMBEDDING)} side by side, zero-shot": None}
                        if set(DEFAULT_EMBEDDING) <= set(available()) else {})
    for ds in sets or tuple(DATASETS):
        with res.step(f"{ds}: read"):
            train, evaluate = DATASETS[ds](data_dir)
            if quick:
                rng = np.random.default_rng(seed)
                train = train[np.sort(rng.choice(train.n_obs, min(600, train.n_obs), replace=False))].copy()
                evaluate = evaluate[np.sort(rng.choice(evaluate.n_obs, min(600, evaluate.n_obs), replace=False))].copy()
        labels = evaluate.obs["cell_type"].astype(str).to_numpy()
        rows = []

        def add(method: str, X, minutes=None, note=""):
            row = {"dataset": ds, "embedding": method, **knn_scores(X, labels, seed), **bio_conservation(X, labels, seed),
                   "train minutes": minutes, "held-out losses (gene-mean reference)": note}
            rows.append(row)
            log.info("%s | %s | acc %.3f F1 %.3f", ds, method, row["kNN accuracy"], row["kNN macro-F1"])

        with res.step(f"{ds}: PCA-50"):
            t0 = time.perf_counter()
            add("baseline: PCA-50 (normalise, log1p, scale)", pca_train_eval(train, evaluate, seed=seed),
                (time.perf_counter() - t0) / 60)
        with res.step(f"{ds}: scVI"):
            t0 = time.perf_counter()
            z = scvi_train_eval(train, evaluate, seed=seed, max_epochs=20 if quick else 100)
            if z is not None:
                add("baseline: scVI (30 latent, 100 epochs)", z, (time.perf_counter() - t0) / 60)
        for name in names:
            with res.step(f"{ds}: {name}"):
                r = run_recipe(name, train, evaluate, seed=seed, steps=40 if quick else None)
                add(f"{name} ({r['steps']} steps)", r["X"], r["minutes"], loss_note(r["val"]))
        for label, path in (extra_models or {}).items():
            with res.step(f"{ds}: {label}"):
                from ..tasks.embed import embedding_models, vocabulary_genes

                models = embedding_models(path)[1]
                e = evaluate[:, evaluate.var_names.isin(vocabulary_genes(models))].copy()
                embed(e, models, progress=False)
                add(label, e.obsm["X_scmamba2"], None, "zero-shot")
        res.tables[f"{ds}: {evaluate.n_obs} evaluation cells, {len(set(labels))} cell types"] = pd.DataFrame(rows)
    res.notes += [
        f"Model {MODEL}; {TRAIN['max_steps']} steps of batch {TRAIN['batch_size']} (a recipe may change them), "
        f"at most {MAX_LEN} expressed genes per cell, seed {seed}, one thread.",
        "kNN: 5-fold stratified, k=15, predictions pooled over folds. scIB bio: mean of scib-metrics' KMeans "
        "NMI, KMeans ARI, label silhouette and cLISI (the batch-free part of scIB's bio conservation).",
        "Held-out losses: on 5% of the training cells, after training; beside each, the loss of predicting each "
        "gene's mean (profile: 1 in standardised units; GEP: the gene's mean value). A loss at its reference "
        "has learned gene averages only.",
        "Single seed: differences of ~0.02 are within noise.",
    ]
    res.meta = {"seed": seed, "quick": quick, "model": MODEL, "train": TRAIN, "max_len": MAX_LEN,
                "kang_heldout_donors": list(KANG_HELDOUT), "recipes": {k: RECIPES[k] for k in names}}
    return res
