"""Benchmark: pretrain a small model on the pooled real raw-count files of ../shared/data.

    .venv/bin/python benchmarks/pretrain_real.py [--data-dir DIR] [--out DIR] [--seed 0] [--quick]

Writes ``<out>/pretrain_real.md`` (+ ``.json``, the loss-curve PNG, and the run folder with the checkpoint and
``logs/metrics.csv``). The logic lives in :mod:`scmamba2.bench.pretrain_real`.
"""

# benchmarks/ holds a script named like the standard-library module ``tokenize``: keep this folder off sys.path
# before anything imports the standard one.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from scmamba2.bench.script import main  # noqa: E402

if __name__ == "__main__":
    main("pretrain_real", __doc__, "300 cells per file, 40 steps: a smoke test.")
