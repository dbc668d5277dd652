"""``scmamba2 bench``: run the task benchmarks one after the other and write one report.

Each task is a module with ``run(...) -> BenchResult`` (see :data:`TASKS`). The runner reads ``run``'s signature
and passes what it asks for: ``data_dir`` (a folder with the chosen datasets), ``datasets`` (name -> path),
``adatas`` (name -> AnnData, read on demand), ``out_dir``, ``seed``, ``quick``. A module may list the dataset
names it can use in ``DATASETS``, and may define ``accepts(record) -> bool`` for the registry's other sets (those
whose canonical obs columns it can read); when the user chose datasets with ``--data`` and the task reads none of
them, the task is skipped with that reason. Only the datasets some chosen task reads are fetched. A missing
module or a task that raises is recorded in the report and the run goes on with the next task.
"""

from __future__ import annotations

import datetime as _dt
import gc
import importlib
import inspect
import logging
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from .report import TaskOutcome, build_report, environment
from .result import BenchResult

log = logging.getLogger(__name__)

# task -> candidate modules, the first that exists is used
TASKS: dict[str, tuple[str, ...]] = {
    "pretrain": ("scmamba2.bench.pretrain",),  # streaming data path vs training throughput
    "pretrain_real": ("scmamba2.bench.pretrain_real",),  # pretraining on the pooled real files, kNN vs PCA
    "representation": ("scmamba2.bench.representation",),  # pretraining recipes' embeddings vs PCA and scVI
    "readout": ("scmamba2.bench.readout",),  # the bundled model's inference readout, chosen on seen sets
    "annotate": ("scmamba2.bench.annotate",),
    "integrate": ("scmamba2.bench.integrate",),
    "multiomics": ("scmamba2.bench.multiomics",),
    "perturb": ("scmamba2.bench.perturb",),
}
_DATA_DIR = ("data_dir", "data_root", "shared_dir")
_DATASETS = ("datasets", "data_paths", "paths", "files")
_OUT = ("out_dir", "out", "output_dir", "results_dir")


