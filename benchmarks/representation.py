"""Benchmark: does the cell embedding learn cell state? Pretraining recipes and the bundled model against
PCA-50 and scVI, in the same run, on pbmc3k and on Kang's held-out donors.

    .venv/bin/python benchmarks/representation.py [--data-dir DIR] [--out DIR] [--seed 0] [--quick]

Writes ``<out>/representation.md`` (+ ``.json``). The logic lives in :mod:`scmamba2.bench.representation`.
"""

from scmamba2.bench.script import main

if __name__ == "__main__":
    main("representation", __doc__, "600 cells, two recipes of 40 steps: a plumbing check.")
