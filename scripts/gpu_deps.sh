#!/usr/bin/env bash
# Bring mamba-ssm's Triton SSD kernels to a GPU machine that cannot install packages (no network, no compiler
# for its CUDA extensions). Run it where pip can download; it writes the ignored folder .gpu_deps/ with the
# Triton ops of the mamba-ssm sdist only (its package __init__ imports CUDA extensions, so a stub replaces it).
# On the GPU machine: PYTHONPATH=$PWD/.gpu_deps bash scripts/gpu_check.sh
#
#   bash scripts/gpu_deps.sh [VERSION]      # default 2.3.2.post1, the version of the 2026-12-04 GPU check
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-2.3.2.post1}"
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The sdist from PyPI's JSON API (pip download would try to build it, which needs CUDA).
"$PY" - "$VERSION" "$tmp" <<'PYEOF'
import json, sys, urllib.request
version, dest = sys.argv[1], sys.argv[2]
meta = json.load(urllib.request.urlopen("https://pypi.org/pypi/mamba-ssm/json", timeout=60))
url = next(u["url"] for u in meta["releases"][version] if u["packagetype"] == "sdist")
urllib.request.urlretrieve(url, f"{dest}/mamba_ssm-{version}.tar.gz")
PYEOF
tar xzf "$tmp"/mamba_ssm-*.tar.gz -C "$tmp"
src="$(echo "$tmp"/mamba_ssm-*/mamba_ssm)"
dst=.gpu_deps/mamba_ssm
rm -rf .gpu_deps && mkdir -p "$dst/ops/triton" "$dst/utils"
printf '__version__ = "%s"\n# Triton SSD kernels only (scripts/gpu_deps.sh): the real __init__ imports CUDA extensions.\n' \
  "$VERSION" > "$dst/__init__.py"
touch "$dst/ops/__init__.py" "$dst/ops/triton/__init__.py" "$dst/utils/__init__.py"
cp "$src"/ops/triton/{ssd_*.py,layernorm_gated.py,k_activations.py,softplus.py} "$dst/ops/triton/"
cp "$src"/utils/{torch.py,determinism.py} "$dst/utils/"
cp "$src"/../LICENSE* .gpu_deps/ 2>/dev/null || true
grep -qx '/.gpu_deps/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null || \
  echo '/.gpu_deps/' >> "$(git rev-parse --git-common-dir)/info/exclude"
echo "wrote .gpu_deps/ (mamba-ssm $VERSION, Triton ops only); carry it: device run carry=['.gpu_deps']"
