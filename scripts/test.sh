#!/usr/bin/env bash
# The test suite (default: everything not marked slow or gpu). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/install_chromium.sh  # for the report rendering test; never fails, the test skips without a browser
exec .venv/bin/python -m pytest "$@"
