"""The GPU check's dry run: every section on the CPU at tiny sizes, through the shell wrapper."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu.md"
    # The wrapper's 8-minute limit is for the GPU run; a loaded CPU machine gets more room here.
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "GPU_CHECK_TIMEOUT": "900"}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    assert "DRY RUN" in text and "failed" not in text
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert results["parity"]["rows"][0]["out_rel"] == 0.0  # pure vs pure without the fused kernels
    assert results["bf16"]["loss_rel"] < 0.05  # bf16 autocast stays close to fp32
    rows = results["throughput"]["rows"]
    assert {(r["model"], r["mode"]) for r in rows} == {
        (m, mode) for m in ("bimamba2 (pure PyTorch)", "transformer (SDPA)") for mode in ("fwd", "train")}
    assert all(r["tokens_per_s"] > 0 for r in rows)
    (pre,) = results["pretrain"]["runs"]  # no fused kernels on the CPU: the pure path alone
    assert pre["path"] == "pure PyTorch"
    assert pre["steps"] >= 1 and pre["cells"] == pre["steps"] * pre["batch"]
