"""Benchmark: perturbation response and reverse perturbation on real data, with the baselines in the same run.

    .venv/bin/python benchmarks/perturb.py [--data-dir ../shared/data] [--out benchmarks/results] [--seed 0] [--quick]

Writes ``<out>/perturb.md`` and ``<out>/perturb.json`` (the logic is in :mod:`scmamba2.bench.perturb`).
"""

# benchmarks/ holds a script named like the standard-library module ``tokenize``: keep this folder off sys.path
# before anything imports the standard one.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from scmamba2.bench.script import main  # noqa: E402

if __name__ == "__main__":
    main("perturb", __doc__, "Small and fast: one fold, few steps.")
