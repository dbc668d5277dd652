"""Would two pretrained models read cells better than one? Concatenated embeddings and averaged weights.

    .venv/bin/python benchmarks/ensemble.py --member ship=bundled --member seed1=out/bundled_run_seed1 ...
                                            [--pair ship+seed1] [--soup ship+bf16] [--out benchmarks/results]

Each ``--member NAME=DIR`` is a finished pretraining run (``bundled`` = the default model alone), e.g. the builds that
``benchmarks/bundled_ablation.py --build`` leaves in ``out/bundled_run_<tag>``; they must share the vocabulary.
Every member, every ``--pair A+B`` (embed's default embedding of each, side by side: in the profile metric the
squared distance is the sum of the two models' decoded-profile distances) and every ``--soup A+B+...`` (the
members' weights averaged, one model; only meaningful for runs that start from the same initialisation, i.e.
the same seed) is scored like the readout benchmark: 5-fold kNN (k=15, averaged over ``--splits`` fold seeds) of ``cell_type`` on its two selection
sets (Kang training donors, ifnb1k; they decide), its two evaluation sets (pbmc3k, Kang held-out donors) and the
quickstart's data (pbmc68k_reduced, ``bulk_labels``), PCA-50 of each set's cells beside. Writes
``<out>/ensemble.md`` and ``.json``. One torch thread.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

_HERE = Path(os.path.dirname(os.path.abspath(__file__)))
SELECTION = ("Kang training donors (3,000 cells)", "ifnb1k")
QUICKSTART = "pbmc68k_reduced (quickstart)"


def _named(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--member takes NAME=DIR, got {item!r}")
        out[name] = path
    return out


def _soup(models: list):
    """One model whose every floating-point tensor is the mean of the members' (buffers that are not floats:
    the first member's)."""
    import copy

    import torch

    out = copy.deepcopy(models[0])
    states = [m.state_dict() for m in models]
    out.load_state_dict({k: (sum(s[k].double() for s in states) / len(states)).to(v.dtype) if v.is_floating_point()
                         else v for k, v in states[0].items()})
    return out.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--member", action="append", default=[],
                    help="NAME=DIR (a finished run, a bundled model's name, or 'bundled': the default model alone)")
    ap.add_argument("--pair", action="append", default=[], help="A+B: the two members' embeddings side by side")
    ap.add_argument("--soup", action="append", default=[], help="A+B+...: the members' weights averaged")
    ap.add_argument("--data-dir", type=Path, default=_HERE.parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=_HERE / "results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", type=int, default=10, help="kNN fold seeds averaged (seed, seed + 1, ...)")
    ap.add_argument("--quick", action="store_true", help="400 cells a readout set: a plumbing check")
    args = ap.parse_args()

    import pandas as pd
    import scanpy as sc
    import torch

    torch.set_num_threads(1)
    from scmamba2.bench.readout import _sets
    from scmamba2.quickstart import LABEL_KEY, pca_baseline
    from scmamba2.tasks.embed import embed, load_model
    from zero_shot_splits import split_scores  # this folder's script: kNN scores over several fold seeds

    models = {k: load_model(v).eval() for k, v in _named(args.member).items()}  # a run folder or a bundled name
    genes = list(next(iter(models.values())).vocab.genes)
    for k, m in models.items():
        if list(m.vocab.genes) != genes:
            raise SystemExit(f"member {k!r} has another vocabulary: ensembles here need the same pool")
    for spec in args.soup:
        models[f"soup {spec}"] = _soup([models[k] for k in spec.split("+")])

    def sets():
        yield from _sets(args.data_dir, args.seed, args.quick)
        q = sc.datasets.pbmc68k_reduced()
        q.obs["cell_type"] = q.obs[LABEL_KEY].astype(str)
        yield QUICKSTART, "report", q, pca_baseline(q, args.seed)

    def scores(x, labels) -> dict:  # each score's mean over the fold seeds
        runs = split_scores(labels, x, range(args.seed, args.seed + args.splits))
        return {key: float(v.mean()) for key, v in runs.items()}

    t0, rows = time.perf_counter(), []
    for name, role, a, pca in sets():
        labels = a.obs["cell_type"].astype(str).to_numpy()
        use_raw = name == QUICKSTART
        if not use_raw:
            a = a[:, a.var_names.isin(genes)].copy()
        rows.append({"set": name, "role": role, "embedding": "PCA-50 of these cells", **scores(pca, labels)})
        emb = {}
        for k, m in models.items():
            emb[k] = embed(a, m, use_raw=use_raw, progress=False, copy=True).obsm["X_scmamba2"]
            rows.append({"set": name, "role": role, "embedding": k, **scores(emb[k], labels)})
        for spec in args.pair:
            both = np.hstack([emb[k] for k in spec.split("+")])
            rows.append({"set": name, "role": role, "embedding": f"pair {spec}", **scores(both, labels)})
        print(name, "done", flush=True)
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index="embedding", columns="set", values="kNN macro-F1", sort=False)
    wide["selection mean"] = wide[list(SELECTION)].mean(axis=1)
    lines = ["# Ensembles of pretrained models: side-by-side embeddings and averaged weights", "",
             f"Regenerate: `.venv/bin/python benchmarks/ensemble.py {' '.join(f'--member {m}' for m in args.member)} "
             f"{' '.join(f'--pair {p}' for p in args.pair)} {' '.join(f'--soup {s}' for s in args.soup)}`. "
             + " ".join(__doc__.split("\n\n")[2].split()), "",
             "Members: " + ", ".join(f"`{k}` = `{v}`" for k, v in _named(args.member).items()) + ".", "",
             f"## kNN macro-F1 (5-fold, k=15; mean over {args.splits} fold seeds)", "",
             "| embedding | " + " | ".join(wide.columns) + " |", "|---|" + "---|" * len(wide.columns)]
    lines += [f"| {i} | " + " | ".join(f"{v:.3f}" for v in r) + " |" for i, r in wide.iterrows()]
    lines += ["", "## kNN accuracy / macro-F1", "", "| set | role | embedding | accuracy | macro-F1 |", "|---|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['role']} | {r['embedding']} | {r['kNN accuracy']:.3f} | {r['kNN macro-F1']:.3f} |"
              for r in rows]
    lines += ["", f"Wall time {(time.perf_counter() - t0) / 60:.1f} min, one thread. Scores: means over "
              f"{args.splits} kNN fold seeds; a model's own seed moves the selection sets' mean macro-F1 by ~0.005 "
              "(bundled_ablation.md)."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ensemble.md").write_text("\n".join(lines) + "\n")
    (args.out / "ensemble.json").write_text(json.dumps({"members": _named(args.member), "pairs": args.pair,
                                                        "soups": args.soup, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
