"""Benchmark: batch integration on real data, scmamba2 with PCA, Harmony and scVI in the same run (scIB metrics).

    .venv/bin/python benchmarks/integrate.py [--data-dir ../shared/data] [--out benchmarks/results] [--seed 0] [--quick]

Writes ``<out>/integrate.md``, ``<out>/integrate.json`` and the UMAP PNGs (the logic is in :mod:`scmamba2.bench.integrate`).
"""

from scmamba2.bench.script import main

if __name__ == "__main__":
    main("integrate", __doc__, "Small and fast: fewer cells, steps and epochs, the fast scIB metric set.")
