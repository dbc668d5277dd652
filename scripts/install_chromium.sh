#!/usr/bin/env bash
# Headless Chromium for the report rendering tests (tests/bench/test_report.py), installed only when missing.
# Debian/Ubuntu: `apt-get install chromium` as root or through passwordless sudo. Elsewhere, or without root:
# point $CHROMIUM at any Chrome/Chromium binary. Never fails the caller: without a browser those tests skip.
set -uo pipefail
if [ -n "${CHROMIUM:-}" ]; then exit 0; fi
for b in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$b" >/dev/null 2>&1; then exit 0; fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install_chromium: no Chromium and no root; the browser tests will skip (set \$CHROMIUM to run them)" >&2
    exit 0
  fi
fi
if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq >/dev/null \
    && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
    && exit 0
fi
echo "install_chromium: could not install Chromium (apt-get install chromium failed or no apt-get);" \
     "the browser tests will skip (set \$CHROMIUM to a Chrome/Chromium binary to run them)" >&2
exit 0
