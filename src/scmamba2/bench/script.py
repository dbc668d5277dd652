"""The command line of the ``benchmarks/<task>.py`` scripts: one task's ``run()``, its results file, nothing else.

``scmamba2 bench TASK`` does the same through the runner and also rebuilds the combined report.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def main(task: str, doc: str, quick_help: str = "Small and fast: a plumbing check, not a result.",
         argv: list[str] | None = None) -> Path:
    """Parse ``--data-dir``, ``--out``, ``--seed``, ``--quick``; run ``scmamba2.bench.<task>.run``; write
    ``<out>/<task>.md`` and ``.json`` (``<task>_quick`` with ``--quick``); print the markdown path."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from .._malloc import tune_cpu_allocator

    tune_cpu_allocator()
    from .report import code_version

    run = importlib.import_module(f"scmamba2.bench.{task}").run
    code = code_version()  # before running: the code that was imported
    t0 = time.perf_counter()
    try:
        res = run(data_dir=args.data_dir, out_dir=args.out, seed=args.seed, quick=args.quick)
    except ModuleNotFoundError as e:  # a baseline's package (scvi-tools, celltypist, ...): the bench extra
        raise SystemExit(f"benchmark {task} needs the package {e.name!r}, one of the benchmarks' dependencies: "
                         "pip install -e '.[bench]'") from None
    res.meta["code_version"] = code
    res.meta["wall_minutes"] = round((time.perf_counter() - t0) / 60, 2)
    md = res.write(args.out, stem=f"{task}_quick" if args.quick else task)
    print(f"wrote {md}")
    return md
