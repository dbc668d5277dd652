"""Benchmark: how the bundled model reads a cell at inference (genes per cell, embedding metric), chosen on
sets it was pretrained on and reported on pbmc3k and Kang's held-out donors, PCA-50 beside.

    .venv/bin/python benchmarks/readout.py [--data-dir DIR] [--out DIR] [--seed 0] [--quick]

Writes ``<out>/readout.md`` (+ ``.json``). The logic lives in :mod:`scmamba2.bench.readout`.
"""

# benchmarks/ holds a script named like the standard-library module ``tokenize``: keep this folder off sys.path
# before anything imports the standard one.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from scmamba2.bench.script import main  # noqa: E402

if __name__ == "__main__":
    main("readout", __doc__, "400 cells a set: a plumbing check.")
