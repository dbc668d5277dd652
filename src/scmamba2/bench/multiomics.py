"""Multi-omics benchmark: protein prediction from RNA and joint-embedding quality, scmamba2 against a kNN
regressor on RNA PCA, totalVI and a concatenated per-modality PCA, on the real files of the local data folder.

- CITE-seq ``pbmc_5k_protein_v3`` + ``pbmc_10k_protein_v3`` (200 cells each, two batches; the 14 proteins and
  the genes both files measure) and ``citefuse_eccite_pbmc500`` (500 cells, 49 ADTs less the two isotype
  controls). A seeded 25% of the cells (per batch) is held out; every method is fitted on the other 75% and
  predicts the held-out cells' proteins from their RNA. Truth and predictions are compared on one scale: Seurat's
  per-cell CLR of the protein counts (:func:`~scmamba2.data.multiomics.clr`), per-protein Pearson r over the
  held-out cells.
- Joint embedding (5k + 10k, training cells): scmamba2's, totalVI's latent and a concatenation of an RNA PCA
  and a protein PCA (each block scaled to unit total variance: a WNN-like baseline), scored with scIB's batch
  metrics (batch = source file). None of the files has cell-type labels: bio-conservation metrics are not
  computed, and no clustering is passed off as labels.
- Multiome ``test_rna_atac.h5mu`` (1,000 cells, 45 genes, 174 peaks): the pipeline end to end (training,
  embedding, ATAC predicted from RNA for held-out cells, per-peak Pearson r against a kNN on RNA PCA).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .result import BenchResult

log = logging.getLogger(__name__)

DATASETS = ("pbmc_5k_protein_v3", "pbmc_10k_protein_v3", "citefuse_eccite_pbmc500", "test_rna_atac")
ISOTYPE_CONTROLS = ("IgG1", "IgG2a", "IgG2b")
TRANSFER = "scmamba2 reference kNN in the bundled embedding (nothing trained)"
BASELINES = ("kNN on RNA PCA", "totalVI")
OURS = "scmamba2 joint model from the bundled model (default)"
SCRATCH = "scmamba2 joint model from scratch"
METHODS = (OURS, SCRATCH, TRANSFER, *BASELINES)


NOTES = [
    "scmamba2 reference kNN (`scmamba2 multiomics predict --reference`, `transfer_modality`): the bundled "
    "pretrained model embeds the training and held-out cells (embed's defaults, all their genes) and each held-out "
    "cell gets the distance-weighted mean CLR protein of its 15 nearest training cells; nothing is trained. k and "
    "the weighting were chosen by 5-fold cross-validation within the training cells (mean r, 2026-12-03): pbmc "
    "k=5 0.716 / 0.715 (uniform / distance), k=15 0.730 / 0.734, k=30 0.701 / 0.720, ridge on the embedding "
    "0.709, kNN on RNA PCA 0.664; ECCITE 0.382 / 0.384, 0.388 / 0.399, 0.376 / 0.397, ridge 0.394, kNN on RNA "
    "PCA 0.389 (measured with the bundled model before its 2026-12-03 panel rebuild). The bundled model was pretrained, without proteins, on the cells of both CITE-seq files (the "
    "held-out ones included; see its model card).",
    "What each method saw. scmamba2 joint model: the training cells' RNA counts and protein counts, then the "
    "held-out cells' RNA only (their protein tokens enter with masked values); by default (`scmamba2 multiomics "
    "train`) it starts from the bundled pretrained model (its genes and tokenizer, the protein tokens and "
    "modality embedding added), with `--from-scratch` it is a small new model on 1,000 HVGs; same steps. "
    "kNN on RNA PCA: log1p-normalised training RNA on the same 1,000 HVGs (chosen on the training cells), scaled "
    "and PCA-projected with statistics of the training cells, and the training cells' CLR protein; the held-out "
    "cells are projected and averaged over their 15 nearest training cells. totalVI (scvi-tools TOTALVI, "
    "defaults, n_latent 20): one model on the training cells' RNA + protein and the held-out cells' RNA, the "
    "held-out cells in batches of their own with all-zero proteins, which scvi-tools treats as missing "
    "(ProteinObsmField's batch mask: no protein likelihood for them), so their proteins are never seen, but "
    "their RNA is (transductive, which scmamba2 and kNN are not); predictions are get_normalized_expression("
    "transform_batch=the cell's source training batch, include_protein_background=True, n_samples=25), then "
    "the same per-cell CLR as the truth.",
    "Scale: every truth and prediction is Seurat's per-cell CLR, log1p(x / exp(mean log1p(x))) over the "
    "protein panel; Pearson r per protein over the held-out cells, then the mean and median over proteins "
    "(a protein constant in the held-out cells has no r). ECCITE: the isotype controls IgG1 and IgG2a are "
    "background, not proteins, and were dropped from the panel for every method; the HTO hashing counts are "
    "not used.",
    "No file has cell-type labels: the joint embeddings get scIB's batch metrics only (label-free: BRAS, kBET "
    "and graph connectivity over all cells as one group), and no bio-conservation score is reported; a "
    "clustering of a baseline is not a label. A batch-mixing score alone rewards an embedding that mixes "
    "everything, so read it next to the protein prediction and the UMAP.",
    "The joint model from the bundled model keeps the bundled model's tokenizer (256 RNA tokens, every gene it "
    "knows) and was not tuned: the from-scratch recipe's steps and learning rate. "
    "The from-scratch settings (mean-pooled cell embedding, prediction from the MVC head, cross_modal_prob 0.8, "
    "rna_target_fraction 0.15, 1,000 HVGs, 128 RNA tokens, no dropout) were chosen on a development split of "
    "the pbmc 5k + 10k training cells (a second seeded split inside them), never on the held-out cells; the "
    "baselines use their defaults. Each method was run once with seed 0.",
    "Joint model from the bundled model vs from scratch (2026-12-03): the one seeded run here gives pbmc 0.675 vs "
    "0.604 and ECCITE 0.338 vs 0.347. An ad-hoc run of the same recipe in which the bundled model was loaded before "
    "the seed was set (so the new protein and modality embeddings drew other random numbers) gave 0.686 and 0.367: "
    "the pbmc gain holds, the ECCITE difference is within this variation. Starting from the bundled model also "
    "turned the joint embedding's batch mixing from the worst of the table into the best (above).",
    "Multiome: test_rna_atac.h5mu is a 1,000-cell test object (45 genes, 174 peaks): a check that the RNA + "
    "ATAC path runs end to end (MuData in, joint embedding written, accessibility predicted from RNA), not a "
    "result; the ATAC truth is binarised accessibility; its joint model is trained from scratch (45 genes).",
]


def _default_data_dir() -> Path:
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _settings(quick: bool) -> dict:
    return {
        "holdout": 0.25,
        "n_top_genes": 1000,
        "rna_max_len": 128,
        "steps": {"pbmc_5k+10k": 30, "eccite_pbmc500": 30, "atac": 10} if quick else
                 {"pbmc_5k+10k": 400, "eccite_pbmc500": 300, "atac": 60},
        "batch_size": 32,
        "lr": 1e-3,
        "model": {"d_model": 64, "n_layers": 2, "headdim": 16, "d_state": 32, "chunk_size": 32, "dropout": 0.0,
                  "cell_pooling": "mean"},
        "knn": {"n_pcs": 30, "n_neighbors": 15},
        "totalvi_epochs": 20 if quick else 200,
        "totalvi_samples": 25,
        "scib_metrics": "batch",
    }


def run(data_dir: str | Path | None = None, out_dir: str | Path = "benchmarks/results", seed: int = 0,
        quick: bool = False) -> BenchResult:
    """Protein prediction on both CITE-seq sets, the joint embedding of the 5k + 10k pair, the Multiome pipeline."""
    import torch

    from .._malloc import tune_cpu_allocator

    tune_cpu_allocator()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: one thread each
    data = Path(data_dir) if data_dir is not None else _default_data_dir()
    out = Path(out_dir)
    s = _settings(quick)
    res = BenchResult(task="multiomics")
    res.meta.update({"seed": seed, "quick": quick, "torch_threads": 1, **s})
    cpu0 = time.process_time()
    summary, per_protein = [], []
    try:
        pair = _cite_pair(data)
        rows, pp, emb = _prediction(res, pair, "pbmc_5k+10k", "source", seed, s, keep_embedding=True)
        summary += rows
        per_protein.append(pp)
        res.tables["Joint embedding, pbmc 5k + 10k training cells: scIB batch metrics (batch = source file; "
                   "no labels, so no bio-conservation metrics)"] = _embedding(res, emb, seed, s, out, quick)
        rows, pp, _ = _prediction(res, _eccite(data), "eccite_pbmc500", None, seed, s)
        summary += rows
        per_protein.append(pp)
        res.tables["Multiome RNA + ATAC (test_rna_atac.h5mu): the pipeline end to end"] = _multiome(res, data, seed, s)
    finally:
        torch.set_num_threads(threads)
    table = pd.DataFrame(summary)
    res.tables["Protein prediction from RNA on held-out cells (per-protein Pearson r, CLR scale)"] = table
    pp = pd.concat(per_protein, ignore_index=True)
    res.tables["Per-protein Pearson r"] = pp
    res.figures["Per-protein Pearson r on held-out cells: scmamba2's default joint model (y) against each baseline (x)"] = \
        _scatter(pp, out / f"multiomics{'_quick' if quick else ''}_per_protein.png")
    res.notes.extend(_verdict(table))
    res.notes.extend(NOTES)
    res.meta["cpu_minutes"] = round((time.process_time() - cpu0) / 60, 2)
    return res


# ------------------------------------------------------------------------------------------------------ data
def _cite_pair(data: Path):
    """The two 10x protein subsets as one AnnData: shared genes and proteins, ``obs['source']`` = file."""
    import anndata as ad

    from ..data.io import read

    parts = {k: read(data / f"pbmc_{k}_protein_v3.h5ad") for k in ("5k", "10k")}
    genes = parts["5k"].var_names.intersection(parts["10k"].var_names)
    names = {k: [str(n) for n in a.uns["protein_names"]] for k, a in parts.items()}
    shared = [p for p in names["10k"] if p in names["5k"]]
    subs = {}
    for k, a in parts.items():
        b = ad.AnnData(X=a[:, genes].X.copy(), obs=pd.DataFrame(index=a.obs_names), var=pd.DataFrame(index=genes))
        b.obsm["protein_expression"] = np.asarray(a.obsm["protein_expression"])[:, [names[k].index(p) for p in shared]]
        subs[k] = b
    pair = ad.concat(subs, label="source", index_unique="-")
    pair.uns["protein_names"] = np.asarray(shared)
    return pair


def _eccite(data: Path):
    from ..data.io import read

    a = read(data / "citefuse_eccite_pbmc500.h5ad")
    prot = a.obsm["protein_counts"]
    keep = [c for c in prot.columns if c not in ISOTYPE_CONTROLS]
    b = a.copy()
    b.obsm.clear()
    b.obsm["protein_expression"] = prot[keep].to_numpy(dtype=np.float32)
    b.uns = {"protein_names": np.asarray(keep)}
    return b


def _split(obs: pd.DataFrame, batch_key: str | None, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded held-out cells: ``frac`` of each batch."""
    rng = np.random.default_rng(seed)
    groups = obs[batch_key].astype(str).to_numpy() if batch_key else np.zeros(len(obs), dtype=str)
    held = []
    for g in sorted(set(groups)):
        idx = np.flatnonzero(groups == g)
        held.extend(rng.choice(idx, int(round(frac * len(idx))), replace=False))
    held = np.sort(np.asarray(held, dtype=np.int64))
    return np.setdiff1d(np.arange(len(obs)), held), held


