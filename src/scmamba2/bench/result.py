"""What a task benchmark returns: tables, figures, notes and the timing of each step."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class Step:
    """One timed step of a benchmark (e.g. "fine-tune scmamba2 on pbmc3k")."""

    name: str
    wall_s: float
    cpu_s: float


@dataclass
class BenchResult:
    """The outcome of one task benchmark.

    ``tables`` maps a title to a DataFrame (one row per method x dataset; ours and the baselines side by side),
    ``figures`` a caption to a PNG path, ``notes`` holds the sentences a reader needs (where we lose, what was
    tried), ``steps`` the timing of each step, ``meta`` the seeds, versions and settings used.
    """

    task: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str):
        """Time a block: ``with result.step("fit baseline"): ...``."""
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.steps.append(Step(name, time.perf_counter() - w0, time.process_time() - c0))

    def to_markdown(self, title: str | None = None, relative_to: str | Path | None = None) -> str:
        """The result as a markdown section (tables, figures with paths relative to ``relative_to``, notes)."""
        lines = [f"# {title or self.task}", ""]
        lines += [f"Machine: {machine_summary()}", ""]
        quick = " --quick" if self.meta.get("quick") else ""
        if self.meta.get("command"):  # a result made by another command than its task's script
            lines += [f"Regenerate: `{self.meta['command']}`", ""]
        else:
            lines += [f"Regenerate: `.venv/bin/python benchmarks/{self.task}.py{quick}` (or `scmamba2 bench {self.task}"
                      f"{quick}`, which also rebuilds report.md)", ""]
        for name, table in self.tables.items():
            lines += [f"## {name}", "", markdown_table(table), ""]
        for caption, path in self.figures.items():
            p = Path(path)
            if relative_to is not None:
                p = Path(os.path.relpath(p, relative_to))
            lines += [f"![{caption}]({p.as_posix()})", ""]
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        if self.steps:
            lines += ["## Steps", "", "| step | wall s | CPU s |", "|---|---|---|"]
            lines += [f"| {s.name} | {s.wall_s:.1f} | {s.cpu_s:.1f} |" for s in self.steps] + [""]
        if self.meta:
            lines += ["## Settings", "", "```json", json.dumps(self.meta, indent=2, default=str), "```", ""]
        return "\n".join(lines)

    def to_json(self, relative_to: str | Path | None = None) -> dict[str, Any]:
        """Every figure and number, JSON-serialisable (figure paths relative to ``relative_to`` when given)."""
        def fig(p) -> str:
            return Path(os.path.relpath(p, relative_to)).as_posix() if relative_to is not None else str(p)

        return {
            "task": self.task,
            "tables": {k: json.loads(v.to_json(orient="records")) for k, v in self.tables.items()},
            "figures": {k: fig(v) for k, v in self.figures.items()},
            "notes": list(self.notes),
            "steps": [s.__dict__ for s in self.steps],
            "meta": self.meta,
            "machine": machine_summary(),
        }

    def write(self, out_dir: str | Path, stem: str | None = None) -> Path:
        """Write ``<stem>.md`` and ``<stem>.json`` into ``out_dir``; returns the markdown path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or self.task
        md = out / f"{stem}.md"
        md.write_text(self.to_markdown(relative_to=out))
        (out / f"{stem}.json").write_text(json.dumps(self.to_json(relative_to=out), indent=2, default=str))
        return md

    @classmethod
    def from_json(cls, d: dict[str, Any], base_dir: str | Path) -> "BenchResult":
        """Read back what :meth:`write` wrote; relative figure paths resolve against ``base_dir`` (a figure
        recorded elsewhere is looked up by its file name in ``base_dir``)."""
        base = Path(base_dir)
        figures = {}
        for caption, p in d.get("figures", {}).items():
            path = Path(p) if Path(p).is_absolute() else base / p
            figures[caption] = path if path.exists() else base / Path(p).name
        return cls(
            task=d["task"],
            tables={k: pd.DataFrame.from_records(v) for k, v in d.get("tables", {}).items()},
            figures=figures,
            notes=list(d.get("notes", [])),
            steps=[Step(**s) for s in d.get("steps", [])],
            meta=dict(d.get("meta", {})),
        )


def machine_summary() -> str:
    """CPU model, cores, Python and torch versions: the context every figure needs."""
    import torch

    from .. import __version__
    from .._sysinfo import cpu_model

    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"scmamba2 {__version__}")


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A DataFrame as a GitHub markdown table (floats with ``floatfmt``, missing values as ``-``)."""
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "-"
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    cols = [str(c) for c in df.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(cell(v) for v in rec) + " |" for rec in df.itertuples(index=False)]
    return "\n".join(rows)
