"""Benchmark: throughput of the streaming data path (read, bin, tokenise, collate) against training.

    .venv/bin/python benchmarks/pretrain.py [--data-dir ../shared/data] [--out benchmarks/results] [--seed 0] [--quick]

Writes ``<out>/pretrain.md`` and ``<out>/pretrain.json`` (the logic is in :mod:`scmamba2.bench.pretrain`).
"""

# benchmarks/ holds a script named like the standard-library module ``tokenize``: keep this folder off sys.path
# before anything imports the standard one.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from scmamba2.bench.script import main  # noqa: E402

if __name__ == "__main__":
    main("pretrain", __doc__, "Few batches and steps.")
