"""Benchmark: cell-type annotation on real data, scmamba2 with logistic regression and CellTypist in the same run.

    .venv/bin/python benchmarks/annotate.py [--data-dir ../shared/data] [--out benchmarks/results] [--seed 0] [--quick]

Writes ``<out>/annotate.md``, ``<out>/annotate.json`` and confusion-matrix PNGs (the logic is in :mod:`scmamba2.bench.annotate`).
"""

from scmamba2.bench.script import main

if __name__ == "__main__":
    main("annotate", __doc__, "Small and fast: fewer cells and steps.")
