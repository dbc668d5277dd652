"""Benchmark: bidirectional Mamba2 encoder vs an scGPT-style transformer encoder, time and memory vs length.

Run from the repository root::

    .venv/bin/python benchmarks/backbone.py            # full grid, L = 1k ... 64k, d_model 512, 1 layer
    .venv/bin/python benchmarks/backbone.py --quick    # L = 1k ... 8k, d_model 256, 1 repeat (< 5 min)
    .venv/bin/python benchmarks/backbone.py --lengths 1024,2048 --no-cell --out-dir out/bb   # a check

Writes ``<out-dir>/<name>.md``, ``.json`` and ``.png`` (``backbone`` for the full grid, ``backbone_quick``
for ``--quick``).

Method
------
* Every configuration (model, L, mode) runs in a fresh subprocess (this script with ``--worker``), with
  the parent's torch thread count. It imports torch, builds the model (batch 1, fp32, dropout 0), creates
  the input, then records the baseline RSS (``/proc/self/statm``). It runs one warm-up step and then the
  median of ``--repeats`` steps (1 repeat when the warm-up took more than 20 s). "fwd" is a forward under
  ``torch.inference_mode()`` in eval mode; "fwd+bwd" is train mode, ``loss = out.sum()``, ``backward()``
  (gradients set to None before each step). Peak memory = the process's peak RSS after the steps;
  "increment" = peak minus the baseline RSS. The peak is read from ``VmHWM`` in /proc/self/status,
  reset to the current RSS right after the baseline (``echo 5 > /proc/self/clear_refs``): that is
  ``getrusage(RUSAGE_SELF).ru_maxrss`` without the part ``ru_maxrss`` inherits from before ``exec`` (the
  parent's RSS at spawn time, ~280 MB here, which otherwise swamps the small configurations).
  ``ru_maxrss`` is kept in the JSON; it is the fallback where clear_refs is unavailable.
* A series (model, mode) stops at the first L where a step takes longer than ``--time-limit`` or the
  process RSS passes ``--mem-limit-gb`` (a watchdog thread polls RSS every 20 ms and ends the worker;
  it also ends a step that runs past ``--hard-limit-factor`` x the time limit). Larger L are not run.
* Machine fp32 GEMM GFLOP/s: ``torch.matmul`` of two 2048 x 2048 float32 matrices, median of 10 after 2
  warm-ups, in this (parent) process with the same thread count, measured at the start, before each new
  L and at the end of the run; the highest of these medians is the reference (the machine is shared, so
  a low figure means contention; the highest is also the conservative choice for the "% of GEMM" goal).

FLOP counts (forward, batch 1, one layer; 1 multiply-add = 2 FLOPs; element-wise work such as exp,
softplus, norms, the decay products and the gating is not counted)
-----------------------------------------------------------------------------------------------------
Bidirectional Mamba2 layer, with d = d_model, e = d_inner = expand*d, h = e / headdim heads, p = headdim,
n = d_state, g = ngroups, w = d_conv, q = chunk_size, c = ceil(L/q) chunks, conv_dim = e + 2*g*n,
d_in_proj = e + conv_dim + h::

    per direction = 2*L*conv_dim*w             depthwise causal conv
                  + 2*c*g*q*q*n                intra-chunk scores C.B^T (one per group, shared by its heads,
                                               as the implementation computes it; full q x q block)
                  + 2*c*h*q*q*p                intra-chunk (decay*scores) . x
                  + 2*c*h*q*n*p                chunk states B^T . x
                  + 2*c*h*q*n*p                state output C . state
    layer         = 2*L*d*d_in_proj            in_proj, once: it acts per position, so the reversed
                                               sequence's projection is the reversed projection
                  + 2 * per direction          (forward and reversed sequence)
                  + 2*L*e*d                    out_proj, once, of the two directions' summed outputs

(Runs before 2026-12-02 projected each direction separately and counted both projections twice.)

Transformer layer (8 heads, MLP hidden d_hid = d)::

    layer = 2*L*d*3d (qkv) + 2*L*d*d (out) + 4*L^2*d (QK^T and AV, full bidirectional) + 4*L*d*d_hid (MLP)

Forward+backward is counted as 3 x forward (the usual matmul approximation). Achieved GFLOP/s =
n_layers * layer FLOPs / median time.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = ("mamba", "transformer")
MODES = ("fwd", "fwd+bwd")
LABEL = {"mamba": "BiMamba2", "transformer": "Transformer"}
FULL_LENGTHS = [1024 * 2**i for i in range(7)]  # 1k ... 64k
QUICK_LENGTHS = [1024, 2048, 4096, 8192]
FIT_RANGE = (4096, 65536)
GOAL_TIME_EXP, GOAL_MEM_EXP, GOAL_GEMM_FRAC = 1.05, 1.0, 0.60
CELL_L, CELL_D, CELL_LAYERS, CELL_MEM_GOAL_GB = 60000, 512, 12, 2.0
SLOW_STEP_S = 20.0  # one repeat only when the warm-up step took longer than this


# ----------------------------------------------------------------------------------------------- FLOPs
def mamba_layer_flops(L: int, d_model: int, d_inner: int, nheads: int, headdim: int, d_state: int,
                      ngroups: int, d_conv: int, chunk_size: int) -> int:
    """Forward FLOPs of one bidirectional Mamba2 layer at batch 1 (formula in the module docstring)."""
    q, c = chunk_size, math.ceil(L / chunk_size)
    conv_dim = d_inner + 2 * ngroups * d_state
    d_in_proj = d_inner + conv_dim + nheads
    per_dir = (
        2 * L * conv_dim * d_conv
        + 2 * c * ngroups * q * q * d_state
        + 2 * c * nheads * q * q * headdim
        + 2 * c * nheads * q * d_state * headdim
        + 2 * c * nheads * q * d_state * headdim
    )
    return 2 * L * d_model * d_in_proj + 2 * per_dir + 2 * L * d_inner * d_model


def transformer_layer_flops(L: int, d_model: int, d_hid: int) -> int:
    """Forward FLOPs of one transformer encoder layer at batch 1 (formula in the module docstring)."""
    return 2 * L * d_model * 3 * d_model + 2 * L * d_model * d_model + 4 * L * L * d_model + 4 * L * d_model * d_hid


# ---------------------------------------------------------------------------------------------- worker
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _hwm_bytes() -> int | None:
    """This process's own peak RSS (``VmHWM``), or None where /proc does not give it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(hwm_reset: bool) -> int:
    """Peak RSS since the reset when it worked, else ``ru_maxrss``."""
    hwm = _hwm_bytes() if hwm_reset else None
    return hwm if hwm is not None else _maxrss_bytes()


