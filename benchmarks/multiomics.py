"""Benchmark: multi-omics on real data: protein prediction from RNA (scmamba2, kNN on RNA PCA, totalVI) and the joint embedding (scIB batch metrics).

    .venv/bin/python benchmarks/multiomics.py [--data-dir ../shared/data] [--out benchmarks/results] [--seed 0] [--quick]

Writes ``<out>/multiomics.md``, ``<out>/multiomics.json`` and the PNGs (the logic is in :mod:`scmamba2.bench.multiomics`).
"""

from scmamba2.bench.script import main

if __name__ == "__main__":
    main("multiomics", __doc__, "Small and fast: few steps and epochs (a plumbing check, not a result).")
