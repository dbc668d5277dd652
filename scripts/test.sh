#!/usr/bin/env bash
# The test suite (default: everything not marked slow or gpu). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The report rendering test needs a headless Chromium; it skips without one. Tests never change the system, so
# the browser is installed (apt-get, through sudo when needed) only when asked: SCMAMBA2_INSTALL_CHROMIUM=1.
if [ "${SCMAMBA2_INSTALL_CHROMIUM:-0}" = "1" ]; then
  bash scripts/install_chromium.sh  # never fails
fi
exec .venv/bin/python -m pytest "$@"
