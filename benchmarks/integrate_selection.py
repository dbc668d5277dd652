"""Benchmark: the integration benchmark's methods on the two Kang ctrl/stim files it does not score (selection sets).

    .venv/bin/python benchmarks/integrate_selection.py [--data-dir ../shared/data] [--out benchmarks/results]

``kang_muscat_ctrl_stim.h5ad`` and ``kang_harmony_ctrl_stim.h5ad`` (batch = ``batch``, the ctrl/stim condition;
labels = ``cell_type``), with the settings and methods of :mod:`scmamba2.bench.integrate`. Integration choices
(standardising before Harmony, whether ``--method finetune`` adds Harmony) are made here, not on ``integrate.md``'s
sets. Writes ``<out>/integrate_selection.md`` / ``.json`` and UMAP PNGs.
"""

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETS = ("kang_muscat_ctrl_stim", "kang_harmony_ctrl_stim")


def main() -> None:
    from scmamba2.bench.integrate import run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    res = run(data_dir=args.data_dir, out_dir=args.out, seed=args.seed, datasets=SETS)
    res.meta["command"] = ".venv/bin/python benchmarks/integrate_selection.py"
    print(f"wrote {res.write(args.out, stem='integrate_selection')}")


if __name__ == "__main__":
    main()
