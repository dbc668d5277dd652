"""``scmamba2 datasets`` (list, get) and ``scmamba2 bench``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ._common import _user_errors, app, err, out


# --- datasets and bench (issue: datasets registry and report) ---

datasets_app = typer.Typer(no_args_is_help=True, help="The public benchmark datasets and the local ones: list, get.")
app.add_typer(datasets_app, name="datasets")
CacheOpt = typer.Option(None, "--dir", help="Dataset cache (default $SCMAMBA2_DATA or ~/.cache/scmamba2).")
SharedOpt = typer.Option(None, "--shared-dir",
                         help="Local data folder (default $SCMAMBA2_SHARED_DATA or ../shared/data).")


@datasets_app.command("list")
def datasets_list(cache: Optional[Path] = CacheOpt, shared_dir: Optional[Path] = SharedOpt) -> None:
    """Every registered dataset: remote or local, tasks, shape, the obs columns the tasks use, licence, whether a
    checksum is known and where it is."""
    from rich.table import Table

    from ..datasets import cache_dir, list_datasets

    with _user_errors():
        table = Table(box=None, header_style="bold")
        for col in ("name", "source", "tasks", "cells x features", "obs columns", "licence", "sha256", "status"):
            table.add_column(col, overflow="fold", no_wrap=col not in ("licence", "obs columns"))
        root = cache_dir(cache)
        for r in list_datasets(shared_dir):
            if r.source == "local":
                status = "on disk"
            elif any((root / r.name / f"{r.name}{e}").exists() for e in (".h5ad", ".h5mu")):
                status = "cached"
            else:
                status = "manual" if r.manual else "download"
            known = "yes" if r.files and all(f.sha256 for f in r.files) else "no"
            licence = r.licence.split(" (")[0].split(";")[0]  # the short form; the record has the rest
            licence = "not stated" if licence.startswith("not stated") else licence
            table.add_row(r.name, r.source, ",".join(r.tasks) or "-", r.shape, ",".join(r.obs_keys) or "-", licence,
                          known, status)
        Console(width=max(out.width, 150)).print(table)  # one row per dataset, also in a narrow pipe


@datasets_app.command("get")
def datasets_get(name: str = typer.Argument(..., help="A name from `scmamba2 datasets list`."),
                 cache: Optional[Path] = CacheOpt, shared_dir: Optional[Path] = SharedOpt) -> None:
    """Download (resuming a partial file), check the sha256, cache and convert a dataset; prints its path."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from ..datasets import get

    with _user_errors(), Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), console=err, transient=False) as bar:
        current = {}

        def on_file(f):
            current["id"] = bar.add_task(f.filename, total=None)

        def progress(done, total):
            bar.update(current["id"], completed=done, total=total)

        path = get(name, cache=cache, shared_dir=shared_dir, progress=progress, on_file=on_file)
    out.print(str(path), highlight=False, soft_wrap=True)



@app.command()
def bench(
    tasks: Optional[List[str]] = typer.Argument(None, help="Tasks to run (default: all): pretrain, pretrain_real, representation, readout, annotate, "
                                                "integrate, multiomics, perturb; the other "
                                                "benchmarks are scripts in benchmarks/."),
    data: List[str] = typer.Option([], "--data", help="Dataset name(s), repeat or comma-separate; 'local' = "
                                   "every local file (default: each task's own)."),
    out_dir: Path = typer.Option(Path("benchmarks/results"), "--out",
                                 help="Folder for the task results and the report."),
    seed: int = typer.Option(0, "--seed"),
    quick: bool = typer.Option(False, "--quick", help="Each task's small, fast setting, written as <task>_quick.* and "
                               "report_quick.* (the full results in --out stay)."),
    cache: Optional[Path] = CacheOpt,
    shared_dir: Optional[Path] = SharedOpt,
    strict: bool = typer.Option(False, "--strict", help="Exit with code 1 when a task failed or is missing."),
    collect: bool = typer.Option(False, "--collect", help="Run nothing: write the report from the task results "
                                 "already in --out (each task's <task>.json)."),
) -> None:
    """Run the task benchmarks (ours and the baselines) and write report.md, report.html and report.json."""
    import shlex
    import sys

    from ..bench.runner import collect_benchmarks, run_benchmarks

    names = [n for item in data for n in item.split(",") if n]
    with _user_errors():
        if collect:
            outcomes, paths = collect_benchmarks(tasks or None, out_dir=out_dir)
        else:
            outcomes, paths = run_benchmarks(
                tasks or None, datasets=names or None, out_dir=out_dir, seed=seed, quick=quick, cache=cache,
                shared_dir=shared_dir, command="scmamba2 " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                on_task=lambda o: err.print(f"{o.task}: {o.status} ({o.wall_s:.0f} s)"
                                            f"{': ' + o.error if o.error else ''}", highlight=False, soft_wrap=True))
    out.print(f"report: {paths['md']} | {paths['html']} | {paths['json']}", highlight=False, soft_wrap=True)
    if strict and any(o.status in ("failed", "missing") for o in outcomes):
        raise typer.Exit(1)
