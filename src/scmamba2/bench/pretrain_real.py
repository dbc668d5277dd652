"""Benchmark: pretrain a small model on the pooled real raw-count files of ``../shared/data``.

The pool is every human PBMC / blood raw-count file of the shared folder plus the Papalexi THP-1 screen,
with the Kang-derived files de-duplicated by (barcode, condition) (see the folder's MANIFEST: the Kang files
overlap). The files have different gene sets; :func:`scmamba2.pretrain` pools them with an outer join
(unmeasured genes are zeros, and zeros are not tokens, so nothing is invented).

Vocabulary: the union of the genes of all files, keeping those detected in at least ``min_cells`` pooled
cells (a gene that is never expressed can never be a token). Each cell is read as up to ``max_len - 1`` of
its expressed genes, re-drawn each epoch (scGPT's recipe). A share of the pooled cells is held out for the
masked-expression loss curve.

The embedding is then judged on pbmc3k (its 2,638 labelled cells; labels never seen in pretraining) by
5-fold kNN label transfer, next to two PCA baselines of the same cells: the scanpy tutorial recipe
(normalise, log1p, 2,000 HVGs, scale, PCA 50) and PCA 50 of all genes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from .._threads import keep_torch_threads
from .result import BenchResult

log = logging.getLogger(__name__)

# (file, role). Every file holds raw counts in X (MANIFEST.md).
POOL = [
    "pbmc3k_raw_labeled.h5ad",
    "pbmc500_fullgenes.h5ad",
    "citefuse_eccite_pbmc500.h5ad",
    "pbmc_10k_protein_v3.h5ad",
    "pbmc_5k_protein_v3.h5ad",
    "kang_muscat_8donors.h5ad",
    "kang_harmony_ctrl_stim.h5ad",
    "kang_muscat_ctrl_stim.h5ad",
    "ifnb1k.h5ad",
    "papalexi_eccite.h5ad",
]
KANG = {"kang_muscat_8donors.h5ad", "kang_harmony_ctrl_stim.h5ad", "kang_muscat_ctrl_stim.h5ad", "ifnb1k.h5ad"}
EVAL_FILE, LABEL_KEY = "pbmc3k_raw_labeled.h5ad", "cell_type"

MODEL = dict(d_model=64, n_layers=2, headdim=32, chunk_size=64, dropout=0.1)
TOKENIZER = dict(n_bins=51, max_len=256)
TRAIN = dict(max_steps=800, batch_size=32, lr=2e-3, warmup_steps=80, mask_ratio=0.4, val_fraction=0.02,
             val_every_n_steps=100, log_every_n_steps=10)
QUICK = dict(max_steps=40, val_every_n_steps=20, warmup_steps=5)


def load_pool(data_dir: Path, *, quick: bool = False, seed: int = 0):
    """Read the pool; returns ``(adatas, table)`` with the Kang duplicates removed (first file wins)."""
    import anndata as ad
    import pandas as pd

    adatas, rows, seen = [], [], set()
    rng = np.random.default_rng(seed)
    for name in POOL:
        a = ad.read_h5ad(data_dir / name)
        n_read = a.n_obs
        dropped = 0
        if name in KANG:
            key = (a.obs["barcode"].astype(str) + "|" + a.obs["condition"].astype(str)).to_numpy()
            keep = ~np.isin(key, list(seen))
            dropped = int((~keep).sum())
            seen.update(key[keep])
            a = a[keep].copy()
        if quick and a.n_obs > 300 and name != EVAL_FILE:
            a = a[np.sort(rng.choice(a.n_obs, 300, replace=False))].copy()
        a.obs = pd.DataFrame({"source": pd.Categorical([name.removesuffix(".h5ad")] * a.n_obs)}, index=a.obs_names)
        a.var = a.var[[]]
        adatas.append(a)
        rows.append({"file": name, "cells read": n_read, "Kang duplicates dropped": dropped, "cells used": a.n_obs,
                     "genes": a.n_vars})
    return adatas, pd.DataFrame(rows)


def corpus_vocab(adatas, min_cells: int = 10):
    """Genes of the union detected (count > 0) in at least ``min_cells`` pooled cells, in first-seen order."""
    from ..data.vocab import GeneVocab

    detected: dict[str, int] = {}
    for a in adatas:
        X = a.X.tocsc() if hasattr(a.X, "tocsc") else a.X
        n = np.asarray((X > 0).sum(axis=0)).ravel()
        for g, k in zip(map(str, a.var_names), n):
            detected[g] = detected.get(g, 0) + int(k)
    return GeneVocab([g for g, k in detected.items() if k >= min_cells]), len(detected)


def loss_curve_png(metrics_csv: Path, path: Path) -> dict:
    """Plot train/gep (per logged step, and a running mean) and val/gep from Lightning's ``metrics.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    m = pd.read_csv(metrics_csv)
    train = m.dropna(subset=["train/gep"])[["step", "train/gep"]] if "train/gep" in m else m.iloc[:0]
    val = m.dropna(subset=["val/gep"])[[c for c in ("step", "val/gep", "val/mvc") if c in m]] if "val/gep" in m \
        else m.iloc[:0]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(train["step"], train["train/gep"], lw=0.6, alpha=0.4, color="C0", label="train (per logged step)")
    ax.plot(train["step"], train["train/gep"].rolling(5, center=True, min_periods=1).mean(), color="C0",
            label="train (centred mean of 5 logged steps)")
    ax.plot(val["step"], val["val/gep"], "o-", color="C3", label="held-out cells")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("masked-expression MSE (value bins)")
    ax.set_title("Pretraining on the pooled shared data")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"train": train.to_dict("list"), "val": val.to_dict("list")}


