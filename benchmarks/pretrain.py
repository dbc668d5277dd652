"""Benchmark: throughput of the streaming data path (read, bin, tokenise, collate) against training.

    .venv/bin/python benchmarks/pretrain.py [--data-dir ../shared/data] [--out benchmarks/results] [--seed 0] [--quick]

Writes ``<out>/pretrain.md`` and ``<out>/pretrain.json`` (the logic is in :mod:`scmamba2.bench.pretrain`).
"""

from scmamba2.bench.script import main

if __name__ == "__main__":
    main("pretrain", __doc__, "Few batches and steps.")
