"""The Quickstart job: the bundled pretrained models (embed's default, two builds side by side) on scanpy's
bundled pbmc68k_reduced, zero-shot and after a short self-supervised fine-tune of each build on the same cells,
each next to PCA in one report.

pbmc68k_reduced ships z-scored values in ``X`` and log-normalised values of the same 765 genes in ``.raw``;
we read ``.raw`` (continuous values are computed from ``expm1`` of it, as from raw counts). The report puts the
5-fold kNN label transfer (accuracy and macro-F1) of each embedding next to a 50-component PCA of the same
matrix: the standard scanpy baseline.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

# The fine-tune: the bundled model's own objective (the whole profile of its gene panel) on these cells.
TRAIN = dict(max_steps=200, batch_size=32, lr=1e-3, warmup_steps=10, mask_ratio=0.4, gep_weight=0.0,
             mvc_weight=0.0, val_fraction=0.1, val_every_n_steps=100)
LABEL_KEY = "bulk_labels"


def pca_baseline(adata, seed: int = 0):
    """The quickstart's baseline: 50-component PCA of pbmc68k_reduced's ``.raw`` (scaled, not re-normalised)."""
    from .eval.baselines import pca_embedding

    return pca_embedding(adata.raw.to_adata(), n_comps=50, normalize=False, seed=seed)


def _verdict(ours: dict, pca: dict) -> str:
    """One line per metric: our best embedding (zero-shot or fine-tuned) against PCA."""
    parts, won = [], []
    for metric in ("kNN accuracy", "kNN macro-F1"):
        key = max(ours, key=lambda k: ours[k][metric])
        best = ours[key][metric]
        which = "zero-shot" if key.endswith("zeroshot") else "fine-tuned" if key == "X_scmamba2" else key
        won.append(best >= pca[metric])
        parts.append(f"{metric}: scmamba2 ({which}) {best:.3f} {'at or above' if won[-1] else 'below'} "
                     f"PCA {pca[metric]:.3f}")
    head = ("scmamba2 is at or above PCA here" if all(won) else
            "PCA wins here" if not any(won) else "Mixed: scmamba2 leads on one metric, PCA on the other")
    return f"{head} ({'; '.join(parts)}; one seed)."


def run_quickstart(out_dir: str | Path, *, max_steps: int | None = None, seed: int = 0) -> str:
    """Run the demo end to end and write ``out_dir``; returns the report text (markdown)."""
    import scanpy as sc
    import torch

    from .data.files import write_h5ad, write_json, write_text
    from .eval.knn import knn_label_transfer_scores as knn_scores
    from .eval.plots import umap_png
    from .pretrained import DEFAULT_EMBEDDING, DEFAULT_MODEL, load
    from .tasks.embed import embed
    from .train.config import TrainConfig
    from .train.pretrain import pretrain

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    adata = sc.datasets.pbmc68k_reduced()
    labels = adata.obs[LABEL_KEY]

    builds = {name: load(name) for name in DEFAULT_EMBEDDING}
    t_zero = time.perf_counter()
    embed(adata, list(builds.values()), use_raw=True, key_added="X_scmamba2_zeroshot", progress=False)
    t_zero = time.perf_counter() - t_zero

    # the fine-tune: each build on these cells with the same recipe, then side by side as embed's default
    train = TrainConfig(**{**TRAIN, "seed": seed, **({"max_steps": max_steps} if max_steps else {})})
    t_train = time.perf_counter()
    tuned = {name: pretrain(adata, out_dir=out / "model" / name, init_model=net, train_config=train, use_raw=True)
             for name, net in builds.items()}
    t_train = time.perf_counter() - t_train
    embed(adata, [r.model for r in tuned.values()], use_raw=True, key_added="X_scmamba2", progress=False)

    adata.obsm["X_pca50_baseline"] = pca_baseline(adata, seed)
    both, d0 = " + ".join(builds), builds[DEFAULT_MODEL].config.d_model
    rows = {}
    for key, name in (("X_scmamba2_zeroshot", f"scmamba2 zero-shot (embed's default: the bundled {both} side by side)"),
                      ("X_scmamba2", f"scmamba2 after a {train.max_steps}-step self-supervised fine-tune of each "
                                     "build on these cells, side by side"),
                      ("X_pca50_baseline", "baseline: PCA, 50 components (scale + PCA of the same matrix)")):
        rows[key] = (name, knn_scores(adata.obsm[key], labels, seed))
    alone = {key: (f"{name}: {DEFAULT_MODEL} alone", knn_scores(adata.obsm[key][:, :d0], labels, seed))
             for key, name in (("X_scmamba2_zeroshot", "zero-shot"), ("X_scmamba2", "fine-tuned"))}
    for key in ("X_scmamba2_zeroshot", "X_scmamba2", "X_pca50_baseline"):
        umap_png(adata, use_rep=key, color=LABEL_KEY, path=out / f"umap_{key.removeprefix('X_')}.png", seed=seed)
    write_h5ad(adata, out / "pbmc68k_reduced_scmamba2.h5ad")

    wall = time.perf_counter() - t0
    verdict = _verdict({k: rows[k][1] for k in ("X_scmamba2_zeroshot", "X_scmamba2")}, rows["X_pca50_baseline"][1])
    loss = "; ".join(f"{name} {r.val_start.get('val/profile', float('nan')):.3f} -> "
                     f"{r.val_end.get('val/profile', float('nan')):.3f} (predicting each gene's mean: "
                     f"{r.val_end.get('val/profile_gene_mean', float('nan')):.3f})" for name, r in tuned.items())
    lines = [
        "# scmamba2 quickstart: pbmc68k_reduced",
        "",
        f"{adata.n_obs} cells x {adata.raw.n_vars} genes (scanpy's bundled pbmc68k_reduced, `.raw`, "
        f"log-normalised). Labels: `{LABEL_KEY}` ({labels.nunique()} types), never used in training.",
        "",
        f"Model: embed's default, the two bundled builds of one recipe ({both}, "
        f"{sum(p.numel() for p in builds[DEFAULT_MODEL].parameters()):,} parameters each; see their MODEL_CARD.md), "
        "their embeddings side by side; then each fine-tuned on these cells with its own objective (the whole "
        f"profile of its gene panel): {train.max_steps} steps of batch {train.batch_size}, lr {train.lr}, seed "
        f"{seed}, torch {torch.__version__}, torch threads: {torch.get_num_threads()}.",
        f"Held-out profile loss of the fine-tunes: {loss}.",
        "",
        "| embedding | kNN accuracy (5-fold, k=15) | kNN macro-F1 |",
        "|---|---|---|",
        *[f"| {name} | {s['kNN accuracy']:.3f} | {s['kNN macro-F1']:.3f} |" for name, s in rows.values()],
        "",
        verdict,
        "",
        f"One build alone (the first {d0} dimensions of each embedding; what the tasks fine-tune): "
        + "; ".join(f"{name} {s['kNN accuracy']:.3f} / {s['kNN macro-F1']:.3f}" for name, s in alone.values()) + ".",
        "",
        f"Wall time: {wall:.0f} s (zero-shot embedding {t_zero:.1f} s, fine-tunes {t_train:.0f} s).",
        "",
        "Files: `pbmc68k_reduced_scmamba2.h5ad` (obsm `X_scmamba2_zeroshot`, `X_scmamba2`, `X_pca50_baseline`), "
        "`umap_scmamba2_zeroshot.png`, `umap_scmamba2.png`, `umap_pca50_baseline.png`, `model/<build>/` (the "
        "fine-tuned checkpoints, with `logs/metrics.csv`).",
    ]
    report = "\n".join(lines) + "\n"
    write_text(out / "report.md", report)
    write_json(out / "metrics.json", {
        **{f"{k.removeprefix('X_')}": v[1] for k, v in rows.items()},
        **{f"{k.removeprefix('X_')}_{DEFAULT_MODEL}_alone": v[1] for k, v in alone.items()},
        "val_start": {n: r.val_start for n, r in tuned.items()}, "val_end": {n: r.val_end for n, r in tuned.items()},
        "seconds_total": wall, "seconds_finetune": t_train, "seconds_zeroshot_embed": t_zero,
    }, indent=2)
    return report