def _filter_kwargs(cls, kwargs: dict) -> tuple[dict, dict]:
    params = inspect.signature(cls.__init__).parameters
    accepted = {k: v for k, v in kwargs.items() if k in params}
    return accepted, {k: v for k, v in kwargs.items() if k not in params}


def tile_kwarg(cls) -> tuple[str, object] | None:
    """Name and default of a tiling keyword of ``cls.__init__`` (e.g. ``tile_len``), if it has one."""
    for name, prm in inspect.signature(cls.__init__).parameters.items():
        if "tile" in name.lower():
            return name, (None if prm.default is inspect.Parameter.empty else prm.default)
    return None


def build_model(spec: dict):
    import torch

    torch.manual_seed(0)
    if spec["model"] == "mamba":
        from scmamba2.nn.bidirectional import BiMamba2Encoder

        kwargs, ignored = _filter_kwargs(BiMamba2Encoder, dict(spec.get("mamba_kwargs") or {}))
        model = BiMamba2Encoder(spec["d_model"], spec["n_layers"], dropout=0.0, **kwargs)
        blk = model.layers[0].block
        info = dict(kwargs=kwargs, ignored_kwargs=ignored, d_inner=blk.d_inner, nheads=blk.nheads,
                    headdim=blk.headdim, d_state=blk.d_state, ngroups=blk.ngroups, d_conv=blk.d_conv,
                    chunk_size=blk.chunk_size)
        info["layer_flops"] = mamba_layer_flops(spec["L"], spec["d_model"], blk.d_inner, blk.nheads, blk.headdim,
                                                blk.d_state, blk.ngroups, blk.d_conv, blk.chunk_size)
    else:
        import importlib.util

        mod_spec = importlib.util.spec_from_file_location("_bench_transformer", HERE / "_transformer.py")
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        TransformerEncoder = mod.TransformerEncoder

        model = TransformerEncoder(spec["d_model"], spec["n_layers"], nhead=8, d_hid=spec["d_model"], dropout=0.0)
        info = dict(nhead=8, d_hid=spec["d_model"], norm="post", activation="relu")
        info["layer_flops"] = transformer_layer_flops(spec["L"], spec["d_model"], spec["d_model"])
    return model, info


