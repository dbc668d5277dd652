"""Benchmark: how much the bundled model's zero-shot comparison with PCA moves with the kNN folds alone.

The model card scores one 5-fold split (seed 0). This script embeds the same evaluation cells once (embed's
default, the bundled builds side by side, zero-shot; PCA-50 fitted on those cells, as the card does) and repeats
the 5-fold kNN (k=15) label transfer over ``--splits`` fold seeds: the mean and spread of each score, the paired
difference scmamba2 - PCA per split, and in how many splits scmamba2 is at or above PCA.
Nothing is trained or chosen here.

Run from the repository root::

    .venv/bin/python benchmarks/zero_shot_splits.py [--data-dir ../shared/data] [--splits 20]

Writes ``benchmarks/results/zero_shot_splits.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def embeddings(data_dir: Path, model_dir: list[Path] | None = None) -> dict:
    """``{set name: (labels, {method: embedding})}`` for pbmc3k's QC cells and Kang's held-out donors, with
    embed's default (the bundled builds side by side) or the models in ``model_dir`` (side by side)."""
    from scmamba2.bench.representation import load_kang, load_pbmc3k, pbmc3k_qc_cells, pca_train_eval
    from scmamba2.tasks.embed import embed, embedding_models, vocabulary_genes

    models = embedding_models(model_dir or None)[1]
    genes = vocabulary_genes(models)
    out = {}
    for name in ("pbmc3k (2,638 QC cells)", "Kang held-out donors"):
        if name.startswith("pbmc3k"):
            evaluate, pca_cells = pbmc3k_qc_cells(data_dir), load_pbmc3k(data_dir)[0]  # PCA on its 2,000 HVGs
        else:
            evaluate = pca_cells = load_kang(data_dir)[1]
        labels = evaluate.obs["cell_type"].astype(str).to_numpy()
        e = evaluate[:, evaluate.var_names.isin(genes)].copy()
        embed(e, models, progress=False)
        out[name] = (labels, {"scmamba2 zero-shot": e.obsm["X_scmamba2"],
                              "PCA-50": pca_train_eval(pca_cells, pca_cells, seed=0)})
    return out


def split_scores(labels, X, seeds) -> dict[str, np.ndarray]:
    from scmamba2.eval.knn import knn_label_transfer_scores

    rows = [knn_label_transfer_scores(X, labels, seed=s) for s in seeds]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--splits", type=int, default=20, help="fold seeds 0 .. N-1")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    ap.add_argument("--model-dir", type=Path, action="append", default=None,
                    help="a model folder instead of embed's default (repeat: side by side)")
    ap.add_argument("--stem", default="zero_shot_splits", help="name of the result files")
    args = ap.parse_args(argv)
    if not (args.data_dir / "pbmc3k_raw_labeled.h5ad").exists():
        print(f"needs {args.data_dir}/pbmc3k_raw_labeled.h5ad (../shared/data)", file=sys.stderr)
        return 2
    t0 = time.time()
    seeds = list(range(args.splits))
    sets = embeddings(args.data_dir, args.model_dir)
    results, lines = {}, [
        "# Zero-shot vs PCA over kNN fold splits",
        "",
        f"Regenerate: `.venv/bin/python benchmarks/zero_shot_splits.py --splits {args.splits}"
        + "".join(f" --model-dir {d}" for d in args.model_dir or [])
        + (f" --stem {args.stem}" if args.model_dir else "")
        + "`. The zero-shot embedding of " + ("embed's default (the bundled builds side by side)" if args.model_dir
                                                 is None else " + ".join(f"`{d}`" for d in args.model_dir))
        + " and PCA-50 fitted on the evaluated cells (as in the model card), embedded once; the "
        f"5-fold kNN (k=15) label transfer of `cell_type` repeated with fold seeds 0-{args.splits - 1}. Seed 0 is "
        "the model card's split. Paired difference: scmamba2 - PCA on the same split.",
        "",
        "| data | score | scmamba2, seed 0 | PCA, seed 0 | scmamba2 mean +- sd | PCA mean +- sd | paired difference "
        "mean +- sd [min, max] | splits with scmamba2 >= PCA |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (labels, embs) in sets.items():
        ours, pca = (split_scores(labels, embs[m], seeds) for m in ("scmamba2 zero-shot", "PCA-50"))
        results[name] = {m: {k: v.tolist() for k, v in s.items()} for m, s in (("scmamba2", ours), ("PCA-50", pca))}
        for score in ours:
            a, b = ours[score], pca[score]
            d = a - b
            lines.append(f"| {name} | {score} | {a[0]:.3f} | {b[0]:.3f} | {a.mean():.3f} +- {a.std():.3f} | "
                         f"{b.mean():.3f} +- {b.std():.3f} | {d.mean():+.3f} +- {d.std():.3f} [{d.min():+.3f}, "
                         f"{d.max():+.3f}] | {int((d >= 0).sum())} of {len(d)} |")
    lines += ["", f"Wall time {(time.time() - t0) / 60:.1f} min.", ""]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.stem}.md").write_text("\n".join(lines))
    (args.out_dir / f"{args.stem}.json").write_text(json.dumps(dict(seeds=seeds, results=results), indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