def run(data_dir: str | Path, out_dir: str | Path, *, seed: int = 0, quick: bool = False) -> BenchResult:
    """Pretrain on the pool, plot the loss curve, compare pbmc3k kNN label transfer with PCA."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc
    import torch

    from ..data.tokenize import TokenizerConfig
    from ..eval.baselines import pca_embedding
    from ..eval.knn import knn_label_transfer_accuracy
    from ..model import ScMamba2
    from ..tasks.embed import embed
    from ..train.config import TrainConfig
    from ..train.pretrain import pretrain

    data_dir, out = Path(data_dir), Path(out_dir)
    stem = "pretrain_real_quick" if quick else "pretrain_real"
    work = out / f"{stem}_run"
    res = BenchResult(task=stem)

    with res.step("read the pool"):
        adatas, sources = load_pool(data_dir, quick=quick, seed=seed)
        vocab, n_union = corpus_vocab(adatas)
        # Leave out the genes the vocabulary does not keep (pretrain's input check wants most genes known).
        adatas = [a[:, a.var_names.isin(vocab.genes)].copy() for a in adatas]
    res.tables["Pretraining pool"] = sources

    train = TrainConfig(**{**TRAIN, **(QUICK if quick else {}), "seed": seed, "progress_bar": False})
    tok = TokenizerConfig(**TOKENIZER)
    with res.step("pretrain (read, tokenise, train)"):
        pre = pretrain(adatas, out_dir=work, model_config=dict(MODEL), tokenizer_config=tok, train_config=train,
                       vocab=vocab)
    model = pre.model
    n_params = sum(p.numel() for p in model.parameters())
    curve = loss_curve_png(work / "logs" / "metrics.csv", out / f"{stem}_loss.png")
    shutil.copyfile(work / "logs" / "metrics.csv", out / f"{stem}_metrics.csv")  # the curve's numbers
    res.figures["Masked-expression loss (train and held-out cells)"] = out / f"{stem}_loss.png"
    res.tables["Held-out masked-expression loss"] = pd.DataFrame([
        {"cells": "held-out (never trained on)", "n": pre.n_val_cells, "before training": pre.val_loss_start,
         "after training": pre.val_loss_end,
         "predicting each gene's mean value": pre.val_end.get("val/gep_gene_mean")},
    ])

    with res.step("embed pbmc3k"):
        pbmc = ad.read_h5ad(data_dir / EVAL_FILE)
        pbmc = pbmc[pbmc.obs[LABEL_KEY].astype(str) != "unlabeled"].copy()
        known = pbmc[:, pbmc.var_names.isin(vocab.genes)].copy()  # genes outside the vocabulary are no tokens
        embed(known, model, progress=False)
        pbmc.obsm["X_scmamba2"] = known.obsm["X_scmamba2"]
    with res.step("embed pbmc3k with the untrained model (control)"):
        # Same architecture and seed, no training: what the architecture gives before pretraining.
        torch.manual_seed(seed)
        untrained = ScMamba2(model.config, vocab=model.vocab, tokenizer_config=model.tokenizer_config)
        embed(known, untrained, progress=False, key_added="X_untrained")
        pbmc.obsm["X_untrained"] = known.obsm["X_untrained"]
    with res.step("PCA baselines"):
        hvg = pbmc.copy()
        with keep_torch_threads():  # scanpy's numba kernels reset torch's OpenMP threads
            sc.pp.normalize_total(hvg, target_sum=1e4)
            sc.pp.log1p(hvg)
            sc.pp.highly_variable_genes(hvg, n_top_genes=2000, flavor="seurat")
        hvg = hvg[:, hvg.var["highly_variable"]].copy()
        pbmc.obsm["X_pca_hvg"] = pca_embedding(hvg, n_comps=50, normalize=False, seed=seed)
        pbmc.obsm["X_pca_all"] = pca_embedding(pbmc, n_comps=50, normalize=True, seed=seed)
    rows = []
    for key, name in [("X_scmamba2", f"scmamba2 <cls> ({MODEL['d_model']} dims), pretrained on the pool"),
                      ("X_untrained", "control: the same model untrained (random init)"),
                      ("X_pca_hvg", "PCA 50 of 2,000 HVGs (scanpy tutorial recipe)"),
                      ("X_pca_all", "PCA 50 of all genes")]:
        mean, std = knn_label_transfer_accuracy(pbmc.obsm[key], pbmc.obs[LABEL_KEY], seed=seed)
        rows.append({"embedding": name, "kNN accuracy (5-fold, k=15)": mean, "± std": std})
    res.tables[f"pbmc3k kNN label transfer ({pbmc.n_obs} labelled cells, {pbmc.obs[LABEL_KEY].nunique()} types)"] = (
        pd.DataFrame(rows))

    n_reads = train.max_steps * train.batch_size
    res.notes += [
        f"Pool: {sum(a.n_obs for a in adatas):,} cells from {len(adatas)} files, pooled by pretrain's outer join; "
        f"vocabulary: {len(vocab.genes):,} of the {n_union:,} genes of the union (detected in >= 10 pooled cells).",
        f"Model {MODEL}, {n_params:,} parameters; tokenizer {TOKENIZER} (expressed genes only, a random "
        f"subset of {tok.max_len - 1} re-drawn each epoch for longer cells); {train.max_steps} steps of batch "
        f"{train.batch_size} (= {n_reads:,} cell reads, about "
        f"{n_reads / max(pre.n_train_cells, 1):.2f} epochs), seed {seed}, "
        f"{torch.get_num_threads()} threads.",
        f"Held-out cells: {pre.n_val_cells} of the pool ({train.val_fraction:.0%}, a seeded draw), never trained "
        "on; their masked-expression loss is the curve's red line. The loss is the MSE of the predicted value bin "
        f"(bins 1..{tok.n_bins - 1}) at the masked positions.",
        "The kNN test embeds pbmc3k, one of the pooled files: pretraining saw its cells (not their labels); the "
        "PCA baselines are fitted on the same cells, so both sides see the same data.",
        "The Kang files overlap (MANIFEST.md): cells whose (barcode, condition) was already read from an earlier "
        "Kang file are dropped, so no cell is pretrained on twice.",
        f"Held-out MVC loss (values predicted from the cell embedding and the gene alone): "
        f"{curve['val']['val/mvc'][0]:.1f} -> {curve['val']['val/mvc'][-1]:.1f}, next to the GEP loss above: when "
        "the two are close, the model predicts mostly from gene identity and the cell embedding carries little "
        "cell-specific information yet.",
        "A model of this size trained for minutes on 2 CPU cores is far from a foundation model; the PCA "
        "baselines are expected to be strong on pbmc3k and the table says by how much.",
    ]
    res.meta = {"seed": seed, "quick": quick, "model": MODEL, "tokenizer": TOKENIZER, "train": train.to_dict(),
                "n_vocab_genes": len(vocab.genes), "n_union_genes": n_union, "val_curve": curve["val"],
                "run_folder": work.name}
    log.info("pretrain_real done in %.0f s", sum(s.wall_s for s in res.steps))
    return res
