#!/usr/bin/env bash
# GPU check (issue 18): fused-kernel parity, bf16 vs fp32, throughput vs SDPA/FlashAttention at 1k-64k
# tokens, and a 2-minute pretraining run, written to benchmarks/results/gpu.md (+ .json).
#
#   bash scripts/gpu_check.sh              # on a machine with one CUDA GPU; stops after 8 minutes
#   bash scripts/gpu_check.sh --dry-run --out /tmp/gpu_dry.md   # CPU, tiny sizes, same code path
#
# Python: $PYTHON if set, else .venv/bin/python, else python3 (it needs torch with CUDA; the fused kernels
# come with `pip install -e '.[cuda]'`, and the check says whether they were found). On a machine that cannot
# install them, `bash scripts/gpu_deps.sh` (run where pip can download) writes mamba-ssm's Triton kernels to
# .gpu_deps/; then `PYTHONPATH=$PWD/.gpu_deps bash scripts/gpu_check.sh` there, as on 2026-12-04.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# mamba_ssm's Triton kernels: one fixed configuration each instead of autotuning over several. Autotuning the
# first calls took 370 s of the 8 minutes on an H200 (2026-12-04), and deterministic kernels are what we want.
export MAMBA_DETERMINISTIC="${MAMBA_DETERMINISTIC:-1}"
if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec timeout --signal=INT --kill-after=30 "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$@"
