"""Benchmark: multi-omics on real data: protein prediction from RNA (scmamba2, kNN on RNA PCA, totalVI) and the joint embedding (scIB batch metrics).

    .venv/bin/python benchmarks/multiomics.py [--data-dir ../shared/data] [--out benchmarks/results] [--seed 0] [--quick]

Writes ``<out>/multiomics.md``, ``<out>/multiomics.json`` and the PNGs (the logic is in :mod:`scmamba2.bench.multiomics`).
"""

# This folder holds a script named like the standard-library module ``tokenize``: drop the folder from
# sys.path before anything imports the standard one.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from scmamba2.bench.multiomics import run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="Small and fast: few steps and epochs (a plumbing check, not a result).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = run(data_dir=args.data_dir, out_dir=args.out, seed=args.seed, quick=args.quick)
    md = res.write(args.out, stem="multiomics_quick" if args.quick else "multiomics")
    print(md.read_text())


if __name__ == "__main__":
    main()
