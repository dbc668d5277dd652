"""``get(name)``: a dataset by name, fetched, checked, cached and converted to the layout our tasks read."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import InputError
from .download import ChecksumError, ProgressFn, cache_dir, download, sha256_file
from .registry import DatasetRecord, all_records, get_record

log = logging.getLogger(__name__)


def list_datasets(shared_dir: str | Path | None = None) -> list[DatasetRecord]:
    """Every registered dataset, public records first, then the local ones, each group by name."""
    return sorted(all_records(shared_dir).values(), key=lambda r: (r.source != "remote", r.name))


def get(name: str, *, cache: str | Path | None = None, shared_dir: str | Path | None = None,
        progress: ProgressFn | None = None, on_file=None) -> Path:
    """The path of dataset ``name`` in the layout our tasks read, fetching and converting it when needed.

    Parameters
    ----------
    name
        A name from :func:`list_datasets`.
    cache
        Cache folder (default ``$SCMAMBA2_DATA`` or ``~/.cache/scmamba2``). Downloads go to
        ``<cache>/<name>/raw/``, the converted file to ``<cache>/<name>/<name>.h5ad`` (``.h5mu``).
    shared_dir
        The local data folder (default: found as :func:`scmamba2.datasets.local.shared_data_dir` says).
    progress
        ``progress(done_bytes, total_bytes_or_None)`` during each download.
    on_file
        Called with each :class:`RemoteFile` before it is fetched (the CLI names the file on its bar).

    Returns
    -------
    Path
        Local records: the file where it lies (checked against its sha256, never copied).
        Remote records: the converted file in the cache.

    Raises
    ------
    InputError
        Unknown name, or a manual record whose files are not in place yet (the message says where to get them).
    DownloadError, ChecksumError
        Offline, interrupted (run again to resume) or wrong bytes (nothing was cached).
    """
    record = get_record(name, shared_dir)
    if record.local_path is not None:
        return _check_local(record)
    from .convert import convert

    root = cache_dir(cache) / record.name
    for ext in (".h5ad", ".h5mu"):
        done = root / f"{record.name}{ext}"
        if done.exists():
            return done
    raw = root / "raw"
    if record.manual is not None:
        missing = [f for f in record.files if not (raw / f.filename).exists()]
        if missing:
            raise InputError(
                f"{record.name} cannot be downloaded automatically ({record.manual}). Open {missing[0].url} in a "
                f"browser, download {', '.join(f.filename for f in missing)} into {raw}, then run "
                f"`scmamba2 datasets get {record.name}{'' if cache is None else f' --dir {cache}'}` again to check and "
                "convert them.")
    files = {}
    for f in record.files:
        if on_file is not None:
            on_file(f)
        if record.manual is not None:
            path = raw / f.filename
            if f.sha256 is not None and sha256_file(path) != f.sha256:
                raise ChecksumError(f"{path} does not match the registry's sha256; download it again")
        else:
            path = download(f.url, raw / f.filename, sha256=f.sha256, progress=progress)
        if f.sha256 is None:
            _check_pin(path)
        files[f.filename] = path
    root.mkdir(parents=True, exist_ok=True)
    return convert(record, files, root)


def _check_pin(path: Path) -> None:
    """Trust on first use, for files the registry has no sha256 for: the first fetch writes ``<file>.sha256``
    beside the file; every later ``get`` (and any re-download) must match it."""
    pin = path.with_name(path.name + ".sha256")
    got = sha256_file(path)
    if not pin.exists():
        pin.write_text(got + "\n")
        log.warning("%s: the registry has no sha256; pinned %s in %s (later fetches are checked against it)",
                    path.name, got, pin)
        return
    want = pin.read_text().split()[0]
    if got != want:
        raise ChecksumError(f"{path} (sha256 {got}) differs from the copy first fetched (pinned {want} in {pin}). "
                            f"The file was damaged or the source changed: delete {path} and run the command again; "
                            f"if the source really changed, delete {pin} too.")


def _check_local(record: DatasetRecord) -> Path:
    """A local record's path after checking every file it lists against the manifest's sha256."""
    if not record.local_path.exists():
        raise InputError(f"{record.name}: {record.local_path} is listed in the manifest but missing on disk")
    for f in record.files:
        if f.sha256 is None:
            continue
        path = _from_uri(f.url)  # local records list their files as file:// URIs
        got = sha256_file(path)
        if got != f.sha256:
            raise ChecksumError(f"{path} differs from the manifest (sha256 {got}, expected {f.sha256}); the local "
                                f"copy was modified or damaged. Restore it from its source before using it.")
    return record.local_path


def _from_uri(uri: str) -> Path:
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))
