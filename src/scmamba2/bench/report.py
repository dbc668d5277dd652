"""One report from every task benchmark: ``report.md``, a static ``report.html`` and ``report.json``.

The HTML page is a single file: its figures are embedded as base64 PNGs, so it can be mailed or opened from
anywhere. The markdown links the PNGs (copied under ``report_figures/`` when they lie outside the report's
folder). All three state the hardware, the package versions, the seeds and the wall/CPU time of every step.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .result import BenchResult, markdown_table

VERSIONED = ("scmamba2", "torch", "numpy", "scipy", "pandas", "anndata", "scanpy", "mudata", "lightning",
             "scikit-learn", "umap-learn", "scib-metrics", "harmonypy", "scvi-tools", "celltypist", "jax")
FIG_DIR = "report_figures"


@dataclass
class TaskOutcome:
    """What happened to one task in a ``scmamba2 bench`` run.

    ``status`` is ``ok``, ``failed`` (the task raised; ``error`` and ``traceback`` say what), ``missing`` (no
    module for the task yet) or ``skipped`` (e.g. none of its datasets was chosen; ``error`` says why).
    """

    task: str
    status: str
    result: BenchResult | None = None
    error: str | None = None
    traceback: str | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    datasets: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.status not in ("ok", "failed", "missing", "skipped", "pending"):
            raise ValueError(f"unknown status {self.status!r}")


def environment() -> dict[str, Any]:
    """Hardware (CPU, cores, memory, GPU), OS, Python, package versions and the git commit of the checkout."""
    from .._sysinfo import cpu_model

    hw: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gb": _memory_gb(),
                          "gpu": _gpu(), "os": platform.platform(), "python": platform.python_version()}
    versions = {}
    for pkg in VERSIONED:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return {"hardware": hw, "versions": versions, "git_commit": code_version()}


def build_report(outcomes: list[TaskOutcome], out_dir: str | Path, *, run: dict[str, Any] | None = None,
                 env: dict[str, Any] | None = None, title: str = "scmamba2 benchmark report",
                 name: str = "report") -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>.html`` and ``<name>.json`` (``report.*``) into ``out_dir``.

    Parameters
    ----------
    outcomes
        One :class:`TaskOutcome` per task, in the order to show them; failures are reported, not hidden.
    out_dir
        Report folder. Figures outside it are copied to ``out_dir/report_figures/`` for the markdown.
    run
        The run's settings (command, seed, quick, datasets, start and end time) shown at the top.
    env
        :func:`environment` output; computed when ``None``.

    Returns
    -------
    dict
        ``{"md": path, "html": path, "json": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = env if env is not None else environment()
    run = dict(run or {})
    figures = _collect_figures(outcomes, out)
    paths = {ext: out / f"{name}.{ext}" for ext in ("md", "html", "json")}
    _write(paths["md"], _markdown(outcomes, figures, run, env, title))
    _write(paths["html"], _html(outcomes, figures, run, env, title))
    _write(paths["json"], json.dumps(_json(outcomes, figures, run, env, title), indent=2, default=str))
    return paths


# --- figures ---------------------------------------------------------------------------------------------------

@dataclass
class _Fig:
    caption: str
    source: Path
    md_path: str | None  # relative to the report folder; None when the file is missing
    sha256: str | None


def _collect_figures(outcomes: list[TaskOutcome], out: Path) -> dict[tuple[str, str], _Fig]:
    figs = {}
    for o in outcomes:
        if o.result is None:
            continue
        for caption, p in o.result.figures.items():
            p = Path(p)
            if not p.is_file():
                figs[(o.task, caption)] = _Fig(caption, p, None, None)
                continue
            try:
                rel = p.resolve().relative_to(out.resolve())
            except ValueError:  # outside the report folder: copy it in so the markdown link works
                rel = Path(FIG_DIR) / f"{o.task}_{p.name}"
                (out / FIG_DIR).mkdir(exist_ok=True)
                shutil.copyfile(p, out / rel)
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            figs[(o.task, caption)] = _Fig(caption, p, rel.as_posix(), digest)
    return figs


# --- markdown --------------------------------------------------------------------------------------------------

def _markdown(outcomes, figures, run, env, title) -> str:
    hw, lines = env["hardware"], [f"# {title}", ""]
    lines += [f"Generated {run.get('finished') or _now()} by `{run.get('command', 'scmamba2 bench')}`.", ""]
    lines += ["## Machine and settings", "", _env_line(env), ""]
    lines += [f"- seed: {run.get('seed', 'each task its own (Tasks table)')}; quick: {run.get('quick', '-')}",
              f"- datasets: {', '.join(run.get('datasets') or []) or 'the default of each task'}",
              f"- versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}",
              f"- git commit (this report): {env.get('git_commit') or 'unknown'}; each task's own in the Tasks table; "
              f"GPU: {hw.get('gpu') or 'none'}", ""]
    lines += ["## Tasks", "", "| task | status | seed | code | wall s | CPU s | datasets | note |",
              "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        note = (o.error or "").replace("|", "/").replace("\n", " ")[:160]
        lines.append(f"| [{o.task}](#{o.task}) | {o.status} | {_seed(o)} | {_code(o)} | {o.wall_s:.1f} | {o.cpu_s:.1f} | "
                     f"{', '.join(o.datasets) or 'default'} | {note or '-'} |")
    lines.append("")
    for o in outcomes:
        lines += [f'<a id="{o.task}"></a>', "", f"## {o.task}", ""]
        if o.result is None:
            lines += [f"**{o.status}**: {o.error or 'no result'}", ""]
            if o.traceback:
                lines += ["```", o.traceback.rstrip(), "```", ""]
            continue
        res = o.result
        for name, table in res.tables.items():
            lines += [f"### {name}", "", markdown_table(table), ""]
        for caption in res.figures:
            f = figures[(o.task, caption)]
            lines += [f"![{caption}]({f.md_path})" if f.md_path else f"*figure missing: {f.source}*", "",
                      f"*{caption}*", ""]
        if res.notes:
            lines += ["### Notes", ""] + [f"- {n}" for n in res.notes] + [""]
        lines += ["### Steps", "", "| step | wall s | CPU s |", "|---|---|---|"]
        lines += [f"| {s.name} | {s.wall_s:.1f} | {s.cpu_s:.1f} |" for s in res.steps]
        lines += [f"| **total** | {o.wall_s:.1f} | {o.cpu_s:.1f} |", ""]
        if res.meta:
            lines += ["<details><summary>settings</summary>", "", "```json",
                      json.dumps(res.meta, indent=2, default=str), "```", "", "</details>", ""]
    return "\n".join(lines)


def _seed(o) -> str:
    """The seed a task's result was made with (each task records its own; a collected report has no run seed)."""
    return str(o.result.meta.get("seed", "-")) if o.result is not None else "-"


