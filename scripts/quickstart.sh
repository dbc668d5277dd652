#!/usr/bin/env bash
# The main job: pretrain a small SC-MAMBA2 on scanpy's bundled pbmc68k_reduced, embed it, report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/scmamba2 quickstart --out out/quickstart "$@"
