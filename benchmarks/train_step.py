"""Benchmark: one full pretraining step at the shapes pretraining uses, against a same-size transformer.

Run from the repository root::

    .venv/bin/python benchmarks/train_step.py            # full grid (~30 min on 1 busy thread)
    .venv/bin/python benchmarks/train_step.py --quick    # two small shapes, 1 round (a few minutes)

Writes ``benchmarks/results/train_step.md``, ``.json`` and ``.png`` (``train_step_quick.*`` for ``--quick``).

What one step is
----------------
The step of :class:`scmamba2.train.plan.TrainingPlan` in pretraining, without Lightning: gene + value
embeddings, the bidirectional encoder, the GEP and MVC heads, both masked-MSE losses, ``backward``,
gradient clipping at 1.0 and an AdamW step (:func:`scmamba2.train.schedule.make_optimizer`). The model is
:class:`scmamba2.ScMamba2` with its defaults except ``d_model``/``n_layers`` (headdim 32, d_state 64,
chunk 64, dropout 0.1), in train mode.

Implementations, each in its own subprocess (so that peak memory is the step's own):

* ``scmamba2``: the model of this checkout.
* ``before``: the same model from the ``src/`` of ``--before-commit`` (default: the commit before this
  issue's work), extracted with ``git archive`` into a temporary folder: "today's" step, same batches.
  Today's step stores ~90 KB per token and layer, so it runs on at most ``BEFORE_MAX_TOKENS`` tokens per
  batch (fewer cells of the same length; the table shows its batch): at the target shape it would need
  ~14 GB, more than this shared machine has free.
* ``transformer``: the same ScMamba2 (same embeddings, heads, losses, optimiser, batches) with its encoder
  replaced by an scGPT-style post-norm transformer (``benchmarks/_transformer.py``: PyTorch
  ``scaled_dot_product_attention`` with the padding mask, ReLU MLP of width d_model), same d_model and
  layers, ``d_model // 32`` heads (8 at 256, scGPT's head count). Its dropout is 0: with attention
  dropout PyTorch's CPU attention falls back to the ``L x L`` math kernel (4x slower and 5x the memory at
  batch 8 x 1,024 here), so dropout 0 is the transformer's strongest setting.

Batches
-------
Cell lengths are drawn log-normal (median = the shape's length, sigma 0.35, the spread of pbmc3k's
genes per cell), capped at twice the length (a ``max_len``), and cut into batches by
:class:`scmamba2.data.collate.LengthBucketSampler` (mega-buckets of 100 batches, as in pretraining); the
batch whose padded width is nearest the shape's length is collated by the real
:class:`~scmamba2.data.collate.Collator` (40 % of values masked). Its padding share is in the table.
Tokens/s counts real (not padding) tokens.

Timing and memory
-----------------
Each worker sets ``torch.set_num_threads(--threads)`` (1 by default: the machine is shared, so ratios
measured in one run are what to read), builds the model and the batch, measures the machine's fp32 GEMM
rate (``torch.matmul`` 1024 x 1024, median of 10) in the same process, resets its peak RSS
(``VmHWM`` via ``/proc/self/clear_refs``), runs 1 warm-up step and ``--steps`` timed steps (median).
A step's time is the worker's CPU time (``time.process_time``) on its one thread: on shared cores other
work inflates wall time (kept in the JSON) but not this. The GEMM rate is measured the same way.
Peak = the process's peak RSS over the steps (everything: torch, model, optimiser state, activations);
"+step" = peak minus the RSS before the first step. With ``--rounds`` > 1 the implementations run in
interleaved rounds (A, B, C, A, B, C) and the medians are over all rounds.

FLOPs (forward, per real token, 1 multiply-add = 2 FLOPs; backward counted as 2 x forward): one count
per model, independent of how an implementation arranges the work, so GFLOP/s compare like tokens/s::

    BiMamba2 layer = 2*d*d_in_proj + 2*e*d             in_proj and out_proj, once per position
                   + 2 * (2*conv_dim*w + 2*q*n + 2*h*q*p + 4*h*n*p)   conv, scan (per direction)
    transformer layer = 8*d*d + 4*L*d + 4*d*d          qkv + out, attention (padded width L), MLP
    heads          = 2*(2*d*d + d) + 2*d*d             GEP MLP, MVC query

with d = d_model, e = d_inner = 2d, h = e / 32 heads of p = 32, n = 64, q = 64, w = 4,
conv_dim = e + 2n, d_in_proj = e + conv_dim + h. Embeddings, norms and element-wise work are not counted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMPLS = ("scmamba2", "before", "transformer")
# --bf16 adds these: the same models with the step under bfloat16 autocast (pretraining's precision="bf16-mixed")
BF16_IMPLS = ("scmamba2 bf16", "transformer bf16")
BEFORE_COMMIT = "18b4300"  # the branch point of issue 18: "today's" training step
# (d_model, n_layers, batch, length): the range; the target shape is (256, 4, 32, 1024).
FULL_SHAPES = [(64, 2, 64, 256), (128, 4, 32, 512), (256, 4, 32, 1024), (256, 8, 8, 2048)]
QUICK_SHAPES = [(64, 2, 16, 256), (256, 4, 8, 1024)]
TARGET = (256, 4, 32, 1024)
GOAL_SPEEDUP, GOAL_PEAK_GB = 3.0, 3.0
# Today's step stores ~90 KB per token per layer (~14 GB at the target shape): on a shared 23 GB machine it
# runs on at most this many tokens per batch (fewer cells of the same length; tokens/s are per token).
BEFORE_MAX_TOKENS = 8192


# ----------------------------------------------------------------------------------------------- FLOPs
def mamba_flops_per_token(d: int, n_layers: int, headdim: int = 32, d_state: int = 64, chunk: int = 64,
                          d_conv: int = 4) -> float:
    e = 2 * d
    h = e // headdim
    conv_dim = e + 2 * d_state
    d_in_proj = e + conv_dim + h
    proj = 2 * d * d_in_proj + 2 * e * d
    scan = 2 * conv_dim * d_conv + 2 * chunk * d_state + 2 * h * chunk * headdim + 4 * h * d_state * headdim
    return n_layers * (proj + 2 * scan)


def transformer_flops_per_token(d: int, n_layers: int, width: int) -> float:
    return n_layers * (8 * d * d + 4 * width * d + 4 * d * d)


def heads_flops_per_token(d: int) -> float:
    return 2 * (2 * d * d + d) + 2 * d * d


# ---------------------------------------------------------------------------------------------- worker
def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def make_batch(d_batch: int, length: int, vocab_size: int, n_bins: int, seed: int):
    """A collated pretraining batch whose padded width is near ``length`` (see the module docstring)."""
    import numpy as np

    from scmamba2._keys import GENES, VALUES
    from scmamba2.data.collate import Collator, LengthBucketSampler

    rng = np.random.default_rng(seed)
    n = 100 * d_batch
    lengths = np.minimum(np.round(length * np.exp(rng.normal(0.0, 0.35, n))), 2 * length).astype(int)
    lengths = np.maximum(lengths, 8)
    batches = list(LengthBucketSampler(lengths, d_batch, bucket_size_multiplier=100, seed=seed, drop_last=True))
    best = min(batches, key=lambda b: abs(int(lengths[b].max()) - length))
    items = []
    for i in best:
        k = int(lengths[i])
        genes = np.concatenate([[1], rng.choice(np.arange(4, vocab_size), k - 1, replace=False)])
        values = np.concatenate([[0.0], rng.integers(1, n_bins, k - 1)]).astype(np.float32)
        items.append({GENES: genes, VALUES: values})
    return Collator(pad_id=0, mask_ratio=0.4, seed=seed)(items)


def run_worker(spec: dict, out: Path) -> None:
    import torch

    # Every implementation runs with the allocator setting pretraining applies (src/scmamba2/_malloc.py):
    # without it the step's large tensors are fresh, zero-filled mmaps and page faults take ~30 % of it.
    from scmamba2._malloc import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    from scmamba2._keys import MASK, PADDING_MASK, TARGET_VALUES
    from scmamba2.model import ModelConfig, ScMamba2
    from scmamba2.train.losses import masked_mse
    from scmamba2.train.schedule import make_optimizer

    d, n_layers, d_batch, length = spec["shape"]
    d_batch = spec.get("batch", d_batch)
    vocab_size = 20000
    model = ScMamba2(ModelConfig(vocab_size=vocab_size, d_model=d, n_layers=n_layers))
    if spec["impl"].startswith("transformer"):
        sys.path.insert(0, str(HERE))
        from _transformer import TransformerEncoder

        model.encoder = TransformerEncoder(d, n_layers, nhead=max(1, d // 32), dropout=0.0)
    model.train()
    opt = make_optimizer(model, 1e-4, 0.01)
    batch = make_batch(d_batch, length, vocab_size, model.config.n_bins, seed=spec["seed"])
    pad = batch[PADDING_MASK]
    real_tokens = int((~pad).sum())

    bf16 = spec["impl"].endswith("bf16")

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as Lightning's "bf16-mixed"
            out_ = model(batch)
        loss = masked_mse(out_.expr_pred, batch[TARGET_VALUES], batch[MASK])
        loss = loss + masked_mse(out_.mvc_pred, batch[TARGET_VALUES], batch[MASK])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(2):
        a @ b
    gemm = []
    for _ in range(10):
        t0 = time.process_time()
        a @ b
        gemm.append(2 * 1024**3 / (time.process_time() - t0) / 1e9)
    del a, b
    rss0 = _rss()
    _reset_hwm()
    t0 = time.perf_counter()
    step()
    warm = time.perf_counter() - t0
    times, cpu_times = [], []
    for _ in range(spec["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = _hwm()
    prof = None
    if spec.get("profile"):
        from torch.profiler import profile

        with profile() as p:
            step()
        rows = sorted(p.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in rows)
        prof = [dict(name=e.key, self_ms=e.self_cpu_time_total / 1e3, share=e.self_cpu_time_total / total,
                     calls=e.count) for e in rows[:15]]
    res = dict(spec=spec, real_tokens=real_tokens, width=int(pad.shape[1]), padding=float(pad.float().mean()),
               warmup_s=warm, times=times, cpu_times=cpu_times, gemm_gflops=statistics.median(gemm), rss_before_step=rss0,
               peak_rss=peak, profile=prof)
    out.write_text(json.dumps(res))


def run_config(spec: dict, tmp: Path, src: Path) -> dict:
    path = tmp / f"r{time.monotonic_ns()}.json"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(spec["threads"])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker-out", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not path.exists():
        return dict(spec=spec, error=(proc.stderr or "")[-1500:])
    return json.loads(path.read_text())


# -------------------------------------------------------------------------------------------- summary
def summarise(runs: list[dict], shape: tuple) -> dict:
    d, n_layers, _, _ = shape
    rows = {}
    for impl in IMPLS + BF16_IMPLS:
        mine = [r for r in runs if r["spec"]["impl"] == impl and tuple(r["spec"]["shape"]) == tuple(shape)]
        ok = [r for r in mine if "error" not in r]
        if not ok:
            if mine or impl in IMPLS:
                rows[impl] = dict(error=mine[0]["error"] if mine else "not run")
            continue
        t = statistics.median([s for r in ok for s in r["cpu_times"]])
        wall = statistics.median([s for r in ok for s in r["times"]])
        gemm = statistics.median([r["gemm_gflops"] for r in ok])
        tok = ok[0]["real_tokens"]
        cells = ok[0]["spec"].get("batch", shape[2])
        width = ok[0]["width"]
        enc = (transformer_flops_per_token(d, n_layers, width) if impl.startswith("transformer")
               else mamba_flops_per_token(d, n_layers))
        gflops = 3 * (enc + heads_flops_per_token(d)) * tok / t / 1e9
        rows[impl] = dict(step_s=t, wall_s=wall, tokens_per_s=tok / t, cells_per_s=cells / t, batch=cells,
                          gflops=gflops,
                          gemm_gflops=gemm, gemm_share=gflops / gemm,
                          peak_gb=max(r["peak_rss"] for r in ok) / 1e9,
                          step_gb=max(r["peak_rss"] - r["rss_before_step"] for r in ok) / 1e9,
                          real_tokens=tok, width=width, padding=ok[0]["padding"],
                          n_steps=sum(len(r["times"]) for r in ok),
                          profile=next((r["profile"] for r in ok if r.get("profile")), None))
    return rows


def speed_bounds(m: dict, b: dict, tr: dict) -> list[str]:
    """What each speed goal asks of the step, as a share of the GEMM rate measured in the same run.

    The model's FLOPs per token are fixed by its shape, so a tokens/s goal is a GFLOP/s goal; the share of
    the machine's GEMM rate it needs is compared with the share the same-size transformer, whose step is
    almost all GEMM, reaches in the same run.
    """
    out = []
    for goal, tokens in ((f"{GOAL_SPEEDUP:g}x today's tokens/s", GOAL_SPEEDUP * b["tokens_per_s"]),
                         ("the transformer's tokens/s", tr["tokens_per_s"])):
        share = m["gemm_share"] * tokens / m["tokens_per_s"]
        out.append(f"- {goal} ({tokens:,.0f} tokens/s) would need this step at {m['gflops'] * tokens / m['tokens_per_s']:.1f}"
                   f" GFLOP/s, {100 * share:.0f} % of the GEMM rate (now {100 * m['gemm_share']:.0f} %; the "
                   f"transformer's step reaches {100 * tr['gemm_share']:.0f} %).")
    return out


def write_markdown(path: Path, args, meta: dict, shapes: list, summaries: dict) -> list[str]:
    lines = [f"# Training step: scmamba2 vs today's step vs a same-size transformer{' (quick)' if args.quick else ''}",
             "", f"Regenerate: `.venv/bin/python benchmarks/train_step.py{' --quick' if args.quick else ''}`", "",
             f"Date: {meta['date']}. Machine: {meta['machine']}; {args.threads} torch thread(s) per worker "
             "(the machine's cores are shared with other work, so read the ratios, which come from one run). "
             f"Python {meta['python']}, torch {meta['torch']}. Git {meta['git']}; `before` = `src/` of "
             f"{args.before_commit}.", "",
             "One step = embeddings, encoder, GEP + MVC heads, masked-MSE losses, backward, clip, AdamW "
             "(method and FLOP formulas: the docstring of `benchmarks/train_step.py`). "
             f"Median of {args.steps} step(s) after 1 warm-up, {args.rounds} round(s) of interleaved workers. "
             "Times are the worker's CPU time per step (process time, 1 thread): other work on the shared cores "
             "inflates wall time, not this; the wall-clock median is in the JSON. "
             "GEMM = fp32 1024x1024 matmul rate measured in each worker; % = the step's GFLOP/s as a share of it. "
             "Peak = the worker's peak RSS during the steps (process total); +step = above the RSS before the "
             "first step.", ""]
    lines += ["| d_model x layers | batch x width (padding) | impl | step s | tokens/s | cells/s | vs before | "
              "vs transformer | GFLOP/s (% GEMM) | peak GB (+step) |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    verdict = []
    for shape in shapes:
        s = summaries[str(tuple(shape))]
        for impl in [i for i in IMPLS + BF16_IMPLS if i in s]:
            r = s[impl]
            head = f"{shape[0]} x {shape[1]} | {r.get('batch', shape[2])} x {r.get('width', '-')}"
            if "error" in r:
                lines.append(f"| {head} | {impl} | failed | | | | | | | |")
                continue
            head += f" ({100 * r['padding']:.0f} %)"
            vb = (f"{r['tokens_per_s'] / s['before']['tokens_per_s']:.2f}x" if "error" not in s["before"] else "-")
            ref = "transformer bf16" if impl.endswith("bf16") else "transformer"  # same precision
            vt = (f"{r['tokens_per_s'] / s[ref]['tokens_per_s']:.2f}x" if "error" not in s[ref] else "-")
            lines.append(f"| {head} | {impl} | {r['step_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['cells_per_s']:.2f} | "
                         f"{vb} | {vt} | {r['gflops']:.1f} ({100 * r['gemm_share']:.0f} %) | "
                         f"{r['peak_gb']:.2f} (+{r['step_gb']:.2f}) |")
    t = summaries.get(str(TARGET))
    if t and all("error" not in t[k] for k in IMPLS):
        m, b, tr = t["scmamba2"], t["before"], t["transformer"]
        verdict = [
            ("tokens/s >= 3x today's (before) at 256 x 4, batch 32, ~1,000 tokens",
             m["tokens_per_s"] / b["tokens_per_s"] >= GOAL_SPEEDUP, f"{m['tokens_per_s'] / b['tokens_per_s']:.2f}x"),
            ("tokens/s >= the same-size transformer's", m["tokens_per_s"] >= tr["tokens_per_s"],
             f"{m['tokens_per_s'] / tr['tokens_per_s']:.2f}x"),
            ("peak memory of one step < 3 GB", m["peak_gb"] < GOAL_PEAK_GB, f"{m['peak_gb']:.2f} GB"),
        ]
        if all(k in t and "error" not in t[k] for k in BF16_IMPLS):
            mb, tb = t["scmamba2 bf16"], t["transformer bf16"]
            verdict += [
                ("bf16 autocast: tokens/s >= 3x today's (before, fp32)", mb["tokens_per_s"] / b["tokens_per_s"] >= GOAL_SPEEDUP,
                 f"{mb['tokens_per_s'] / b['tokens_per_s']:.2f}x"),
                ("bf16 autocast: tokens/s >= the transformer's, also under bf16 autocast",
                 mb["tokens_per_s"] >= tb["tokens_per_s"], f"{mb['tokens_per_s'] / tb['tokens_per_s']:.2f}x"),
                ("bf16 autocast: peak memory of one step < 3 GB", mb["peak_gb"] < GOAL_PEAK_GB, f"{mb['peak_gb']:.2f} GB"),
            ]
        lines += ["", "## Goals (target shape)", "", "| goal | met | measured |", "|---|---|---:|"]
        lines += [f"| {g} | **{'yes' if ok else 'no'}** | {v} |" for g, ok, v in verdict]
        lines += ["", *speed_bounds(m, b, tr)]
    lines += ["", "## Where the time goes (torch.profiler, self CPU time of one step, top ops)", ""]
    for shape in shapes:
        s = summaries[str(tuple(shape))]
        for impl in ("scmamba2", "before"):
            prof = s.get(impl, {}).get("profile")
            if prof:
                lines.append(f"- {impl}, {shape[0]} x {shape[1]}, batch {shape[2]} x {s[impl]['width']}: " + ", ".join(
                    f"`{p['name']}` {100 * p['share']:.0f} %" for p in prof[:10]))
    path.write_text("\n".join(lines) + "\n")
    return [f"{g}: {'met' if ok else 'not met'} ({v})" for g, ok, v in verdict]


def write_plot(path: Path, shapes: list, summaries: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{s[0]}x{s[1]}\nb{s[2]} L{s[3]}" for s in shapes]
    impls = [i for i in IMPLS + BF16_IMPLS if i in summaries[str(tuple(shapes[0]))]]
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        tps = [summaries[str(tuple(s))][impl].get("tokens_per_s", 0) for s in shapes]
        mem = [summaries[str(tuple(s))][impl].get("peak_gb", 0) for s in shapes]
        xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(shapes))]
        axes[0].bar(xs, tps, width, label=impl)
        axes[1].bar(xs, mem, width, label=impl)
    for ax, title in zip(axes, ("real tokens / s (training step)", "peak RSS of the step process, GB")):
        ax.set_xticks(range(len(shapes)), labels, fontsize=8)
        ax.set_title(title)
    axes[1].axhline(GOAL_PEAK_GB, color="grey", ls="--", lw=1)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small shapes, 1 round, 2 steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per worker (default 2)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 1)")
    ap.add_argument("--before-commit", default=BEFORE_COMMIT)
    ap.add_argument("--bf16", action="store_true", help="also both models under bfloat16 autocast")
    ap.add_argument("--shapes", help="only these shapes of the grid, e.g. 256x4 (d_model x layers, comma-separated)")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker), Path(args.worker_out))
        return 0
    args.steps = args.steps or 2
    args.rounds = args.rounds or 1
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.shapes:
        shapes = [s for s in shapes if f"{s[0]}x{s[1]}" in args.shapes.split(",")]
    name = "train_step_quick" if args.quick else "train_step"
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    import torch

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=REPO, capture_output=True, text=True).stdout
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                python=platform.python_version(), torch=torch.__version__, git=git + (" (+ uncommitted src)" if dirty else ""))
    t_start = time.time()
    runs = []
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        before_src = tmp / "before"
        before_src.mkdir()
        archive = subprocess.run(["git", "archive", args.before_commit, "src"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(before_src)], input=archive.stdout, check=True)
        srcs = {"before": before_src / "src"}
        for rnd in range(args.rounds):
            for shape in shapes:
                for impl in IMPLS + (BF16_IMPLS if args.bf16 else ()):
                    batch = shape[2]
                    if impl == "before":
                        batch = max(1, min(batch, BEFORE_MAX_TOKENS // shape[3]))
                    spec = dict(impl=impl, shape=list(shape), batch=batch, threads=args.threads,
                                steps=args.steps, seed=0, profile=(rnd == 0 and impl == "scmamba2"))
                    r = run_config(spec, tmp, srcs.get(impl, REPO / "src"))
                    runs.append(r)
                    msg = r.get("error", "").splitlines()[-1:] if "error" in r else (
                        f"{statistics.median(r['times']):.2f} s/step, peak {r['peak_rss'] / 1e9:.2f} GB")
                    print(f"[{time.time() - t_start:6.0f}s] round {rnd} {shape} {impl}: {msg}", flush=True)
    summaries = {str(tuple(s)): summarise(runs, s) for s in shapes}
    meta["wall_min"] = (time.time() - t_start) / 60
    (out_dir / f"{name}.json").write_text(json.dumps(dict(meta=meta, args=vars(args), summaries=summaries,
                                                          runs=runs), indent=1))
    verdict = write_markdown(out_dir / f"{name}.md", args, meta, shapes, summaries)
    write_plot(out_dir / f"{name}.png", shapes, summaries)
    print("\n".join(verdict) or "target shape not in this grid")
    print(f"wrote {out_dir / name}.md/.json/.png in {meta['wall_min']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
