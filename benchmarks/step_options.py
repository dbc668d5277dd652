"""Benchmark: two ways to make pretraining's step cheaper without changing the model: gradient accumulation
and bf16 autocast on the CPU.

Run from the repository root::

    .venv/bin/python benchmarks/step_options.py [--rounds 2]

Writes ``benchmarks/results/step_options.md`` and ``.json``.

One optimiser step over 32 cells of pretraining's default objective (continuous values, the profile decoder of
``DEFAULT_PROFILE_GENES`` genes, no per-token heads; ``TrainingPlan._losses``, backward, clipping, AdamW), at
the issue's target shape (d_model 256 x 4 layers, ~1,000 tokens per cell, lengths log-normal as in
``benchmarks/train_step.py``) and at the bundled model's (d_model 128 x 2, every cell 256 tokens):

* ``32``: one batch of 32 cells. At the target shape it holds ~32,800 tokens, above ``recompute_tokens``
  (8,192), so the layers recompute in_proj, conv, scan and gated norm in the backward pass (the default).
* ``4 x 8``: the same 32 cells as 4 micro-batches of 8 of similar length (as the length-bucket sampler
  makes them), gradients accumulated, one optimiser step: each micro-batch is under the threshold and stores
  its activations instead (what ``TrainConfig(batch_size=8, accumulate_grad_batches=4)`` runs, up to which cells
  share a micro-batch).
* ``fp32`` or ``bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the forward pass (Lightning's
  ``precision="bf16-mixed"``; matmuls in bf16, which this CPU runs natively: ``avx512_bf16``), losses in fp32.

Each option runs in its own process (one thread, the allocator setting pretraining applies), one warm-up step
then ``--steps`` timed steps (CPU time of the process); the options alternate within each of ``--rounds``
rounds. Peak = the worker's VmHWM. Gradient agreement: relative L2 difference between the
flattened gradients of the bf16 and the fp32 step on the same batch and weights (first step, dropout off).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))

HERE = Path(_HERE)
SHAPES = {"target": (256, 4, 1000), "bundled": (128, 2, 256)}
OPTIONS = [("32", "fp32"), ("32", "bf16"), ("4 x 8", "fp32"), ("4 x 8", "bf16")]


def _model_and_parts(shape: str, split: str, seed: int = 0):
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from train_step import make_batch

    from scmamba2._keys import PADDING_MASK, PROFILE, VALUES
    from scmamba2.model import ModelConfig, ScMamba2
    from scmamba2.train.pretrain import DEFAULT_PROFILE_GENES

    d, n_layers, length = SHAPES[shape]
    torch.manual_seed(seed)
    model = ScMamba2(ModelConfig(vocab_size=20000, d_model=d, n_layers=n_layers, value_mode="continuous",
                                 profile_genes=DEFAULT_PROFILE_GENES, mvc=False))
    batch = make_batch(32, length, 20000, 51, seed=seed)
    if shape == "bundled":  # every cell cut to 256 tokens (its max_len)
        batch = {k: (v[:, :256] if v.dim() == 2 else v) for k, v in batch.items()}
        batch[PADDING_MASK] = torch.zeros_like(batch[PADDING_MASK])
    batch[VALUES] = batch[VALUES].float() / 10  # continuous, log-normalised-like values
    rng = np.random.default_rng(seed)
    batch[PROFILE] = torch.from_numpy(rng.standard_normal((32, DEFAULT_PROFILE_GENES)).astype(np.float32))
    if split == "32":
        return model, [batch]
    order = (~batch[PADDING_MASK]).sum(1).argsort()
    parts = []
    for i in range(4):
        idx = order[i * 8 : (i + 1) * 8]
        width = int((~batch[PADDING_MASK][idx]).sum(1).max())
        parts.append({k: (v[idx, :width] if v.dim() == 2 and k != PROFILE else v[idx]) for k, v in batch.items()})
    return model, parts


def _step_fn(model, parts, precision: str):
    import torch

    from scmamba2.train.config import TrainConfig
    from scmamba2.train.plan import TrainingPlan
    from scmamba2.train.schedule import make_optimizer

    plan = TrainingPlan(model, TrainConfig(gep_weight=0.0, mvc_weight=0.0))
    opt = make_optimizer(model, 1e-4, 0.01)

    def step(update: bool = True):
        opt.zero_grad(set_to_none=True)
        for part in parts:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
            with ctx:
                losses, _ = plan._losses(part)
            (losses["loss"].float() / len(parts)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if update:
            opt.step()

    return step


def worker(shape: str, split: str, precision: str, steps: int) -> dict:
    import torch

    from scmamba2._malloc import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(1)
    model, parts = _model_and_parts(shape, split)
    model.train()
    step = _step_fn(model, parts, precision)
    step()
    times = []
    for _ in range(steps):
        c0 = time.process_time()
        step()
        times.append(time.process_time() - c0)
    return {"cpu_s": times, "peak_gb": _vm_hwm_kb() / 1e6}


def _vm_hwm_kb() -> int:
    """This process's peak resident set (VmHWM, kB). Not getrusage's ru_maxrss, which a child inherits from
    the process that forked it."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def gradient_error(shape: str) -> float:
    """|g_bf16 - g_fp32| / |g_fp32| of one step's flattened gradients (same weights and batch, dropout off)."""
    import torch

    torch.set_num_threads(1)
    grads = []
    for precision in ("fp32", "bf16"):
        model, parts = _model_and_parts(shape, "4 x 8")
        model.eval()  # no dropout: the two steps see the same network
        _step_fn(model, parts[:1], precision)(update=False)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double())
    return float((grads[1] - grads[0]).norm() / grads[0].norm())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--shapes", default="target,bundled")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        shape, split, precision, steps = args.worker
        print(json.dumps(worker(shape, split, precision, int(steps))))
        return 0
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "OMP_NUM_THREADS": "1"}
    runs: dict = {}
    for shape in args.shapes.split(","):
        for r in range(args.rounds):
            for k in range(len(OPTIONS)):
                split, precision = OPTIONS[(k + r) % len(OPTIONS)]  # rotated order per round
                out = subprocess.run([sys.executable, __file__, "--worker", shape, split, precision, str(args.steps)],
                                     env=env, capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                runs.setdefault(shape, {}).setdefault(f"{split} {precision}", []).append(res)
                print(shape, split, precision, res, flush=True)
        runs[shape]["gradient error bf16 vs fp32"] = gradient_error(shape)
    previous = Path(args.out_dir) / "step_options.json"  # shapes not rerun keep their last figures
    if previous.is_file():
        runs = {**json.loads(previous.read_text()), **runs}
    write(runs, Path(args.out_dir), args)
    return 0


def write(runs: dict, out: Path, args) -> None:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["# Training step options: gradient accumulation and bf16 autocast", "",
             "Regenerate: `.venv/bin/python benchmarks/step_options.py` (method: its docstring)", "",
             f"Date: {datetime.date.today()}. Git {git}. {platform.machine()}, one thread per worker, "
             f"{args.rounds} round(s) x {args.steps} step(s) per option (this run's shapes: {args.shapes}); "
             "CPU seconds per optimiser step of 32 cells "
             "(median [range]), and the worker's peak RSS.", "",
             "| shape | option | CPU s / step | vs `32 fp32` | peak GB |", "|---|---|---:|---:|---:|"]
    for shape, opts in runs.items():
        d, n_layers, length = SHAPES[shape]
        base = None
        for name, res in opts.items():
            if not isinstance(res, list):
                continue
            times = [t for r in res for t in r["cpu_s"]]
            med = statistics.median(times)
            base = base or med
            peak = max(r["peak_gb"] for r in res)
            lines.append(f"| {shape}: d{d} x {n_layers}, 32 x ~{length} | {name} | {med:.2f} [{min(times):.2f}-"
                         f"{max(times):.2f}] | {base / med:.2f}x | {peak:.2f} |")
    lines += ["", "Gradient of bf16 against fp32 (relative L2 difference, one micro-batch, same weights, dropout off): "
              + ", ".join(f"{s} {o['gradient error bf16 vs fp32']:.2%}" for s, o in runs.items()), ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_options.json").write_text(json.dumps(runs, indent=1))
    (out / "step_options.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
