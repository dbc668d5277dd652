"""Benchmark: multi-omics on real data: protein prediction from RNA (scmamba2, kNN on RNA PCA, totalVI) and the joint embedding (scIB batch metrics).

    .venv/bin/python benchmarks/multiomics.py [--data-dir ../shared/data] [--out benchmarks/results] [--seed 0] [--quick]

Writes ``<out>/multiomics.md``, ``<out>/multiomics.json`` and the PNGs (the logic is in :mod:`scmamba2.bench.multiomics`).
"""

# benchmarks/ holds a script named like the standard-library module ``tokenize``: keep this folder off sys.path
# before anything imports the standard one.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from scmamba2.bench.script import main  # noqa: E402

if __name__ == "__main__":
    main("multiomics", __doc__, "Small and fast: few steps and epochs (a plumbing check, not a result).")
