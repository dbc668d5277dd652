"""Streaming download into a cache: resume through HTTP Range, sha256 check, never a partial file as complete.

A transfer writes ``<name>.part`` next to the target. Only when every byte has arrived (the length the server
announced) and the sha256 matches (where one is known) is the ``.part`` renamed to the final name, so a file
under the final name is always complete. An interrupted transfer leaves the ``.part``; the next call asks the
server for the remaining bytes (``Range: bytes=N-``) and appends them, or starts again when the server does not
support ranges. A resume is trusted only when a changed source would be noticed: the first response's
``ETag`` / ``Last-Modified`` is kept in ``<name>.part.validator`` and sent back as ``If-Range`` (the server then
sends the whole new file instead of the rest of the old one), or the sha256 is known. Otherwise the ``.part`` is
discarded and the transfer starts again. A ``text/html`` answer for a file that is not a web page (a login,
terms or rate-limit page served with status 200) is refused.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from ..errors import InputError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read per iteration
ENV_CACHE = "SCMAMBA2_DATA"

ProgressFn = Callable[[int, Optional[int]], None]  # (bytes done, total bytes or None)


class DownloadError(InputError):
    """A file could not be fetched (offline, server error, interrupted transfer). The message says what to do."""


class ChecksumError(DownloadError):
    """A fetched file's sha256 differs from the registry's; the file was deleted, nothing was cached."""


def cache_dir(explicit: str | Path | None = None) -> Path:
    """The dataset cache: ``explicit``, else ``$SCMAMBA2_DATA``, else ``~/.cache/scmamba2``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "scmamba2"


def sha256_file(path: str | Path, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | Path, *, sha256: str | None = None, progress: ProgressFn | None = None,
              timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``dest``, resuming a partial ``dest.part`` and checking ``sha256``.

    Parameters
    ----------
    url
        http(s) or file URL.
    dest
        Final path. When it exists and matches ``sha256`` (or no checksum is known) nothing is fetched.
    sha256
        Expected hex digest; ``None`` when the registry has none (the file is then accepted on its length alone,
        and the caller should say so).
    progress
        Called as ``progress(done_bytes, total_bytes_or_None)`` after every chunk (the CLI draws a bar with it).
    timeout
        Seconds to wait for the server on connect and on each read.

    Returns
    -------
    Path
        ``dest``, complete and verified.

    Raises
    ------
    DownloadError
        Offline, the server refused, or the transfer stopped early (the ``.part`` is kept; run again to resume).
    ChecksumError
        The bytes arrived but their sha256 is wrong (the file is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if sha256 is None or sha256_file(dest) == sha256.lower():
            return dest
        log.warning("%s exists but its sha256 is wrong; fetching it again", dest)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    meta = dest.with_name(dest.name + ".part.validator")
    for attempt in range(2):  # a second pass only when the server rejected our range and we start over
        done = part.stat().st_size if part.exists() else 0
        if_range = _validator(meta, url)
        if done and if_range is None and sha256 is None:
            log.info("%s: nothing tells whether the source changed since the partial download; starting again", url)
            done = 0
        status = _fetch(url, part, done, progress, timeout, if_range, meta)
        if status == "restart" and attempt == 0:
            part.unlink(missing_ok=True)
            continue
        break
    if status != "ok":  # cannot happen from an empty .part, but never let a doubtful file through
        raise DownloadError(f"the server's answers to range requests for {url} are inconsistent; delete {part} "
                            f"and run the command again")
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256.lower():
            part.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            raise ChecksumError(
                f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {got}. The downloaded bytes "
                f"were deleted and nothing was cached. Run the command again; if it fails again the file at the "
                f"source has changed, so check the source and update the registry entry.")
    else:
        log.warning("no sha256 is registered for %s: accepted on its length only", url)
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    return dest


def _validator(meta: Path, url: str) -> str | None:
    """The ETag (else Last-Modified) recorded when ``url``'s partial download began, if any."""
    try:
        rec = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return (rec.get("etag") or rec.get("last_modified")) if rec.get("url") == url else None


def _fetch(url: str, part: Path, done: int, progress: ProgressFn | None, timeout: float,
           if_range: str | None = None, meta: Path | None = None) -> str:
    """Append the bytes after ``done`` to ``part``. Returns "ok", or "restart" when the range was refused.

    A fresh transfer records the response's validator in ``meta``; a resume sends it as ``If-Range``."""
    req = urllib.request.Request(url, headers={"User-Agent": "scmamba2-datasets"})
    if done:
        req.add_header("Range", f"bytes={done}-")
        if if_range:
            req.add_header("If-Range", if_range)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and done:  # nothing left after our offset: the .part may already be whole
            total = _total_from_content_range(e.headers.get("Content-Range"))
            if total == done:
                return "ok"
            return "restart"
        raise DownloadError(f"the server answered HTTP {e.code} ({e.reason}) for {url}. Check the URL in the "
                            f"registry entry, or download the file by hand (see `scmamba2 datasets list`).") from e
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, timeout, DNS
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"cannot reach {url} ({reason}). This machine seems to be offline or the host is down. Connect to the "
            f"network and run the command again (a partial download resumes), or download the file by hand into "
            f"{part.parent} and name it {part.name[:-5]}.") from e
    with resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        ctype = (resp.headers.get("Content-Type") or "").lower()
        if ctype.startswith("text/html") and not part.name[:-5].lower().endswith((".html", ".htm")):
            raise DownloadError(
                f"{url} answered with a web page (text/html), not the file: probably a login, terms-of-use or "
                f"rate-limit page. Open the URL in a browser, accept what it asks and download the file by hand "
                f"into {part.parent} as {part.name[:-5]}, then run the command again.")
        if done and status != 206:
            log.info("the server sent the whole file (range ignored, or the file changed); starting %s again", url)
            done, mode = 0, "wb"
        else:
            mode = "ab" if done else "wb"
            if done:
                start = _start_from_content_range(resp.headers.get("Content-Range"))
                if start is not None and start != done:
                    return "restart"
        if not done and meta is not None:
            meta.write_text(json.dumps({"url": url, "etag": resp.headers.get("ETag"),
                                        "last_modified": resp.headers.get("Last-Modified")}))
        total = done + int(length) if length is not None else None
        got = done
        try:
            with open(part, mode) as fh:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    fh.write(block)
                    got += len(block)
                    if progress is not None:
                        progress(got, total)
        except (OSError, http.client.HTTPException) as e:  # IncompleteRead, reset, timeout
            raise _interrupted(url, part, got, total) from e
        if total is not None and got < total:
            raise _interrupted(url, part, got, total)
    return "ok"


def _interrupted(url: str, part: Path, got: int, total: int | None) -> DownloadError:
    of = f" of {total:,}" if total else ""
    return DownloadError(f"the transfer of {url} stopped after {got:,}{of} bytes; the partial file {part} is kept "
                         f"and is not used. Run the command again to resume where it stopped.")


def _start_from_content_range(value: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    if not value or not value.startswith("bytes "):
        return None
    rng = value[6:].split("/")[0]
    try:
        return int(rng.split("-")[0])
    except ValueError:
        return None


def _total_from_content_range(value: str | None) -> int | None:
    # "bytes */200" or "bytes 0-199/200" -> 200
    if not value or "/" not in value:
        return None
    try:
        return int(value.rsplit("/", 1)[1])
    except ValueError:
        return None
