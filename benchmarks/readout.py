"""Benchmark: how the bundled model reads a cell at inference (genes per cell, embedding metric), chosen on
sets it was pretrained on and reported on pbmc3k and Kang's held-out donors, PCA-50 beside.

    .venv/bin/python benchmarks/readout.py [--data-dir DIR] [--out DIR] [--seed 0] [--quick]

Writes ``<out>/readout.md`` (+ ``.json``). The logic lives in :mod:`scmamba2.bench.readout`.
"""

from scmamba2.bench.script import main

if __name__ == "__main__":
    main("readout", __doc__, "400 cells a set: a plumbing check.")