def run_benchmarks(tasks: list[str] | None = None, *, datasets: list[str] | None = None,
                   out_dir: str | Path = "benchmarks/results", seed: int = 0, quick: bool = False,
                   cache: str | Path | None = None, shared_dir: str | Path | None = None,
                   command: str = "scmamba2 bench", on_task: Callable[[TaskOutcome], None] | None = None,
                   ) -> tuple[list[TaskOutcome], dict[str, Path]]:
    """Run ``tasks`` (default: every task in :data:`TASKS`) and write ``report.md/.html/.json`` to ``out_dir``
    (``report_quick.*`` with ``quick``, and each task's ``<task>_quick.*``, so a quick run never replaces full results).

    Parameters
    ----------
    tasks
        Task names from :data:`TASKS`; ``None`` runs them all.
    datasets
        Dataset names (``scmamba2 datasets list``; ``local`` stands for every file of the local data folder),
        fetched with :func:`scmamba2.datasets.get`. ``None``: each task uses its default data (the local folder).
    out_dir
        Where each task writes ``<task>.md/.json`` and its PNGs, and where the report goes.
    seed, quick
        Passed to every task.
    cache, shared_dir
        Dataset cache and local data folder (see :mod:`scmamba2.datasets`).
    on_task
        Called with each :class:`TaskOutcome` when its task ends (the CLI prints a line).

    Returns
    -------
    (outcomes, paths)
        One outcome per task, and the report's paths.
    """
    from ..datasets import get, shared_data_dir

    tasks = list(tasks) if tasks else list(TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        from ..errors import InputError

        raise InputError(f"unknown task(s) {unknown}; known tasks: {', '.join(TASKS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    started = _now()
    run_info: dict[str, Any] = {"command": command, "seed": seed, "quick": quick, "datasets": list(datasets or []),
                                "started": started, "finished": None}
    if datasets and "local" in datasets:  # "local": every dataset of the local data folder
        from ..datasets import list_datasets

        local = [r.name for r in list_datasets(shared_dir) if r.source == "local"]
        datasets = list(dict.fromkeys(n for d in datasets for n in (local if d == "local" else [d])))
        run_info["datasets"] = datasets
    if datasets:  # fetch only what some task reads: a public set no task reads is never downloaded
        read_by = {t: _reads(t, datasets, shared_dir) for t in tasks}
        used = [n for n in datasets if any(names is None or n in names for names in read_by.values())]
        unused = [n for n in datasets if n not in used]
        if unused:
            log.warning("no chosen task reads %s; not fetched", ", ".join(unused))
            run_info["datasets_not_read"] = unused
        datasets = used
    paths_by_name = {name: get(name, cache=cache, shared_dir=shared_dir) for name in (datasets or [])}
    run_info["dataset_paths"] = {k: str(v) for k, v in paths_by_name.items()}
    outcomes = [TaskOutcome(t, "pending") for t in tasks]
    with tempfile.TemporaryDirectory(prefix="scmamba2-bench-data-") as view:
        data_dir = _data_view(paths_by_name, Path(view), shared_dir) if paths_by_name else shared_data_dir(shared_dir)
        for i, task in enumerate(tasks):
            outcomes[i] = run_task(task, data_dir=data_dir, datasets=paths_by_name, out_dir=out, seed=seed,
                                   quick=quick, shared_dir=shared_dir)
            if on_task is not None:
                on_task(outcomes[i])
            run_info["finished"] = _now()
            # after every task: a crash keeps the rest; a quick run never replaces the full report
            paths = build_report(outcomes, out, run=run_info, env=env, name="report_quick" if quick else "report")
            gc.collect()
    return outcomes, paths


def collect_benchmarks(tasks: list[str] | None = None, *, out_dir: str | Path = "benchmarks/results",
                       command: str = "scmamba2 bench --collect") -> tuple[list[TaskOutcome], dict[str, Path]]:
    """Write the report from the results the task benchmarks already wrote into ``out_dir`` (``<task>.json``,
    else ``<task>_quick.json``), without running anything. Each task's own JSON keeps its settings and step
    times; a task with no result file is reported as missing."""
    import json

    tasks = list(tasks) if tasks else list(TASKS)
    out = Path(out_dir)
    outcomes = []
    for task in tasks:
        found = [p for p in (out / f"{task}.json", out / f"{task}_quick.json") if p.is_file()]
        if not found:
            outcomes.append(TaskOutcome(task, "missing", error=f"no {task}.json in {out}: run its benchmark"))
            continue
        res = BenchResult.from_json(json.loads(found[0].read_text()), out)
        res.meta.setdefault("result_file", found[0].name)
        outcomes.append(TaskOutcome(task, "ok", result=res, wall_s=sum(s.wall_s for s in res.steps),
                                    cpu_s=sum(s.cpu_s for s in res.steps)))
    run_info = {"command": command, "collected": True, "started": _now(), "finished": _now()}
    return outcomes, build_report(outcomes, out, run=run_info, env=environment())


def _import(task: str):
    """(module, None), or (None, the outcome that says why the task cannot run)."""
    for name in TASKS[task]:
        try:
            return importlib.import_module(name), None
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            return None, TaskOutcome(task, "failed", error=f"importing {name}: {e}", traceback=_tb())
        except Exception as e:  # noqa: BLE001 - a broken module must not stop the other tasks
            return None, TaskOutcome(task, "failed", error=f"importing {name}: {type(e).__name__}: {e}",
                                     traceback=_tb())
    return None, TaskOutcome(task, "missing", error=f"no module {' or '.join(TASKS[task])} (no benchmark for it yet)")


def _reads(task: str, names, shared_dir=None) -> list[str] | None:
    """Which of ``names`` the task's module reads: those in its ``DATASETS``, and registry sets its
    ``accepts(record)`` takes. ``None``: the module lists neither (it takes whatever it is given) or is absent."""
    from ..datasets import get_record

    module, _ = _import(task)
    wanted, accepts = getattr(module, "DATASETS", None), getattr(module, "accepts", None)
    if module is None or (wanted is None and accepts is None):
        return None
    out = []
    for n in names:
        if wanted is not None and n in set(wanted):
            out.append(n)
        elif accepts is not None:
            try:
                if accepts(get_record(n, shared_dir)):
                    out.append(n)
            except Exception:  # noqa: BLE001 - an unknown name is reported by get() later
                pass
    return out


def run_task(task: str, *, data_dir: Path | None, datasets: dict[str, Path], out_dir: Path, seed: int,
             quick: bool, shared_dir=None) -> TaskOutcome:
    """Import and run one task; a missing module, a refusal or an exception becomes the outcome's status."""
    module, failed = _import(task)
    if module is None:
        return failed
    run = getattr(module, "run", None)
    if not callable(run):
        return TaskOutcome(task, "missing", error=f"{module.__name__} has no run() function")
    chosen = dict(datasets)
    reads = _reads(task, list(datasets), shared_dir) if datasets else None
    if reads is not None:
        chosen = {k: v for k, v in datasets.items() if k in reads}
        if not chosen:
            wanted = ", ".join(getattr(module, "DATASETS", ()) or ())
            extra = "; " + module.accepts.__doc__.strip().splitlines()[0] if hasattr(module, "accepts") else ""
            return TaskOutcome(task, "skipped", error=f"none of the chosen datasets is one it reads ({wanted}{extra})")
    try:
        kwargs = _arguments(run, data_dir=data_dir, datasets=chosen, out_dir=out_dir, seed=seed, quick=quick)
    except TypeError as e:
        return TaskOutcome(task, "failed", error=str(e))
    log.info("bench %s: %s.run(%s)", task, module.__name__, ", ".join(kwargs))
    from .report import code_version

    code = code_version()
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        result = run(**kwargs)
        if not isinstance(result, BenchResult):
            raise TypeError(f"{module.__name__}.run returned {type(result).__name__}, not a BenchResult")
        result.meta.setdefault("code_version", code)
        # never under the full result's name: <task>_quick.*, as the benchmark scripts write it
        result.write(out_dir, stem=f"{result.task}_quick" if quick and not result.task.endswith("_quick") else None)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the report states the failure, the run goes on
        if isinstance(e, SystemExit) and e.code == 143:  # a SIGTERM stops the whole run, not one task
            raise
        return TaskOutcome(task, "failed", error=f"{type(e).__name__}: {e}", traceback=_tb(),
                           wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0, datasets=list(chosen))
    return TaskOutcome(task, "ok", result=result, wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0,
                       datasets=list(chosen))


def _arguments(run: Callable, *, data_dir, datasets, out_dir, seed, quick) -> dict[str, Any]:
    """The keyword arguments ``run`` accepts, by parameter name; a required one we cannot supply is a TypeError."""
    sig = inspect.signature(run)
    kwargs: dict[str, Any] = {}
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in _DATA_DIR:
            if data_dir is not None:
                kwargs[name] = Path(data_dir)
        elif name in _DATASETS:
            if datasets:
                kwargs[name] = dict(datasets)
        elif name == "adatas":
            if datasets:
                from ..data.io import read

                kwargs[name] = {k: read(v) for k, v in datasets.items()}
        elif name in _OUT:
            kwargs[name] = Path(out_dir)
        elif name == "seed":
            kwargs[name] = seed
        elif name == "quick":
            kwargs[name] = quick
        if name not in kwargs and p.default is p.empty:
            raise TypeError(f"run() needs an argument {name!r} that scmamba2 bench cannot supply "
                            f"(it passes {', '.join(_DATA_DIR + _DATASETS + _OUT)}, adatas, seed, quick)")
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        kwargs.setdefault("out_dir", Path(out_dir))
        kwargs.setdefault("seed", seed)
        kwargs.setdefault("quick", quick)
    return kwargs


def _data_view(paths: dict[str, Path], view: Path, shared_dir=None) -> Path:
    """A folder of links to the chosen datasets (and their side files) under their own file names."""
    from ..datasets import get_record

    for name, path in paths.items():
        links = [(path, f"{name}{path.suffix}")]  # under the dataset's name, which is what a task asks for
        try:
            rec = get_record(name, shared_dir)
            if rec.local_path is not None:  # side files (ATAC fragments, ...) sit beside the main one
                root = rec.local_path.parent
                links += [(root / f.filename.split("/")[0], f.filename.split("/")[0]) for f in rec.files]
        except Exception:  # noqa: BLE001 - a record that cannot be re-read still gets its main link
            pass
        for src, link_name in links:
            dst = view / link_name
            if src.exists() and not dst.exists():
                dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
    return view


def _tb(limit: int = 40) -> str:
    lines = traceback.format_exc().rstrip().splitlines()
    return "\n".join(lines[-limit:])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
