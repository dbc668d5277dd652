"""Benchmark: does the cell embedding learn cell state? Pretraining recipes and the bundled model against
PCA-50 and scVI, in the same run, on pbmc3k and on Kang's held-out donors.

    .venv/bin/python benchmarks/representation.py [--data-dir DIR] [--out DIR] [--seed 0] [--quick]

Writes ``<out>/representation.md`` (+ ``.json``). The logic lives in :mod:`scmamba2.bench.representation`.
"""

# benchmarks/ holds a script named like the standard-library module ``tokenize``: keep this folder off sys.path
# before anything imports the standard one.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from scmamba2.bench.script import main  # noqa: E402

if __name__ == "__main__":
    main("representation", __doc__, "600 cells, two recipes of 40 steps: a plumbing check.")
