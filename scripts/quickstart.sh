#!/usr/bin/env bash
# The main job: the bundled pretrained model on scanpy's pbmc68k_reduced, zero-shot and after a short fine-tune, vs PCA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/scmamba2 quickstart --out out/quickstart "$@"
