"""Every file the package writes goes through here: never a partial file, never over an input.

A file is written to a temporary name in its own folder, flushed to disk and renamed over the final name
(``os.replace``), so an interrupted write (``kill -9``, a full disk, an exception) leaves the old file or no
file, never a truncated one. Files get mode 0644 (less the umask), whatever the library that wrote them chose.

A model folder (:func:`staged_dir`) is built the same way: in a hidden sibling folder that replaces the final
one only when everything in it is written. :func:`check_output` and :func:`check_model_dir` refuse, before any
work, an output that is one of the inputs, a non-empty model folder (unless ``overwrite``) and a model folder
that is the folder (or inside the folder) of the model a task starts from. :func:`read_json` turns a damaged
JSON file into a :class:`~scmamba2.errors.CheckpointError` (or ``InputError``) that names the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import CheckpointError, InputError

__all__ = ["atomic_path", "check_model_dir", "check_output", "clear_dir", "read_json", "staged_dir", "write_h5ad",
           "write_json", "write_text"]

_TMP_PREFIX = ".tmp-"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _file_mode() -> int:
    return 0o666 & ~_umask()


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension); rename it to ``path`` when the block succeeds.

    On any exception (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` is untouched. The
    parent folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any, **kwargs) -> Path:
    """``json.dumps(obj, **kwargs)`` to ``path`` atomically."""
    return write_text(path, json.dumps(obj, **kwargs))


def write_h5ad(adata, path: str | Path) -> Path:
    """``adata.write_h5ad`` to ``path`` atomically (an ``.h5mu`` path and a MuData are written with ``write``)."""
    with atomic_path(path) as tmp:
        if hasattr(adata, "mod"):
            adata.write(str(tmp))
        else:
            adata.write_h5ad(tmp)
    return Path(path)


def write_csv(frame, path: str | Path, **kwargs) -> Path:
    """``frame.to_csv(path, **kwargs)`` atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def check_output(out: str | Path, inputs: Sequence[str | Path | None] = (), *, option: str = "--out",
                 overwrite: bool = False, suffixes: Sequence[str] = ()) -> Path:
    """Refuse an output file that is one of ``inputs``, a folder, an existing file (unless ``overwrite``) or, when
    ``suffixes`` are given, a name with another extension; return it as a ``Path``. Nothing is changed on disk.

    Raises
    ------
    InputError
        ``out`` is the same file as an input (it would be replaced while it is the data being read, even with
        ``overwrite``), a folder, an existing file without ``overwrite``, or names another format than the file
        the command writes (e.g. ``.csv`` for an h5ad).
    """
    out = Path(out).expanduser()
    for src in inputs:
        if src is not None and (_same(out, Path(src).expanduser()) or _inside(out, Path(src).expanduser())):
            raise InputError(f"{option} {out} is the input {src}: writing there would replace the data being read. "
                             f"Give {option} a new file name.")
    if out.is_dir():
        raise InputError(f"{option} {out} is a folder; give the name of the file to write, e.g. {out / 'out.h5ad'}.")
    if suffixes and out.suffix.lower() not in suffixes:
        raise InputError(f"{option} {out}: this command writes a {' or '.join(suffixes)} file; give a name that ends "
                         f"in {suffixes[0]}, e.g. {out.with_suffix(suffixes[0])}.")
    if out.exists() and not overwrite:
        raise InputError(f"{option} {out} exists: give --overwrite to replace it, or another file name.")
    return out


def check_model_dir(out: str | Path, *, overwrite: bool = False, sources: Sequence[str | Path | None] = (),
                    option: str = "--out") -> Path:
    """Refuse a model folder that is (or holds, or lies in) a source model's folder, a file, or is not empty.

    Nothing is changed on disk; call it before any work. ``overwrite`` allows a non-empty folder (it is then
    replaced by :func:`staged_dir` or emptied by :func:`clear_dir`), never a source's folder.
    """
    out = Path(out).expanduser()
    for src in sources:
        if src is None:
            continue
        src = Path(src).expanduser()
        if _inside(out, src) or _inside(src, out):
            raise InputError(f"{option} {out} would hold or replace an input of this command ({src}, e.g. the "
                             f"model it starts from): a command never writes into its inputs. Give {option} a new "
                             "folder.")
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out} is a file; give a folder for the model.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{option} {out} is not empty (it holds {', '.join(sorted(p.name for p in out.iterdir())[:4])}"
                         f"{', ...' if len(list(out.iterdir())) > 4 else ''}); give a new folder, or add --overwrite "
                         "to replace what is there.")
    return out


def clear_dir(path: str | Path) -> None:
    """Remove everything inside ``path`` (the folder itself stays)."""
    for p in Path(path).iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


@contextlib.contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new hidden folder beside ``path``; when the block succeeds it replaces ``path`` (the old
    content, if any, is removed). On an exception the hidden folder is removed and ``path`` is untouched."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, suffix=f"-{path.name}", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = path.with_name(f"{_TMP_PREFIX}old-{tmp.name}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | Path, *, error=CheckpointError, fix: str = "") -> Any:
    """Parse a JSON file; a missing, unreadable or malformed one raises ``error`` naming the file (and ``fix``)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path} is missing. {fix}".strip()) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not a readable JSON file ({exc}): it is damaged or was not written by scmamba2. "
                    f"{fix or 'Write it again (or restore it from a copy).'}") from None
