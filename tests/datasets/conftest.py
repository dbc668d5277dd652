"""A small HTTP server on 127.0.0.1 for the download tests: serves one payload, honours Range, can cut a transfer."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest


class FileServer:
    """Serve ``payload`` at ``/file``. ``cut_after``: the next full response stops after that many bytes."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.cut_after: int | None = None
        self.honour_range = True
        self.etag: str | None = None  # sent as ETag; an If-Range that differs gets the whole file (200)
        self.content_type = "application/octet-stream"
        self.requests: list[str | None] = []  # the Range header of each request (None: none)
        self.if_range: list[str | None] = []  # the If-Range header of each request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append(rng)
                server.if_range.append(self.headers.get("If-Range"))
                data, start = server.payload, 0
                stale = self.headers.get("If-Range") not in (None, server.etag)
                if rng and server.honour_range and not stale:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", server.content_type)
                if server.etag:
                    self.send_header("ETag", server.etag)
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.close_connection = True
                self.wfile.write(body)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload() -> bytes:
    """300 kB of seeded random bytes."""
    return np.random.default_rng(0).bytes(300_000)


@pytest.fixture
def server(payload):
    """A :class:`FileServer` serving ``payload``, running for the test."""
    with FileServer(payload) as s:
        yield s



@pytest.fixture
def serve():
    """``serve(data) -> FileServer``: start a server for any payload; all are stopped after the test."""
    started = []

    def start(data: bytes) -> FileServer:
        started.append(FileServer(data).__enter__())
        return started[-1]

    yield start
    for s in started:
        s.__exit__()