def _code(o) -> str:
    """The commit a task's result was made with, as it recorded it ('-' for results from before this was kept)."""
    return str(o.result.meta.get("code_version") or "-") if o.result is not None else "-"


def _env_line(env) -> str:
    hw = env["hardware"]
    mem = f", {hw['memory_gb']:.0f} GB RAM" if hw.get("memory_gb") else ""
    return f"{hw['cpu']}, {hw['cores']} cores{mem}; {hw['os']}; Python {hw['python']}"


# --- html ------------------------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;border:1px solid #eee}
.ok{color:#176317}.failed{color:#b00020}.missing,.skipped,.pending{color:#8a6d00}pre{background:#f7f7f7;
padding:.6em;overflow-x:auto;font-size:.85em}figure{margin:1em 0}figcaption{font-style:italic;color:#555}"""


def _html(outcomes, figures, run, env, title) -> str:
    e = html.escape
    hw = env["hardware"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p>Generated {e(str(run.get('finished') or _now()))} by "
             f"<code>{e(str(run.get('command', 'scmamba2 bench')))}</code>.</p>",
             "<h2>Machine and settings</h2><ul>", f"<li>{e(_env_line(env))}</li>",
             f"<li>GPU: {e(str(hw.get('gpu') or 'none'))}; git commit: {e(str(env.get('git_commit') or 'unknown'))}</li>",
             f"<li>seed: {e(str(run.get('seed', 'each task its own (Tasks table)')))}; quick: {e(str(run.get('quick', '-')))}</li>",
             f"<li>datasets: {e(', '.join(run.get('datasets') or []) or 'the default of each task')}</li>",
             f"<li>versions: {e(', '.join(f'{k} {v}' for k, v in env['versions'].items()))}</li></ul>",
             "<h2>Tasks</h2><table><tr><th>task</th><th>status</th><th>seed</th><th>code</th><th>wall s</th><th>CPU s</th>"
             "<th>datasets</th>"
             "<th>note</th></tr>"]
    for o in outcomes:
        parts.append(f"<tr><td><a href='#{e(o.task)}'>{e(o.task)}</a></td><td class='{e(o.status)}'>{e(o.status)}"
                     f"</td><td class='n'>{e(_seed(o))}</td><td>{e(_code(o))}</td><td class='n'>{o.wall_s:.1f}</td><td class='n'>{o.cpu_s:.1f}</td>"
                     f"<td>{e(', '.join(o.datasets) or 'default')}</td>"
                     f"<td>{e((o.error or '-')[:200])}</td></tr>")
    parts.append("</table>")
    for o in outcomes:
        parts.append(f"<h2 id='{e(o.task)}'>{e(o.task)}</h2>")
        if o.result is None:
            parts.append(f"<p class='{e(o.status)}'><b>{e(o.status)}</b>: {e(o.error or 'no result')}</p>")
            if o.traceback:
                parts.append(f"<pre>{e(o.traceback)}</pre>")
            continue
        res = o.result
        for name, table in res.tables.items():
            parts.append(f"<h3>{e(name)}</h3>")
            parts.append(table.to_html(index=False, escape=True, na_rep="-", border=0,
                                       float_format=lambda v: f"{v:.3f}"))
        for caption in res.figures:
            parts.append(_img(figures[(o.task, caption)]))
        if res.notes:
            parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{e(n)}</li>" for n in res.notes) + "</ul>")
        rows = "".join(f"<tr><td>{e(s.name)}</td><td class='n'>{s.wall_s:.1f}</td><td class='n'>{s.cpu_s:.1f}</td></tr>"
                       for s in res.steps)
        parts.append(f"<h3>Steps</h3><table><tr><th>step</th><th>wall s</th><th>CPU s</th></tr>{rows}"
                     f"<tr><td><b>total</b></td><td class='n'>{o.wall_s:.1f}</td><td class='n'>{o.cpu_s:.1f}</td></tr></table>")
        if res.meta:
            parts.append(f"<details><summary>settings</summary><pre>{e(json.dumps(res.meta, indent=2, default=str))}"
                         f"</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _img(f: _Fig) -> str:
    cap = html.escape(f.caption)
    if f.md_path is None:
        return f"<p class='failed'>figure missing: {html.escape(str(f.source))} ({cap})</p>"
    data = base64.b64encode(f.source.read_bytes()).decode("ascii")
    mime = "image/svg+xml" if f.source.suffix.lower() == ".svg" else "image/png"
    return f"<figure><img src='data:{mime};base64,{data}' alt='{cap}'><figcaption>{cap}</figcaption></figure>"


# --- json ------------------------------------------------------------------------------------------------------

def _json(outcomes, figures, run, env, title) -> dict[str, Any]:
    tasks = []
    for o in outcomes:
        entry: dict[str, Any] = {"task": o.task, "status": o.status, "error": o.error, "traceback": o.traceback,
                                 "wall_s": o.wall_s, "cpu_s": o.cpu_s, "datasets": o.datasets}
        if o.result is not None:
            res = o.result.to_json()
            res.pop("machine", None)
            res["figures"] = {c: {"path": figures[(o.task, c)].md_path, "source": str(figures[(o.task, c)].source),
                                  "sha256": figures[(o.task, c)].sha256} for c in o.result.figures}
            entry["result"] = res
        tasks.append(entry)
    return {"title": title, "run": run, "environment": env, "tasks": tasks}


# --- helpers ---------------------------------------------------------------------------------------------------

def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def _gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - a broken CUDA setup must not stop the report
        return None
    return None


def code_version() -> str | None:
    """The short commit of this checkout, with " + uncommitted changes" when a tracked file under src/ differs:
    what a benchmark's figures were made with (results files changing do not count). The report shows it, and
    each task result records it in its meta."""
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "src"], capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None

