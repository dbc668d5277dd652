"""Downloads from a local HTTP server (127.0.0.1, started by the test): complete, resumed, checksum, offline."""

import hashlib
import socket

import pytest

from scmamba2.datasets import ChecksumError, DownloadError, cache_dir, download


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_checks_and_caches(server, payload, tmp_path):
    seen = []
    dest = download(server.url, tmp_path / "f.bin", sha256=sha(payload), progress=lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == payload
    assert not (tmp_path / "f.bin.part").exists()
    assert seen[-1] == (len(payload), len(payload))
    n = len(server.requests)
    download(server.url, dest, sha256=sha(payload))  # cached: the server is not asked again
    assert len(server.requests) == n


def test_resume_after_interrupted_transfer(server, payload, tmp_path):
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    cut = len(payload) * 2 // 5
    server.cut_after = cut
    with pytest.raises(DownloadError, match="again to resume"):
        download(server.url, dest, sha256=sha(payload))
    assert not dest.exists(), "a partial file must never appear under the final name"
    assert part.stat().st_size == cut
    download(server.url, dest, sha256=sha(payload))
    assert server.requests[-1] == f"bytes={cut}-"
    assert dest.read_bytes() == payload and not part.exists()


def test_resume_without_checksum_uses_the_etag(server, payload, tmp_path):
    dest = tmp_path / "f.bin"
    server.etag, server.cut_after = '"v1"', 1000
    with pytest.raises(DownloadError):
        download(server.url, dest)
    download(server.url, dest)
    assert server.requests[-1] == "bytes=1000-" and server.if_range[-1] == '"v1"'
    assert dest.read_bytes() == payload and not (tmp_path / "f.bin.part.validator").exists()


def test_changed_source_is_not_spliced_onto_a_partial_file(server, payload, tmp_path):
    dest = tmp_path / "f.bin"
    server.etag, server.cut_after = '"v1"', 1000
    with pytest.raises(DownloadError):
        download(server.url, dest)
    new = bytes(reversed(payload))
    server.payload, server.etag = new, '"v2"'
    assert download(server.url, dest).read_bytes() == new  # the If-Range fails: the whole new file


def test_resume_without_checksum_or_validator_starts_again(server, payload, tmp_path):
    dest = tmp_path / "f.bin"
    server.cut_after = 1000  # no ETag and no sha256: a changed source could not be told apart
    with pytest.raises(DownloadError):
        download(server.url, dest)
    assert download(server.url, dest).read_bytes() == payload
    assert server.requests[-1] is None


def test_web_page_instead_of_the_file_is_refused(server, tmp_path):
    server.content_type = "text/html; charset=utf-8"
    with pytest.raises(DownloadError, match="web page"):
        download(server.url, tmp_path / "f.h5ad")
    assert not (tmp_path / "f.h5ad").exists()


def test_server_without_ranges_restarts_from_zero(server, payload, tmp_path):
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from another attempt")
    dest = download(server.url, tmp_path / "f.bin", sha256=sha(payload))
    assert dest.read_bytes() == payload


def test_checksum_mismatch_caches_nothing(server, payload, tmp_path):
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        download(server.url, tmp_path / "f.bin", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_damaged_partial_file_is_caught(server, payload, tmp_path):
    # a .part of the full length but with wrong bytes: the server has nothing more to send, the checksum decides
    (tmp_path / "f.bin.part").write_bytes(bytes(len(payload)))
    with pytest.raises(ChecksumError):
        download(server.url, tmp_path / "f.bin", sha256=sha(payload))
    assert list(tmp_path.iterdir()) == []
    assert download(server.url, tmp_path / "f.bin", sha256=sha(payload)).read_bytes() == payload


def test_offline_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="offline") as e:
        download(f"http://127.0.0.1:{port}/file", tmp_path / "f.bin", timeout=5)
    assert "download the file by hand" in str(e.value)
    assert not (tmp_path / "f.bin").exists()


def test_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("SCMAMBA2_DATA", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("SCMAMBA2_DATA")
    assert cache_dir().parts[-2:] == (".cache", "scmamba2")


def test_archive_with_an_absolute_link_is_a_clear_error(tmp_path):
    """tarfile's data filter refuses a link to /etc/passwd (AbsoluteLinkError): one InputError naming the archive."""
    import io
    import tarfile

    from scmamba2.datasets.convert import _extract
    from scmamba2.errors import InputError

    archive = tmp_path / "release.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = b"gene,value\n"
        info = tarfile.TarInfo("release/table.csv")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("release/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    if not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile extraction filters")
    with pytest.raises(InputError, match="release.tar.gz") as info:
        _extract(archive, tmp_path / "out")
    assert "download it again" in str(info.value)
    assert not (tmp_path / "out" / ".done").exists()
