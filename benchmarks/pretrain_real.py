"""Benchmark: pretrain a small model on the pooled real raw-count files of ../shared/data.

    .venv/bin/python benchmarks/pretrain_real.py [--data-dir DIR] [--out DIR] [--seed 0] [--quick]

Writes ``<out>/pretrain_real.md`` (+ ``.json``, the loss-curve PNG, and the run folder with the checkpoint and
``logs/metrics.csv``). The logic lives in :mod:`scmamba2.bench.pretrain_real`.
"""

# benchmarks/ holds a script named like the standard-library ``tokenize``: keep this folder off sys.path.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300 cells per file, 40 steps: a smoke test")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from scmamba2._malloc import tune_cpu_allocator
    from scmamba2.bench.pretrain_real import run

    tune_cpu_allocator()
    t0, c0 = time.perf_counter(), time.process_time()
    res = run(args.data_dir, args.out, seed=args.seed, quick=args.quick)
    res.meta["wall_minutes"] = (time.perf_counter() - t0) / 60
    res.meta["cpu_minutes_main_process"] = (time.process_time() - c0) / 60
    md = res.write(args.out)
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