# ------------------------------------------------------------------------------------------ protein prediction
def _prediction(res: BenchResult, a, name: str, batch_key: str | None, seed: int, s: dict,
                keep_embedding: bool = False):
    from ..data.multiomics import clr

    train_idx, test_idx = _split(a.obs, batch_key, s["holdout"], seed)
    train, test = a[train_idx].copy(), a[test_idx].copy()
    truth = clr(test.obsm["protein_expression"])
    proteins = [str(p) for p in a.uns["protein_names"]]
    rna_test = test.copy()
    del rna_test.obsm["protein_expression"]  # what every method is given for the held-out cells: RNA only
    hvg = _hvg(train, s["n_top_genes"])
    preds = {}
    with res.step(f"{name}: scmamba2 from the bundled model ({s['steps'][name]} steps)"):
        preds[OURS] = _ours(train, rna_test, batch_key, seed, s, s["steps"][name], from_scratch=False)
    with res.step(f"{name}: scmamba2 from scratch ({s['steps'][name]} steps)"):
        preds[SCRATCH] = _ours(train, rna_test, batch_key, seed, s, s["steps"][name], from_scratch=True)
    with res.step(f"{name}: {TRANSFER}"):
        preds[TRANSFER] = _transfer(train, rna_test)
    with res.step(f"{name}: kNN on RNA PCA"):
        preds["kNN on RNA PCA"] = _knn(train[:, hvg], rna_test[:, hvg], clr(train.obsm["protein_expression"]), seed, s)
    with res.step(f"{name}: totalVI ({s['totalvi_epochs']} epochs)"):
        preds["totalVI"] = clr(_totalvi_predict(train[:, hvg], rna_test[:, hvg], batch_key, seed, s))
    rows, pp = [], {"dataset": name, "protein": proteins}
    for m in METHODS:
        r = np.array([_pearson(preds[m][:, j], truth[:, j]) for j in range(len(proteins))])
        pp[m] = r
        rows.append({"dataset": name, "method": m, "mean r": float(np.nanmean(r)), "median r": float(np.nanmedian(r)),
                     "proteins": int(np.isfinite(r).sum()), "train cells": len(train_idx), "held-out cells": len(test_idx)})
    res.meta.setdefault("data", {})[name] = {"cells": int(a.n_obs), "genes": int(a.n_vars), "proteins": len(proteins),
                                             "batch_key": batch_key, "hvgs": int(len(hvg))}
    emb = None
    if keep_embedding:
        emb = {"train": train, "hvg": hvg, "batch_key": batch_key}
    return rows, pd.DataFrame(pp), emb


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _hvg(a, n: int) -> np.ndarray:
    from ..data.preprocess import select_hvg

    return np.asarray(select_hvg(a, n, flavor="seurat").var_names)


