"""How the cell embedding pools its token outputs: the mean against attention pooling, over seeds.

    .venv/bin/python benchmarks/pooling.py [--seeds 0,1,2] [--heads 4] [--sets pbmc3k,kang]
                                           [--data-dir ../shared/data] [--out benchmarks/results]

The representation benchmark's setting (:mod:`scmamba2.bench.representation`: d_model 64 x 2 layers, 250 steps
of 32 cells, at most 256 expressed genes a cell, the default objective: the linear profile decoder; pbmc3k's QC
cells on 2,000 HVGs, trained and scored on the same cells; Kang trained on five donors and scored on the three
held-out ones), each recipe once per seed, 5-fold kNN (k=15) label transfer of ``cell_type`` of the embedding
``embed`` returns. ``cell_pooling="mean"`` averages the token outputs; ``"attention"`` (``pool_heads`` heads,
:class:`scmamba2.nn.pooling.AttentionPool`) starts as that mean and learns per-head weights over the tokens.
A single seed moves these figures by ~0.01-0.03, so the table gives every seed and the mean over seeds.
One thread. Writes ``<out>/pooling.md`` (+ ``.json``).
"""

import argparse
import logging
import os
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--heads", default="4", help="comma-separated pool_heads of the attention rows")
    ap.add_argument("--sets", default="pbmc3k,kang")
    ap.add_argument("--data-dir", type=Path, default=Path(_HERE).parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(_HERE) / "results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import pandas as pd

    from scmamba2._malloc import tune_cpu_allocator
    from scmamba2.bench import representation as rep
    from scmamba2.bench.result import BenchResult
    from scmamba2.eval.knn import knn_label_transfer_scores as knn_scores

    tune_cpu_allocator()
    seeds = [int(s) for s in args.seeds.split(",")]
    objective = dict(gep_weight=0.0, mvc_weight=0.0)
    recipes = {"mean (default)": dict(cell_pooling="mean")}
    recipes.update({f"attention, {h} head{'s' * (int(h) > 1)}": dict(cell_pooling="attention", pool_heads=int(h))
                    for h in args.heads.split(",")})
    res = BenchResult(task="pooling")
    rows = []
    for ds in args.sets.split(","):
        train, evaluate = rep.DATASETS[ds](args.data_dir)
        labels = evaluate.obs["cell_type"].astype(str).to_numpy()
        for seed in seeds:
            for name, model in recipes.items():
                with res.step(f"{ds}, seed {seed}: {name}"):
                    r = rep.run_recipe(name, train, evaluate, seed=seed, recipe=(model, {}, objective))
                rows.append({"dataset": ds, "pooling": name, "seed": seed, **knn_scores(r["X"], labels, seed),
                             "train minutes": round(r["minutes"], 1), "held-out profile loss": r["val"].get("val/profile"),
                             "gene-mean loss": r["val"].get("val/profile_gene_mean")})
                print(rows[-1], flush=True)
    per_seed = pd.DataFrame(rows)
    mean = (per_seed.groupby(["dataset", "pooling"], sort=False)[["kNN accuracy", "kNN macro-F1", "held-out profile loss"]]
            .mean().reset_index())
    res.tables[f"Mean over seeds {args.seeds}"] = mean
    res.tables["Every seed"] = per_seed
    res.notes += [f"Model {rep.MODEL}; train {rep.TRAIN} with GEP and MVC off (the default objective); "
                  f"at most {rep.MAX_LEN} genes a cell.",
                  "Selection rule: a pooling is adopted for the bundled model only if it also reads better on the "
                  "bundled ablation's selection sets (benchmarks/results/bundled_ablation.md)."]
    res.meta = {"seeds": seeds, "recipes": recipes, "sets": args.sets,
                "command": f".venv/bin/python benchmarks/pooling.py --seeds {args.seeds} --heads {args.heads} "
                           f"--sets {args.sets}"}
    print(f"wrote {res.write(args.out, stem='pooling')}")


if __name__ == "__main__":
    main()
