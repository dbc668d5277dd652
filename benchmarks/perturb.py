"""Benchmark: perturbation response and reverse perturbation on real data, with the baselines in the same run.

    .venv/bin/python benchmarks/perturb.py [--data-dir ../shared/data] [--out benchmarks/results] [--seed 0] [--quick]

Writes ``<out>/perturb.md`` and ``<out>/perturb.json`` (the logic is in :mod:`scmamba2.bench.perturb`).
"""

from scmamba2.bench.script import main

if __name__ == "__main__":
    main("perturb", __doc__, "Small and fast: one fold, few steps.")
