"""Datasets already on disk: the folder of real files beside the repository (``../shared/data``) or any folder.

The folder is found from, in order: an explicit argument (``--shared-dir``), ``$SCMAMBA2_SHARED_DATA``, the
``shared/data`` folder beside the repository checkout, ``../shared/data`` from the working directory. Its
``manifest.json`` (when present) gives each file's sha256, shape, licence, source and obs columns; without one,
every ``.h5ad``/``.h5mu`` in the folder is registered with what can be seen without reading it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .registry import CANONICAL_OBS, DatasetRecord, RemoteFile

log = logging.getLogger(__name__)

ENV_SHARED = "SCMAMBA2_SHARED_DATA"
_TASK_WORDS = {"annotat": "annotate", "integration": "integrate", "multi-omics": "multiomics",
               "perturbation": "perturb", "pretrain": "pretrain", "loader": "io", "reader": "io"}


def shared_data_dir(explicit: str | Path | None = None) -> Path | None:
    """The local data folder, or ``None`` when there is none (see the module docstring for the order)."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_SHARED)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[3]  # src/scmamba2/datasets/local.py -> the checkout
    for cand in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


def local_records(shared_dir: str | Path | None = None) -> list[DatasetRecord]:
    """Records for the files in the local data folder (none when there is no folder)."""
    root = shared_data_dir(shared_dir)
    if root is None or not root.is_dir():
        return []
    manifest = root / "manifest.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text())["files"]
        return [_from_manifest(root, e) for e in entries]
    return [_from_file(root, p) for p in sorted(root.iterdir()) if p.suffix in (".h5ad", ".h5mu")]


def _name(file: str) -> str:
    stem = file.rstrip("/")
    for ext in (".h5ad", ".h5mu"):
        stem = stem.removesuffix(ext)
    return stem.lower()


def _tasks(text: str) -> tuple[str, ...]:
    text = text.lower()
    found = []
    for word, task in _TASK_WORDS.items():
        if word in text and task not in found:
            found.append(task)
    return tuple(found)


def _from_manifest(root: Path, e: dict) -> DatasetRecord:
    path = root / e["file"].rstrip("/")
    files = []
    if "sha256" in e:
        files.append(RemoteFile(path.as_uri(), e["file"], e["sha256"]))
    for rel, info in (e.get("files") or {}).items():  # sidecars (10x folder members, ATAC fragments)
        files.append(RemoteFile((root / rel).as_uri(), rel, info.get("sha256")))
    cols = e.get("obs_columns") or {}
    notes = tuple(e.get("notes") or ())
    if e.get("task"):
        notes = (f"suggested use: {e['task']}",) + notes
    return DatasetRecord(
        name=_name(e["file"]), title=e.get("title", e["file"]), tasks=_tasks(e.get("task", "")),
        licence="; ".join(e.get("licence") or ["not stated"]), homepage="; ".join(e.get("sources") or []),
        files=tuple(files), n_obs=e.get("n_obs"), n_vars=e.get("n_vars"), shape_source="manifest.json",
        obs_keys={k: (k,) for k in CANONICAL_OBS if k in cols}, converter="h5ad", notes=notes,
        local_path=path, local_sha256=e.get("sha256"))


def _from_file(root: Path, path: Path) -> DatasetRecord:
    return DatasetRecord(name=_name(path.name), title=path.name, tasks=(), licence="not stated (no manifest.json)",
                         homepage=str(path), files=(RemoteFile(path.as_uri(), path.name, None),),
                         shape_source="unknown (no manifest.json)", local_path=path)