def run_worker(spec: dict, result_path: Path) -> None:
    """Measure one configuration; write a JSON dict to ``result_path`` (also on a watchdog stop)."""
    import torch

    torch.set_num_threads(spec["threads"])
    res = dict(spec=spec, status="error")
    lock = threading.Lock()
    state = dict(step_start=None, sampled_peak=0, done=False, hwm_reset=False)
    mem_limit = int(spec["mem_limit_gb"] * 2**30)

    def finish(status: str, **extra) -> None:
        with lock:
            if state["done"]:
                return
            state["done"] = True
            res.update(status=status, sampled_peak_rss=state["sampled_peak"], peak_rss=_peak_bytes(state["hwm_reset"]),
                       ru_maxrss=_maxrss_bytes(), **extra)
            result_path.write_text(json.dumps(res))

    def watchdog() -> None:
        while not state["done"]:
            rss = _rss_bytes()
            state["sampled_peak"] = max(state["sampled_peak"], rss)
            if rss > mem_limit:
                finish("stopped: memory", stop_detail=f"RSS {rss / 2**30:.3f} GiB > {spec['mem_limit_gb']} GiB")
                os._exit(0)
            start = state["step_start"]
            if start is not None and time.perf_counter() - start > spec["hard_limit_s"]:
                finish("stopped: time", stop_detail=f"step killed after {spec['hard_limit_s']:g} s")
                os._exit(0)
            time.sleep(0.02)

    threading.Thread(target=watchdog, daemon=True).start()
    model, info = build_model(spec)
    res["model_info"] = info
    x = torch.randn(1, spec["L"], spec["d_model"])
    train = spec["mode"] == "fwd+bwd"
    model.train(train)
    gc.collect()
    res["rss_base"] = _rss_bytes()
    res["maxrss_base"] = _maxrss_bytes()
    state["hwm_reset"] = res["hwm_reset"] = _reset_hwm()
    state["sampled_peak"] = 0

    def step() -> float:
        state["step_start"] = t0 = time.perf_counter()
        if train:
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
        else:
            with torch.inference_mode():
                model(x)
        dt = time.perf_counter() - t0
        state["step_start"] = None
        return dt

    times = []
    warm = None
    if spec["warmup"]:
        warm = step()
    if warm is not None and warm > spec["time_limit_s"]:
        status, detail = "stopped: time", f"warm-up step {warm:.1f} s > {spec['time_limit_s']:g} s"
    else:
        n_rep = spec["repeats"] if (warm is None or warm <= SLOW_STEP_S) else 1
        status, detail = "ok", ""
        for _ in range(max(n_rep, 1)):
            times.append(step())
            if times[-1] > spec["time_limit_s"]:
                status, detail = "stopped: time", f"step {times[-1]:.1f} s > {spec['time_limit_s']:g} s"
                break
    peak = _peak_bytes(state["hwm_reset"])
    if status == "ok" and max(peak, state["sampled_peak"]) > mem_limit:
        status, detail = "stopped: memory", f"peak {peak / 2**30:.2f} GiB > {spec['mem_limit_gb']} GiB"
    all_times = times or [warm]
    finish(status, stop_detail=detail, warmup_s=warm, times_s=times,
           median_s=statistics.median(all_times), peak_increment=peak - res["rss_base"])


