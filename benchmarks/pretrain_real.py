"""Benchmark: pretrain a small model on the pooled real raw-count files of ../shared/data.

    .venv/bin/python benchmarks/pretrain_real.py [--data-dir DIR] [--out DIR] [--seed 0] [--quick]

Writes ``<out>/pretrain_real.md`` (+ ``.json``, the loss-curve PNG, and the run folder with the checkpoint and
``logs/metrics.csv``). The logic lives in :mod:`scmamba2.bench.pretrain_real`.
"""

from scmamba2.bench.script import main

if __name__ == "__main__":
    main("pretrain_real", __doc__, "300 cells per file, 40 steps: a smoke test.")
