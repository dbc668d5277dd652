"""Fixtures for the report tests: tiny PNGs, fake task results, and a headless Chromium when one is installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def write_png(path: Path, w: int = 48, h: int = 32, rgb=(200, 40, 40)) -> Path:
    """A solid-colour RGB PNG written with zlib alone (no plotting library)."""
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def find_chromium() -> str | None:
    """``$CHROMIUM`` or the first Chromium/Chrome on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class Browser:
    """Headless Chromium through its command line: a screenshot, and the state of every <img> after load."""

    def __init__(self, exe: str, profile: Path):
        self.exe, self.profile = exe, profile

    def _run(self, *args: str) -> str:
        cmd = [self.exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={self.profile}", "--virtual-time-budget=5000", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout

    def screenshot(self, page: Path, png: Path, size=(1200, 1600)) -> Path:
        self._run(f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", page.resolve().as_uri())
        return png

    def images(self, page: Path) -> list[dict]:
        """Each <img> of ``page`` after the load event: {'src', 'complete', 'width'} (naturalWidth)."""
        probe = page.with_name("_imgcheck_" + page.name)  # beside the page, so relative image paths still resolve
        script = ("<script>window.addEventListener('load',()=>{const r=Array.from(document.images).map(i=>("
                  "{src:i.getAttribute('src').slice(0,60),complete:i.complete,width:i.naturalWidth}));"
                  "const p=document.createElement('pre');p.id='imgcheck';p.textContent=JSON.stringify(r);"
                  "document.body.appendChild(p);});</script>")
        probe.write_text(page.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
        try:
            dom = self._run("--dump-dom", probe.resolve().as_uri())
        finally:
            probe.unlink()
        m = re.search(r'<pre id="imgcheck">(.*?)</pre>', dom, re.S)
        assert m, "the check script did not run: " + dom[-500:]
        return json.loads(m.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


@pytest.fixture
def browser(tmp_path_factory) -> Browser:
    """A headless Chromium; skips with the install command when none is present."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found: install it (Debian/Ubuntu: `apt-get install -y chromium`) or set $CHROMIUM "
                    "to a Chrome/Chromium binary to run the browser rendering tests")
    return Browser(exe, tmp_path_factory.mktemp("chromium-profile"))


@pytest.fixture
def make_png():
    """``make_png(path, w=48, h=32, rgb=...) -> path``: a small solid-colour PNG."""
    return write_png