# ---------------------------------------------------------------------------------------------- parent
def run_config(spec: dict, tmpdir: Path) -> dict:
    """Run one configuration in a fresh subprocess; a failure is recorded, never raised."""
    tag = f"{spec['model']}_{spec['mode'].replace('+', '')}_{spec['L']}_{spec['n_layers']}"
    result_path = tmpdir / f"{tag}.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker-out", str(result_path)]
    n_steps = spec["repeats"] + (1 if spec["warmup"] else 0)
    timeout = n_steps * spec["hard_limit_s"] + 300
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = "timeout", (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    wall = time.perf_counter() - t0
    if result_path.exists():
        res = json.loads(result_path.read_text())
    else:
        status = "stopped: time" if rc == "timeout" else "error"
        if rc in (-9, 137):
            status = "stopped: memory"  # most likely the kernel's OOM killer
        res = dict(spec=spec, status=status, stop_detail=f"worker rc={rc}", stderr_tail=(err or "")[-2000:])
    res["wall_s"] = wall
    return res


def _faster(kept: dict, new: dict) -> dict:
    """Of two rounds' results of one configuration, the one with the lower median step time (both ok), carrying
    every round's median in ``round_medians_s``."""
    rounds = kept.get("round_medians_s", [kept.get("median_s")]) + [new.get("median_s")]
    best = new if (new["status"] == "ok" and kept["status"] == "ok" and new["median_s"] < kept["median_s"]) else kept
    return {**best, "round_medians_s": rounds}


def measure_gemm(n: int = 2048, reps: int = 10) -> dict:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.matmul(a, b)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        ts.append(time.perf_counter() - t0)
    t = statistics.median(ts)
    return dict(n=n, reps=reps, median_s=t, gflops=2 * n**3 / t / 1e9, all_gflops=[2 * n**3 / s / 1e9 for s in ts])


def fit_exponent(points: list[tuple[int, float]]) -> dict | None:
    """Least-squares slope of log(y) vs log(L) over the points in FIT_RANGE with y > 0."""
    pts = [(L, y) for L, y in points if FIT_RANGE[0] <= L <= FIT_RANGE[1] and y and y > 0]
    if len(pts) < 2:
        return None
    xs = [math.log(L) for L, _ in pts]
    ys = [math.log(y) for _, y in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    return dict(exponent=slope, n_points=len(pts), L_min=pts[0][0], L_max=pts[-1][0])


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001 - informational only
        return ""


def _parse_lengths(text: str) -> list[int]:
    out = []
    for tok in text.split(","):
        tok = tok.strip().lower()
        if tok:
            out.append(int(float(tok[:-1]) * 1024) if tok.endswith("k") else int(tok))
    return out


def _fmt_s(r: dict | None) -> str:
    if r is None:
        return "—"
    if r.get("not_run"):
        return f"not run ({r['not_run']})"
    if r["status"] == "ok":
        return f"{r['median_s']:.3f}"
    if r["status"].startswith("stopped"):
        t = r.get("median_s")
        return f"{r['status']}" + (f" ({t:.1f} s)" if t else f" ({r.get('stop_detail', '')})")
    return f"error ({r.get('stop_detail', '')})"


def _mb(x) -> str:
    return "—" if x is None else f"{x / 2**20:,.0f}"


def _time_lower_bound(r: dict | None, time_limit: float, hard_limit: float) -> tuple[float | None, bool]:
    """(time, exact): the measured time, or a lower bound for a stopped / not-run point."""
    if r is None:
        return None, False
    if r.get("median_s") and r["status"] in ("ok", "stopped: time", "stopped: memory"):
        return r["median_s"], True
    if r["status"] == "stopped: time":  # killed after hard_limit
        return hard_limit, False
    if r.get("not_run_reason") == "time":  # a smaller L already passed the time limit; time grows with L
        return time_limit, False
    return None, False


def summarise(results: dict, args, gemm: dict, cell: dict | None, meta: dict) -> dict:
    """Derive ratios, GFLOP/s, exponents and goal checks from the raw results."""
    gemm_ref = gemm["reference_gflops"]
    table = {}
    for mode in MODES:
        rows = []
        for L in args.lengths:
            row = dict(L=L)
            for model in MODELS:
                r = results.get((model, mode, L))
                row[model] = r
                t = r.get("median_s") if r and r["status"] == "ok" else None
                if t:
                    flops = r["model_info"]["layer_flops"] * args.n_layers * (3 if mode == "fwd+bwd" else 1)
                    r["gflops"] = flops / t / 1e9
                    r["gemm_fraction"] = r["gflops"] / gemm_ref
                    r["tokens_per_s"] = L / t
            tm, exact_m = _time_lower_bound(row["mamba"], args.time_limit, args.hard_limit_s)
            tt, exact_t = _time_lower_bound(row["transformer"], args.time_limit, args.hard_limit_s)
            if tm and tt and row["mamba"]["status"] == "ok":
                row["ratio"] = tt / tm
                row["ratio_is_lower_bound"] = not exact_t
            rows.append(row)
        table[mode] = rows
    exps = {}
    for model in MODELS:
        for mode in MODES:
            pts_t, pts_m = [], []
            for L in args.lengths:
                r = results.get((model, mode, L))
                if r and r["status"] == "ok":
                    pts_t.append((L, r["median_s"]))
                    pts_m.append((L, r["peak_increment"]))
            exps[f"{model}|{mode}"] = dict(time=fit_exponent(pts_t), memory=fit_exponent(pts_m))
    return dict(table=table, exponents=exps)


def goals(summary: dict, args, cell: dict | None, gemm: dict) -> list[tuple[str, str, str]]:
    """(goal, verdict, detail) rows."""
    out = []
    ex = summary["exponents"]
    for mode in MODES:
        for kind, limit in (("time", GOAL_TIME_EXP), ("memory", GOAL_MEM_EXP)):
            f = ex[f"mamba|{mode}"][kind]
            goal = f"BiMamba2 {kind} exponent <= {limit} ({mode}, L 4k-64k)"
            if f is None:
                out.append((goal, "not measured", "fewer than 2 points in 4k-64k"))
                continue
            full = f["L_min"] == FIT_RANGE[0] and f["L_max"] == FIT_RANGE[1]
            verdict = "met" if f["exponent"] <= limit else "not met"
            if not full:
                verdict += " (partial range)"
            out.append((goal, verdict, f"{f['exponent']:.3f} over L {f['L_min']}-{f['L_max']} ({f['n_points']} points); "
                        f"margin {limit - f['exponent']:+.3f}"))
    fr = [(row["L"], row["mamba"].get("gemm_fraction")) for row in summary["table"]["fwd"]
          if row["L"] >= 4096 and row["mamba"] and row["mamba"].get("gemm_fraction")]
    goal = f"BiMamba2 layer forward >= {GOAL_GEMM_FRAC:.0%} of fp32 GEMM GFLOP/s at L >= 4k"
    if fr:
        worst = min(fr, key=lambda t: t[1])
        best = max(fr, key=lambda t: t[1])
        verdict = "met" if worst[1] >= GOAL_GEMM_FRAC else "not met"
        out.append((goal, verdict, f"{worst[1]:.1%} at L={worst[0]} (lowest) to {best[1]:.1%} at L={best[0]}; "
                    f"GEMM {gemm['reference_gflops']:.1f} GFLOP/s; short by "
                    f"{max(0.0, GOAL_GEMM_FRAC - worst[1]) * 100:.1f} points" if worst[1] < GOAL_GEMM_FRAC else
                    f"{worst[1]:.1%} at L={worst[0]} (lowest); GEMM {gemm['reference_gflops']:.1f} GFLOP/s"))
    else:
        out.append((goal, "not measured", "no L >= 4k measured"))
    for mode, L, need in (("fwd", 2048, 1.0), ("fwd+bwd", 2048, 1.0), ("fwd", 16384, 4.0), ("fwd", 65536, 10.0),
                          ("fwd+bwd", 16384, 3.0)):
        goal = f"transformer / BiMamba2 time >= {need:g}x at L={L // 1024}k ({mode})"
        row = next((r for r in summary["table"][mode] if r["L"] == L), None)
        if row is None or "ratio" not in row:
            out.append((goal, "not measured", "L not in the grid or a model missing"))
            continue
        lb = row.get("ratio_is_lower_bound")
        ok = row["ratio"] >= need
        verdict = "met" if ok else ("not determined (lower bound below goal)" if lb else "not met")
        detail = f"{'>= ' if lb else ''}{row['ratio']:.2f}x" + (" (transformer stopped: lower bound)" if lb else "")
        detail += f"; goal x{need:g}, {'margin' if ok else 'short by'} {abs(row['ratio'] / need - 1):.0%}"
        out.append((goal, verdict, detail))
    goal = (f"{CELL_L:,}-token cell, d_model {CELL_D} x {CELL_LAYERS} layers, forward within "
            f"{CELL_MEM_GOAL_GB:g} GB peak")
    if cell is None:
        out.append((goal, "not measured", "cell measurement not run (--no-cell / --quick)"))
    elif cell["status"] != "ok":
        out.append((goal, "not met", f"{cell['status']} {cell.get('stop_detail', '')}"))
    else:
        pk, inc = cell["peak_rss"], cell["peak_increment"]
        lim = CELL_MEM_GOAL_GB * 1e9
        verdict = "met" if pk <= lim else ("not met (increment alone within)" if inc <= lim else "not met")
        out.append((goal, verdict, f"peak RSS {pk / 1e9:.2f} GB total ({inc / 1e9:.2f} GB above the post-setup "
                    f"baseline), {cell['median_s']:.1f} s on {cell['spec']['threads']} threads; goal judged on the "
                    f"total process peak, {'margin' if pk <= lim else 'over by'} {abs(lim - pk) / 1e9:.2f} GB"))
    return out


def write_markdown(path: Path, args, meta, gemm, summary, goal_rows, cell) -> None:
    L_ = []
    w = L_.append
    grid = "quick" if args.quick else ("full" if args.lengths == FULL_LENGTHS else "custom")
    w(f"# Backbone benchmark: bidirectional Mamba2 vs transformer ({grid} grid)\n")
    w(f"Regenerate: `{meta['command']}`\n")
    w(f"Date: {meta['date']}. Machine: {meta['cpu']}, {meta['cores']} cores available, "
      f"torch.get_num_threads() = {meta['threads']}; Python {meta['python']}, torch {meta['torch']}. "
      f"Git {meta['git_head'][:10]}{' (working tree modified in src/scmamba2/nn)' if meta['nn_dirty'] else ''}.\n")
    w(f"Setup: batch 1, fp32, d_model {args.d_model}, depth {args.n_layers} layer(s) (times are for the whole "
      f"stack; per layer = time / {args.n_layers}), dropout 0. BiMamba2Encoder kwargs: "
      f"`{meta['mamba_kwargs_used']}` (signature `{meta['mamba_signature']}`). Transformer: scGPT-style post-norm "
      f"layer, 8 heads, MLP hidden {args.d_model}, ReLU, `scaled_dot_product_attention` (`benchmarks/_transformer.py`).\n")
    w(f"Each (model, L, mode) in a fresh subprocess: 1 warm-up step, then median of {args.repeats} "
      f"(1 when the warm-up took > {SLOW_STEP_S:.0f} s)"
      + (f"; the whole sweep ran {args.rounds} times, one round after the other, and each configuration reports "
         "its fastest round (every round's median is in the JSON, `round_medians_s`)" if args.rounds > 1 else "")
      + ". Peak = the worker's peak RSS during the steps "
      f"(`ru_maxrss` minus what it inherits from the parent before exec: `VmHWM` reset after setup); increment = "
      f"peak - RSS after imports + model + input. A series stops at the first step over {args.time_limit:g} s "
      f"(a step is killed after {args.hard_limit_s:g} s) or {args.mem_limit_gb:g} GiB RSS.\n")
    w(f"Machine fp32 GEMM (torch.matmul {gemm['start']['n']}x{gemm['start']['n']}, median of "
      f"{gemm['start']['reps']}): {gemm['start']['gflops']:.1f} GFLOP/s at the start, "
      f"{gemm['end']['gflops']:.1f} at the end"
      + (", " + ", ".join(f"{g['gflops']:.1f}" for g in gemm["during"]) + " between lengths" if gemm["during"] else "")
      + f"; reference = the highest, {gemm['reference_gflops']:.1f} GFLOP/s (the machine is shared: a lower "
      f"figure means contention, and the highest one is the conservative denominator).\n")
    w(f"Total wall time of the run: {meta['wall_s'] / 60:.1f} min.\n")
    for mode in MODES:
        w(f"## {mode} ({'inference_mode, eval' if mode == 'fwd' else 'train mode, loss = out.sum(), backward'})\n")
        w("| L | BiMamba2 s | Transformer s | Transformer / BiMamba2 | BiMamba2 tok/s | Transformer tok/s | "
          "BiMamba2 peak MB (+incr) | Transformer peak MB (+incr) | BiMamba2 GFLOP/s (% GEMM) | "
          "Transformer GFLOP/s (% GEMM) |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in summary["table"][mode]:
            m, t = row["mamba"], row["transformer"]
            ratio = "—" if "ratio" not in row else (">= " if row.get("ratio_is_lower_bound") else "") + f"{row['ratio']:.2f}x"

            def tok(r):
                return f"{r['tokens_per_s']:,.0f}" if r and r.get("tokens_per_s") else "—"

            def mem(r):
                if not r or r.get("not_run") or not r.get("peak_rss"):
                    return "—"
                return f"{_mb(r['peak_rss'])} (+{_mb(r.get('peak_increment'))})"

            def gf(r):
                return f"{r['gflops']:.1f} ({r['gemm_fraction']:.0%})" if r and r.get("gflops") else "—"

            w(f"| {row['L']:,} | {_fmt_s(m)} | {_fmt_s(t)} | {ratio} | {tok(m)} | {tok(t)} | {mem(m)} | {mem(t)} "
              f"| {gf(m)} | {gf(t)} |")
        w("")
    w("## Fitted exponents (least squares of log y vs log L, L in 4k-64k, points that exist)\n")
    w("| model | mode | time exponent | peak-memory-increment exponent |")
    w("|---|---|---:|---:|")
    for model in MODELS:
        for mode in MODES:
            e = summary["exponents"][f"{model}|{mode}"]

            def fe(f):
                return "—" if f is None else f"{f['exponent']:.3f} ({f['n_points']} pts, {f['L_min']}-{f['L_max']})"

            w(f"| {LABEL[model]} | {mode} | {fe(e['time'])} | {fe(e['memory'])} |")
    w("")
    w("## Fraction of the machine's fp32 GEMM rate\n")
    w("Analytic forward FLOPs per layer (formulas in the docstring of `benchmarks/backbone.py`; fwd+bwd counted "
      "as 3x forward) divided by the measured time; the tables above give GFLOP/s and % of "
      f"{gemm['reference_gflops']:.1f} GFLOP/s per L. BiMamba2 forward at L >= 4k: "
      + (", ".join(f"{r['L'] // 1024}k {r['mamba']['gemm_fraction']:.0%}" for r in summary["table"]["fwd"]
                   if r["L"] >= 4096 and r["mamba"] and r["mamba"].get("gemm_fraction")) or "none measured")
      + ". Transformer forward at L >= 4k: "
      + (", ".join(f"{r['L'] // 1024}k {r['transformer']['gemm_fraction']:.0%}" for r in summary["table"]["fwd"]
                   if r["L"] >= 4096 and r["transformer"] and r["transformer"].get("gemm_fraction")) or "none measured")
      + ".\n")
    if cell is not None:
        w(f"## {CELL_L:,}-token cell, d_model {CELL_D} x {CELL_LAYERS} layers, forward (inference_mode)\n")
        if cell["status"] == "ok":
            w(f"One run (no warm-up), separate subprocess, BiMamba2Encoder kwargs `{cell.get('model_info', {}).get('kwargs')}`: "
              f"{cell['median_s']:.1f} s ({CELL_L / cell['median_s']:,.0f} tokens/s), peak RSS "
              f"{cell['peak_rss'] / 1e9:.2f} GB total, {cell['peak_increment'] / 1e9:.2f} GB above the "
              f"{cell['rss_base'] / 1e9:.2f} GB post-setup baseline.\n")
        else:
            w(f"{cell['status']}: {cell.get('stop_detail', '')}\n")
    w("## Goals\n")
    w("| goal | verdict | detail |")
    w("|---|---|---|")
    for g, v, d in goal_rows:
        w(f"| {g} | **{v}** | {d} |")
    w("")
    w("Raw numbers: the `.json` next to this file; plot: the `.png`.\n")
    path.write_text("\n".join(L_))


def write_plot(path: Path, args, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    style = {("mamba", "fwd"): ("C0", "-"), ("mamba", "fwd+bwd"): ("C0", "--"),
             ("transformer", "fwd"): ("C3", "-"), ("transformer", "fwd+bwd"): ("C3", "--")}
    for (model, mode), (color, ls) in style.items():
        pts = [(L, results[(model, mode, L)]) for L in args.lengths if (model, mode, L) in results]
        ok = [(L, r) for L, r in pts if r["status"] == "ok"]
        over = [(L, r) for L, r in pts if r["status"].startswith("stopped") and r.get("median_s")]
        lab = f"{LABEL[model]} {mode}"
        if ok:
            axes[0].plot([L for L, _ in ok], [r["median_s"] for _, r in ok], color=color, ls=ls, marker="o", label=lab)
            axes[1].plot([L for L, _ in ok], [r["peak_increment"] / 2**20 for _, r in ok], color=color, ls=ls,
                         marker="o", label=lab)
        if over:
            axes[0].plot([L for L, _ in over], [r["median_s"] for _, r in over], color=color, marker="x", ls="none",
                         markersize=9, label=f"{lab} (over time limit)")
    axes[0].axhline(args.time_limit, color="grey", lw=0.8, ls=":")
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="seconds per step (median)",
                title=f"time, d_model {args.d_model}, {args.n_layers} layer(s), batch 1, fp32")
    axes[1].set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="peak RSS increment (MiB)",
                title="peak memory above post-setup baseline")
    for ax in axes:
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(args.lengths)
        ax.set_xticklabels([f"{L // 1024}k" for L in args.lengths])
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for the method and the FLOP formulas.")
    p.add_argument("--quick", action="store_true",
                   help="reduced grid: L 1k-8k, d_model 256, 1 repeat, no 60k cell; writes backbone_quick.*")
    p.add_argument("--lengths", type=_parse_lengths, default=None,
                   help="comma-separated L (e.g. 1024,2048 or 1k,2k); default 1k..64k (quick: 1k..8k)")
    p.add_argument("--d-model", type=int, default=None, help="model width (default 512; quick 256)")
    p.add_argument("--n-layers", type=int, default=1, help="depth of both encoders (default 1: per-layer cost)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps after 1 warm-up (default 3; quick 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="sweep every length this many times, one round after the other; each configuration reports "
                        "its fastest round (load on a shared machine only ever slows a round down)")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds; a longer step stops its series")
    p.add_argument("--hard-limit-factor", type=float, default=3.0,
                   help="a step still running after this x --time-limit is killed (default 3)")
    p.add_argument("--mem-limit-gb", type=float, default=16.0, help="GiB of process RSS that stops a series")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of mamba,transformer")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of fwd,fwd+bwd")
    p.add_argument("--mamba-kwargs", type=json.loads, default={},
                   help='extra BiMamba2Encoder kwargs as JSON, e.g. \'{"chunk_size": 128}\' (unknown ones are dropped)')
    p.add_argument("--no-cell", action="store_true", help="skip the 60,000-token x 12-layer cell measurement")
    p.add_argument("--cell", action="store_true", help="run the cell measurement even with --quick")
    p.add_argument("--cell-tile-len", type=int, default=4096,
                   help="value for a tiling kwarg (e.g. tile_len) of BiMamba2Encoder if it has one whose default "
                        "is None (default 4096)")
    p.add_argument("--cell-time-limit", type=float, default=900.0, help="seconds before the cell run is killed")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default=None, help="output file stem (default backbone; quick: backbone_quick)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        # Both models run with the allocator setting scmamba2 applies in pretrain/embed (src/scmamba2/_malloc.py).
        from scmamba2._malloc import tune_cpu_allocator

        tune_cpu_allocator()
        run_worker(json.loads(args.worker), args.worker_out)
        return 0

    t_run = time.perf_counter()
    if args.lengths is None:
        args.lengths = QUICK_LENGTHS if args.quick else FULL_LENGTHS
    args.lengths = sorted(set(args.lengths))
    if args.d_model is None:
        args.d_model = 256 if args.quick else 512
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    args.hard_limit_s = args.time_limit * args.hard_limit_factor
    name = args.name or ("backbone_quick" if args.quick else "backbone")
    models = [m for m in args.models.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    do_cell = (not args.no_cell) and (args.cell or not args.quick)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tmpdir = args.out_dir / f".{name}_tmp"
    tmpdir.mkdir(exist_ok=True)

    import torch

    from scmamba2._sysinfo import cpu_model
    from scmamba2.nn.bidirectional import BiMamba2Encoder

    threads = torch.get_num_threads()
    mamba_kwargs, dropped = _filter_kwargs(BiMamba2Encoder, args.mamba_kwargs)
    if dropped:
        print(f"note: BiMamba2Encoder does not take {sorted(dropped)}; ignored", flush=True)
    meta = dict(
        command=".venv/bin/python benchmarks/backbone.py" + ("" if not sys.argv[1:] else " " + " ".join(sys.argv[1:])),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=cpu_model(), cores=len(os.sched_getaffinity(0)), threads=threads, torch=torch.__version__,
        python=platform.python_version(), git_head=_git("rev-parse", "HEAD"),
        nn_dirty=bool(_git("status", "--porcelain", "src/scmamba2/nn")),
        mamba_signature=str(inspect.signature(BiMamba2Encoder.__init__)).replace("self, ", ""),
        mamba_kwargs_used=mamba_kwargs, lengths=args.lengths, d_model=args.d_model, n_layers=args.n_layers,
        repeats=args.repeats, rounds=args.rounds, time_limit_s=args.time_limit, hard_limit_s=args.hard_limit_s,
        mem_limit_gb=args.mem_limit_gb, quick=args.quick,
    )
    print(f"{meta['cpu']}, {meta['cores']} cores, {threads} torch threads, torch {meta['torch']}", flush=True)
    gemm = dict(start=measure_gemm())
    print(f"fp32 GEMM: {gemm['start']['gflops']:.1f} GFLOP/s", flush=True)

    base = dict(d_model=args.d_model, n_layers=args.n_layers, repeats=args.repeats, warmup=True,
                time_limit_s=args.time_limit, hard_limit_s=args.hard_limit_s, mem_limit_gb=args.mem_limit_gb,
                threads=threads, mamba_kwargs=mamba_kwargs)
    results: dict = {}
    stopped: dict = {}  # (model, mode) -> (L, reason)
    gemm["during"] = []
    sweep = [(rnd, L) for rnd in range(args.rounds) for L in args.lengths]
    for rnd, L in sweep:  # interleaved by L so both models see the same machine conditions
        if (rnd, L) != sweep[0]:
            gemm["during"].append(measure_gemm())
        for mode in modes:
            for model in models:
                key = (model, mode, L)
                if (model, mode) in stopped:
                    if rnd == 0:
                        L0, why = stopped[(model, mode)]
                        results[key] = dict(status="not run", not_run=f"{why} at L={L0:,}", not_run_reason=why,
                                            spec=dict(base, model=model, mode=mode, L=L))
                    continue
                r = run_config(dict(base, model=model, mode=mode, L=L), tmpdir)
                if rnd:
                    r = _faster(results[key], r)
                results[key] = r
                msg = f"{r['median_s']:.3f} s" if r.get("median_s") else ""
                pk = f", peak +{r['peak_increment'] / 2**20:,.0f} MiB" if r.get("peak_increment") is not None else ""
                print(f"{LABEL[model]:>11} {mode:>7} L={L:>6}: {r['status']} {msg}{pk} "
                      f"{r.get('stop_detail', '')} [{r['wall_s']:.0f} s wall]", flush=True)
                if r["status"] != "ok":
                    why = "memory" if "memory" in r["status"] else ("time" if "time" in r["status"] else "error")
                    stopped[(model, mode)] = (L, why)
                    if r["status"] == "error":
                        print(r.get("stderr_tail", "")[-1500:], file=sys.stderr, flush=True)

    cell = None
    if do_cell:
        ck = dict(mamba_kwargs)
        tk = tile_kwarg(BiMamba2Encoder)
        if tk is not None and tk[0] not in ck and tk[1] is None:
            ck[tk[0]] = args.cell_tile_len
        spec = dict(base, model="mamba", mode="fwd", L=CELL_L, d_model=CELL_D, n_layers=CELL_LAYERS, repeats=1,
                    warmup=False, time_limit_s=args.cell_time_limit, hard_limit_s=args.cell_time_limit,
                    mamba_kwargs=ck)
        print(f"cell: BiMamba2Encoder({CELL_D}, {CELL_LAYERS}, **{ck}) forward on (1, {CELL_L}, {CELL_D}) ...", flush=True)
        cell = run_config(spec, tmpdir)
        if cell["status"] == "stopped: time" and not cell.get("median_s"):
            cell["status"] = "stopped: time"
        print(f"cell: {cell['status']} {cell.get('median_s', '')} s, peak "
              f"{(cell.get('peak_rss') or 0) / 1e9:.2f} GB {cell.get('stop_detail', '')}", flush=True)

    gemm["end"] = measure_gemm()
    gemm["reference_gflops"] = max(g["gflops"] for g in [gemm["start"], gemm["end"], *gemm["during"]])
    meta["wall_s"] = time.perf_counter() - t_run
    # fill the columns for a model/mode left out with --models/--modes as "not run"
    for L in args.lengths:
        for mode in MODES:
            for model in MODELS:
                results.setdefault((model, mode, L), dict(status="not run", not_run="not selected", spec={}))
    summary = summarise(results, args, gemm, cell, meta)
    goal_rows = goals(summary, args, cell, gemm)

    out_md, out_json, out_png = (args.out_dir / f"{name}{ext}" for ext in (".md", ".json", ".png"))
    write_markdown(out_md, args, meta, gemm, summary, goal_rows, cell)
    raw = dict(meta=meta, gemm=gemm,
               results=[dict(model=k[0], mode=k[1], L=k[2], **{kk: vv for kk, vv in v.items()})
                        for k, v in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2]))],
               ratios={mode: [dict(L=row["L"], ratio=row.get("ratio"), lower_bound=row.get("ratio_is_lower_bound"))
                              for row in summary["table"][mode]] for mode in MODES},
               exponents=summary["exponents"], cell=cell,
               goals=[dict(goal=g, verdict=v, detail=d) for g, v, d in goal_rows])
    out_json.write_text(json.dumps(raw, indent=1, default=str))
    try:
        write_plot(out_png, args, results)
    except Exception as exc:  # noqa: BLE001 - the numbers matter more than the figure
        print(f"plot failed: {exc!r}", file=sys.stderr)
    for f in tmpdir.glob("*.json"):
        f.unlink()
    tmpdir.rmdir()
    print(f"wrote {out_md}, {out_json.name}, {out_png.name} ({meta['wall_s'] / 60:.1f} min)", flush=True)
    for g, v, d in goal_rows:
        print(f"  [{v}] {g}: {d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