def _ours(train, rna_test, batch_key, seed: int, s: dict, steps: int, from_scratch: bool) -> np.ndarray:
    from ..tasks.multiomics import MultiomicsConfig, multiomics, predict_modality
    from ..train.config import TrainConfig

    tcfg = TrainConfig(max_steps=steps, batch_size=s["batch_size"], lr=s["lr"], warmup_steps=min(50, steps // 5),
                       progress_bar=False, seed=seed)
    new = dict(from_scratch=True, model_config=s["model"], key_added="X_scmamba2_scratch") if from_scratch else {}
    mm = multiomics(train, batch_key=batch_key, config=MultiomicsConfig(n_top_genes=s["n_top_genes"],
                    rna_max_len=s["rna_max_len"]), train_config=tcfg, **new)
    predict_modality(rna_test, mm, "prot", batch_key=batch_key)  # each held-out cell's own (known) batch
    return rna_test.obsm["scmamba2_pred_prot"]


def _transfer(train, rna_test) -> np.ndarray:
    from ..tasks.transfer_modality import transfer_modality

    q = rna_test.copy()
    transfer_modality(train, q)
    return q.obsm["scmamba2_pred_prot"]


def _log_norm(a) -> np.ndarray:
    from ..data.preprocess import normalize_log1p

    return np.asarray(normalize_log1p(a.X).toarray(), dtype=np.float64)


def _rna_pca(train, test, n_pcs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA of log1p-normalised, scaled RNA, fitted on the training cells only."""
    from sklearn.decomposition import PCA

    xa, xb = _log_norm(train), _log_norm(test)
    mu, sd = xa.mean(0), xa.std(0) + 1e-8
    pca = PCA(n_components=min(n_pcs, xa.shape[0] - 1, xa.shape[1] - 1), random_state=seed)
    return pca.fit_transform(np.clip((xa - mu) / sd, -10, 10)), pca.transform(np.clip((xb - mu) / sd, -10, 10))


def _knn(train, test, target: np.ndarray, seed: int, s: dict) -> np.ndarray:
    from sklearn.neighbors import KNeighborsRegressor

    za, zb = _rna_pca(train, test, s["knn"]["n_pcs"], seed)
    return KNeighborsRegressor(n_neighbors=s["knn"]["n_neighbors"]).fit(za, target).predict(zb)


def _totalvi_setup(a, batch_key: str, seed: int):
    import scvi

    scvi.settings.seed = seed
    a.layers["counts"] = a.X.copy()
    scvi.model.TOTALVI.setup_anndata(a, layer="counts", protein_expression_obsm_key="protein_expression",
                                     batch_key=batch_key)
    return scvi.model.TOTALVI(a)


def _totalvi_predict(train, rna_test, batch_key, seed: int, s: dict) -> np.ndarray:
    """totalVI fitted on the training cells (RNA + protein) and the held-out cells' RNA, their proteins set to 0
    in batches of their own: scvi-tools treats a protein that is 0 in every cell of a batch as *missing* there
    (no reconstruction loss), so the held-out proteins are never seen. Predicted: the denoised protein of the
    held-out cells with their source's training batch as ``transform_batch`` (foreground + background, the
    expected observed count), then CLR like the truth."""
    import warnings

    import anndata as ad

    src_train = train.obs[batch_key].astype(str).to_numpy() if batch_key else np.full(train.n_obs, "all")
    src_test = rna_test.obs[batch_key].astype(str).to_numpy() if batch_key else np.full(rna_test.n_obs, "all")
    test = rna_test.copy()
    test.obsm["protein_expression"] = np.zeros((test.n_obs, train.obsm["protein_expression"].shape[1]), np.float32)
    both = ad.concat([train, test], index_unique="-")
    both.obs["tv_batch"] = pd.Categorical(np.concatenate([[f"train {b}" for b in src_train],
                                                          [f"heldout {b}" for b in src_test]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _totalvi_setup(both, "tv_batch", seed)
        model.train(max_epochs=s["totalvi_epochs"], accelerator="cpu", devices=1, enable_progress_bar=False)
        pred = np.zeros(test.obsm["protein_expression"].shape, np.float32)
        for b in sorted(set(src_test)):
            rows = np.flatnonzero(src_test == b)
            _, prot = model.get_normalized_expression(indices=train.n_obs + rows, transform_batch=f"train {b}",
                                                      n_samples=s["totalvi_samples"], include_protein_background=True,
                                                      return_mean=True, return_numpy=True)
            pred[rows] = prot
    return pred


# ------------------------------------------------------------------------------------------ joint embedding
def _embedding(res: BenchResult, emb: dict, seed: int, s: dict, out: Path, quick: bool) -> pd.DataFrame:
    """scIB batch metrics of the joint embeddings of the training cells (all fitted on the same cells)."""
    import warnings

    from ..data.multiomics import clr
    from ..eval.plots import umap_panels
    from ..eval.scib import scib_benchmark

    train, hvg, batch_key = emb["train"].copy(), emb["hvg"], emb["batch_key"]
    with res.step("pbmc_5k+10k: per-modality PCA (WNN-like)"):
        rna_pc, _ = _rna_pca(train[:, hvg], train[:, hvg], s["knn"]["n_pcs"], seed)
        from sklearn.decomposition import PCA

        p = clr(train.obsm["protein_expression"])
        p = (p - p.mean(0)) / (p.std(0) + 1e-8)
        prot_pc = PCA(n_components=min(10, p.shape[1] - 1), random_state=seed).fit_transform(p)
        blocks = [b / np.sqrt((b.var(0)).sum()) for b in (rna_pc, prot_pc)]
        train.obsm["X_rna_pca"] = rna_pc.astype(np.float32)
        train.obsm["X_wnn_like"] = np.concatenate(blocks, 1).astype(np.float32)
    with res.step(f"pbmc_5k+10k: totalVI latent ({s['totalvi_epochs']} epochs)"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = train[:, hvg].copy()
        model = _totalvi_setup(a, batch_key, seed)
        model.train(max_epochs=s["totalvi_epochs"], accelerator="cpu", devices=1, enable_progress_bar=False)
        train.obsm["X_totalvi"] = np.asarray(model.get_latent_representation(), dtype=np.float32)
    # X_scmamba2(_scratch) were written into these cells by multiomics() in _prediction (the models trained on them)
    keys = {"RNA PCA (unintegrated)": "X_rna_pca", "RNA + protein PCA (WNN-like)": "X_wnn_like",
            "totalVI": "X_totalvi", "scmamba2 (from the bundled model, default)": "X_scmamba2",
            "scmamba2 from scratch": "X_scmamba2_scratch"}
    with res.step("pbmc_5k+10k: scIB batch metrics"):
        df = scib_benchmark(train, batch_key, None, list(keys.values()), pre_integrated_key="X_rna_pca",
                            metrics=s["scib_metrics"])
    df.index = list(keys)
    df.insert(0, "embedding", df.index)
    with res.step("pbmc_5k+10k: UMAP panels"):
        png = out / f"multiomics{'_quick' if quick else ''}_umap.png"
        umap_panels(train, reps=keys, color=[batch_key], path=png, seed=seed)
        res.figures["pbmc 5k + 10k training cells: UMAP of each joint embedding coloured by source file"] = png
    return df.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ multiome
def _multiome(res: BenchResult, data: Path, seed: int, s: dict) -> pd.DataFrame:
    from ..data.multiomics import read_multiomics
    from ..tasks.multiomics import MultiomicsConfig, multiomics, predict_modality
    from ..train.config import TrainConfig

    md = read_multiomics(data / "test_rna_atac.h5mu")
    rna, atac = md.mods["rna"], md.mods["atac"]
    train_idx, test_idx = _split(rna.obs, None, s["holdout"], seed)
    steps = s["steps"]["atac"]
    with res.step(f"multiome: scmamba2 ({steps} steps)"):
        import mudata

        train = mudata.MuData({"rna": rna[train_idx].copy(), "atac": atac[train_idx].copy()})
        tcfg = TrainConfig(max_steps=steps, batch_size=s["batch_size"], lr=s["lr"], warmup_steps=min(50, steps // 5),
                           progress_bar=False, seed=seed)
        mm = multiomics(train, config=MultiomicsConfig(n_top_genes=None, rna_max_len=s["rna_max_len"]),
                        from_scratch=True, model_config=s["model"], train_config=tcfg)  # a 45-gene test object
        q = rna[test_idx].copy()
        predict_modality(q, mm, "atac")
    peaks = mm.spec.features["atac"]
    col = {p: i for i, p in enumerate(map(str, atac.var_names))}
    X = atac.X.toarray() if hasattr(atac.X, "toarray") else np.asarray(atac.X)
    truth = (X[test_idx][:, [col[p] for p in peaks]] > 0).astype(np.float32)
    with res.step("multiome: kNN on RNA PCA"):
        target = (X[train_idx][:, [col[p] for p in peaks]] > 0).astype(np.float32)
        knn = _knn(rna[train_idx], rna[test_idx], target, seed, {**s, "knn": {**s["knn"], "n_pcs": 20}})
    rows = []
    for m, pred in (("scmamba2", q.obsm["scmamba2_pred_atac"]), ("kNN on RNA PCA", knn)):
        r = np.array([_pearson(pred[:, j], truth[:, j]) for j in range(len(peaks))])
        rows.append({"method": m, "peaks": int(np.isfinite(r).sum()), "mean r (accessibility)": float(np.nanmean(r)),
                     "median r": float(np.nanmedian(r)), "train cells": len(train_idx), "held-out cells": len(test_idx),
                     "embedding written": bool(np.isfinite(train.obsm["X_scmamba2"]).all()) if m == "scmamba2" else "-"})
    res.meta.setdefault("data", {})["multiome"] = {"cells": int(md.n_obs), "genes": int(rna.n_vars),
                                                   "peaks": int(atac.n_vars), "peaks kept": len(peaks)}
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------- report
def _scatter(pp: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, base in zip(axes, BASELINES):
        for ds, d in pp.groupby("dataset", sort=False):
            ax.scatter(d[base], d[OURS], s=18, label=ds, alpha=0.8)
        ax.plot([-0.2, 1], [-0.2, 1], color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"{base}: Pearson r")
        ax.set_ylabel("scmamba2: Pearson r")
        ax.set_title(f"per protein, held-out cells: scmamba2 vs {base}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _verdict(table: pd.DataFrame) -> list[str]:
    notes = []
    for name, df in table.groupby("dataset", sort=False):
        df = df.set_index("method")
        for m in (OURS, SCRATCH, TRANSFER):
            if m not in df.index:
                continue
            ours = df.loc[m, "mean r"]
            for base in BASELINES:
                b = df.loc[base, "mean r"]
                word = "above" if ours > b else "below"
                notes.append(f"{name}: {m} mean r {ours:.3f} is {word} {base} ({b:.3f}, {ours - b:+.3f}); median "
                             f"{df.loc[m, 'median r']:.3f} vs {df.loc[base, 'median r']:.3f}.")
    return notes
