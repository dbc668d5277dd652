"""Benchmark: cell-type annotation on real data, scmamba2 with logistic regression and CellTypist in the same run.

    .venv/bin/python benchmarks/annotate.py [--data-dir ../shared/data] [--out benchmarks/results] [--seed 0] [--quick]

Writes ``<out>/annotate.md``, ``<out>/annotate.json`` and confusion-matrix PNGs (the logic is in :mod:`scmamba2.bench.annotate`).
"""

# benchmarks/ holds a script named like the standard-library module ``tokenize``: keep this folder off sys.path
# before anything imports the standard one.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from scmamba2.bench.script import main  # noqa: E402

if __name__ == "__main__":
    main("annotate", __doc__, "Small and fast: fewer cells and steps.")
