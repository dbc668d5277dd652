"""GPU check: fused-kernel parity, bf16 vs fp32, throughput vs SDPA/FlashAttention, a 2-minute pretraining run.

Run on a machine with one CUDA GPU (``scripts/gpu_check.sh`` wraps this, with an 8-minute limit)::

    python benchmarks/gpu_check.py                      # writes benchmarks/results/gpu.md and gpu.json
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_dry.md   # CPU, tiny sizes, same code path

Sections (each one is timed and recorded; a section that fails is written as failed and the others run):

1. **Fused-kernel parity**: :class:`scmamba2.nn.mamba2.Mamba2Block` on the fused CUDA kernels
   (``mamba_ssm`` + ``causal_conv1d``) against the pure-PyTorch path with the same weights, forward output
   and every gradient, fp32 and bf16 autocast (the same check as the gpu-marked test
   ``tests/nn/test_mamba2.py::test_fused_matches_pure``, which is also run through pytest when not a dry
   run). Without the kernels (or on CPU) the pure path is compared with itself and the row says so.
2. **bf16 vs fp32**: one forward + backward of a small :class:`scmamba2.ScMamba2` (pretraining losses)
   under ``torch.autocast(bfloat16)`` against fp32, same weights and batch: relative error of the loss,
   of the expression predictions and of the gradients (max-abs error over max-abs value, per tensor; the
   worst tensor is reported).
3. **Throughput at 1k-64k tokens**: the bidirectional encoder (d_model 256 x 4 layers, the pretraining
   size) against an scGPT-style transformer of the same size (``benchmarks/_transformer.py``:
   ``scaled_dot_product_attention``, which dispatches to FlashAttention on CUDA for bf16 without a mask),
   batch 1, bf16 autocast; forward (inference_mode) and a training step (forward + backward), median of 3
   after a warm-up, peak GPU memory (``torch.cuda.max_memory_allocated``). A series stops at an
   out-of-memory error or after a step over 20 s.
4. **Pretraining for 2 minutes**: the training step of the pretraining plan (embeddings, encoder, GEP + MVC
   heads, masked-MSE losses, backward, clip 1.0, AdamW) outside Lightning, bf16 autocast, d_model 256 x 4
   layers, batches of 32 synthetic cells (log-normal lengths, median 1,000 tokens, capped at 2,000; length
   buckets and the real collator, 40 % masked) for 120 s after 3 untimed warm-up steps: cells/s, tokens/s,
   peak GPU memory, first and last loss. With the fused kernels, the same on the pure path for 60 s after it.

``--dry-run`` runs every section on the CPU at tiny sizes (d_model 32, lengths 64-128, 3 s of
pretraining): it checks the code path, not the numbers, and is part of the default test suite.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _load(name: str):
    """Import a sibling benchmark module by path (works however this script was started)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Ctx:
    """Device, sizes and timing helpers shared by the sections."""

    def __init__(self, dry_run: bool):
        import torch

        self.torch = torch
        self.dry = dry_run
        self.device = torch.device("cpu" if dry_run or not torch.cuda.is_available() else "cuda")
        self.cuda = self.device.type == "cuda"
        self.d_model, self.n_layers = (32, 1) if dry_run else (256, 4)
        self.lengths = [64, 128] if dry_run else [1024, 4096, 16384, 65536]
        self.pretrain_s = 3.0 if dry_run else 120.0
        self.batch, self.median_len = (4, 64) if dry_run else (32, 1000)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 1e9 if self.cuda else None

    def autocast(self):
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16)


def _rel(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ---------------------------------------------------------------------------------------------- sections
def section_parity(ctx: Ctx) -> dict:
    from scmamba2.nn import _kernels

    fused_ok = ctx.cuda and _kernels.HAS_KERNELS
    try:
        res = _parity(ctx, fused_ok)
    except Exception:  # a broken fused path: reported, and the later sections run on the pure path
        if not fused_ok:
            raise
        _kernels.HAS_KERNELS = False
        return dict(fused=True, rows=[], error_fused=traceback.format_exc(),
                    note="the fused path failed; the later sections ran on the pure-PyTorch path")
    return res


def _parity(ctx: Ctx, fused_ok: bool) -> dict:
    torch = ctx.torch
    from scmamba2.nn import _kernels
    from scmamba2.nn.mamba2 import Mamba2Block

    d = 32 if ctx.dry else 128
    torch.manual_seed(0)
    pure = Mamba2Block(d_model=d, d_state=16 if ctx.dry else 64, headdim=16 if ctx.dry else 64,
                       chunk_size=16 if ctx.dry else 64, use_kernels=False).to(ctx.device)
    other = Mamba2Block(d_model=d, d_state=16 if ctx.dry else 64, headdim=16 if ctx.dry else 64,
                        chunk_size=16 if ctx.dry else 64, use_kernels=True if fused_ok else False).to(ctx.device)
    other.load_state_dict(pure.state_dict())
    u = torch.randn(2 if ctx.dry else 4, 40 if ctx.dry else 300, d, device=ctx.device)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        outs, grads = [], []
        for block in (pure, other):
            x = u.clone().requires_grad_(True)
            with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype != torch.float32):
                y = block(x)
            y.float().square().mean().backward()
            outs.append(y.float())
            grads.append([x.grad.float()] + [p.grad.float() for p in block.parameters()])
            block.zero_grad()
        rows.append(dict(dtype=str(dtype).replace("torch.", ""), out_rel=_rel(outs[1], outs[0]),
                         grad_rel=max(_rel(a, b) for a, b in zip(grads[1], grads[0]))))
    res = dict(fused=fused_ok, conv_kernel=fused_ok and _kernels.HAS_CONV_KERNEL, rows=rows)
    if not ctx.dry:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               "tests/nn/test_mamba2.py::test_fused_matches_pure"], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        res["pytest"] = dict(rc=proc.returncode, tail=proc.stdout.strip().splitlines()[-1:] or [""])
    return res


def section_bf16(ctx: Ctx) -> dict:
    torch = ctx.torch
    from scmamba2._keys import MASK, TARGET_VALUES
    from scmamba2.model import ModelConfig, ScMamba2
    from scmamba2.train.losses import masked_mse

    make_batch = _load("train_step").make_batch
    torch.manual_seed(0)
    model = ScMamba2(ModelConfig(vocab_size=2000, d_model=ctx.d_model, n_layers=ctx.n_layers, dropout=0.0))
    model = model.to(ctx.device).train()
    batch = {k: v.to(ctx.device) for k, v in make_batch(4, 64 if ctx.dry else 512, 2000, 51, seed=1).items()}
    results = []
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(batch)
            loss = masked_mse(out.expr_pred.float(), batch[TARGET_VALUES], batch[MASK])
            loss = loss + masked_mse(out.mvc_pred.float(), batch[TARGET_VALUES], batch[MASK])
        loss.backward()
        results.append((loss.detach(), out.expr_pred.detach().float(),
                        {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l32, e32, g32), (l16, e16, g16) = results
    grad_rel = {n: _rel(g16[n], g32[n]) for n in g32 if n in g16}
    worst = max(grad_rel, key=grad_rel.get)
    return dict(loss_fp32=float(l32), loss_bf16=float(l16), loss_rel=abs(float(l16 - l32)) / abs(float(l32)),
                expr_rel=_rel(e16, e32), grad_rel_median=statistics.median(grad_rel.values()),
                grad_rel_worst=grad_rel[worst], grad_worst_tensor=worst)


def section_throughput(ctx: Ctx) -> dict:
    torch = ctx.torch
    from scmamba2.nn.bidirectional import BiMamba2Encoder

    TransformerEncoder = _load("_transformer").TransformerEncoder
    d, n_layers = ctx.d_model, ctx.n_layers
    from scmamba2.nn import _kernels

    hd = 32 if not ctx.dry else 16
    builders = {"bimamba2 (pure PyTorch)": lambda: BiMamba2Encoder(d, n_layers, headdim=hd, use_kernels=False)}
    if ctx.cuda and _kernels.HAS_KERNELS:
        builders["bimamba2 (fused scan)"] = lambda: BiMamba2Encoder(d, n_layers, headdim=hd, use_kernels=True)
    builders.update({
        "transformer (SDPA)": lambda: TransformerEncoder(d, n_layers, nhead=max(1, d // 32), dropout=0.0),
    })
    rows = []
    for name, build in builders.items():
        torch.manual_seed(0)
        model = build().to(ctx.device)
        for mode in ("fwd", "train"):
            stopped = None
            for length in ctx.lengths:
                if stopped:
                    rows.append(dict(model=name, mode=mode, length=length, stopped=stopped))
                    continue
                x = torch.randn(1, length, d, device=ctx.device)

                def step():
                    if mode == "fwd":
                        model.eval()
                        with torch.inference_mode(), ctx.autocast():
                            model(x)
                    else:
                        model.train()
                        xi = x.clone().requires_grad_(True)
                        with ctx.autocast():
                            out = model(xi)
                        out.float().square().mean().backward()
                        model.zero_grad(set_to_none=True)

                try:
                    ctx.reset_peak()
                    step()
                    ctx.sync()
                    times = []
                    for _ in range(3):
                        t0 = time.perf_counter()
                        step()
                        ctx.sync()
                        times.append(time.perf_counter() - t0)
                    t = statistics.median(times)
                    rows.append(dict(model=name, mode=mode, length=length, s=t, tokens_per_s=length / t,
                                     peak_gb=ctx.peak_gb()))
                    if t > 20:
                        stopped = f"previous step {t:.1f} s > 20 s"
                except torch.cuda.OutOfMemoryError as err:  # noqa: PERF203
                    stopped = f"out of memory at {length}"
                    rows.append(dict(model=name, mode=mode, length=length, stopped=str(err).splitlines()[0][:120]))
                    ctx.reset_peak()
                except Exception as err:  # noqa: BLE001 - a broken path: recorded, the other models still run
                    stopped = f"failed at {length}"
                    rows.append(dict(model=name, mode=mode, length=length,
                                     stopped=f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"))
        del model
    return dict(d_model=d, n_layers=n_layers, rows=rows)


WARMUP_STEPS = 3  # untimed first steps of the pretraining run (Triton compiles its kernels on first use)


def section_pretrain(ctx: Ctx) -> dict:
    """The pretraining run; with the fused kernels, a second run of half the length on the pure path after it."""
    from scmamba2.nn import _kernels

    if not (ctx.cuda and _kernels.HAS_KERNELS):
        return dict(runs=[dict(path="pure PyTorch", **_pretrain_run(ctx, ctx.pretrain_s, pure=True))])
    runs = []
    for path, seconds, pure in (("fused scan", ctx.pretrain_s, False), ("pure PyTorch", ctx.pretrain_s / 2, True)):
        try:  # one path failing still leaves the other's figures
            runs.append(dict(path=path, **_pretrain_run(ctx, seconds, pure=pure)))
        except Exception:  # noqa: BLE001
            runs.append(dict(path=path, error=traceback.format_exc()[-600:]))
    return dict(runs=runs)


def _pretrain_run(ctx: Ctx, seconds: float, pure: bool) -> dict:
    torch = ctx.torch
    import numpy as np

    from scmamba2._keys import GENES, MASK, PADDING_MASK, TARGET_VALUES, VALUES
    from scmamba2.data.collate import Collator, LengthBucketSampler
    from scmamba2.model import ModelConfig, ScMamba2
    from scmamba2.train.losses import masked_mse
    from scmamba2.train.schedule import make_optimizer

    vocab, n_bins = 20000 if not ctx.dry else 500, 51
    torch.manual_seed(0)
    model = ScMamba2(ModelConfig(vocab_size=vocab, d_model=ctx.d_model, n_layers=ctx.n_layers)).to(ctx.device)
    model.train()
    if pure:
        from scmamba2.nn.mamba2 import Mamba2Block

        for block in model.modules():
            if isinstance(block, Mamba2Block):
                block.use_kernels = False
    opt = make_optimizer(model, 1e-4, 0.01)
    rng = np.random.default_rng(0)
    n_cells = 100 * ctx.batch
    lengths = np.clip(np.round(ctx.median_len * np.exp(rng.normal(0, 0.35, n_cells))), 8, 2 * ctx.median_len)
    lengths = lengths.astype(int)
    collate = Collator(pad_id=0, mask_ratio=0.4, seed=0)

    # The synthetic cells are made before the clock starts, so the figure is the training step's, not numpy's.
    items = []
    for k in lengths:
        genes = np.concatenate([[1], rng.choice(np.arange(4, vocab), int(k) - 1, replace=False)])
        values = np.concatenate([[0.0], rng.integers(1, n_bins, int(k) - 1)]).astype(np.float32)
        items.append({GENES: genes, VALUES: values})

    def cells(index):
        return collate([items[i] for i in index])

    ctx.reset_peak()
    n_steps = n_cells_done = n_tokens = 0
    losses = []
    t_start = time.perf_counter()
    epoch = 0
    while n_steps < WARMUP_STEPS or time.perf_counter() - t_start < seconds:
        sampler = LengthBucketSampler(lengths, ctx.batch, seed=0, drop_last=True)
        sampler.set_epoch(epoch)
        for index in sampler:
            batch = {k: v.to(ctx.device, non_blocking=True) for k, v in cells(index).items()}
            with ctx.autocast():
                out = model(batch)
                loss = masked_mse(out.expr_pred.float(), batch[TARGET_VALUES], batch[MASK])
                loss = loss + masked_mse(out.mvc_pred.float(), batch[TARGET_VALUES], batch[MASK])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            n_steps += 1
            n_cells_done += len(index)
            n_tokens += int((~batch[PADDING_MASK]).sum())
            if n_steps == WARMUP_STEPS:  # kernels compiled, allocator warm: the clock starts now
                ctx.sync()
                t_start, n_cells_done, n_tokens = time.perf_counter(), 0, 0
            if n_steps == 1 or n_steps % 10 == 0:
                losses.append(float(loss.detach()))
            if n_steps > WARMUP_STEPS and time.perf_counter() - t_start >= seconds:
                break
        epoch += 1
    ctx.sync()
    wall = time.perf_counter() - t_start
    n_steps = max(n_steps - WARMUP_STEPS, 0)
    return dict(steps=n_steps, cells=n_cells_done, seconds=wall, cells_per_s=n_cells_done / wall,
                tokens_per_s=n_tokens / wall, peak_gb=ctx.peak_gb(), first_loss=losses[0] if losses else None,
                last_loss=losses[-1] if losses else None, d_model=ctx.d_model, n_layers=ctx.n_layers,
                batch=ctx.batch, median_len=ctx.median_len)


SECTIONS = [("parity", section_parity), ("bf16", section_bf16), ("throughput", section_throughput),
            ("pretrain", section_pretrain)]


# ------------------------------------------------------------------------------------------------ report
def _f(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def write_markdown(path: Path, meta: dict, results: dict) -> None:
    L = [f"# GPU check{' (DRY RUN on CPU: tiny sizes, checks the code path only)' if meta['dry_run'] else ''}", "",
         f"Regenerate: `bash scripts/gpu_check.sh` (`benchmarks/gpu_check.py`; method in its docstring).", "",
         f"Date: {meta['date']}. Device: {meta['device']}. Python {meta['python']}, torch {meta['torch']}, "
         f"CUDA {meta['cuda']}, fused kernels installed: {meta['kernels']}. Git {meta['git']}. "
         f"Total {meta['total_s']:.0f} s.", ""]
    for name, _ in SECTIONS:
        r = results[name]
        L.append(f"## {name} ({r.get('_seconds', 0):.0f} s)")
        L.append("")
        if "error" in r:
            L += ["**failed**:", "", "```", r["error"][-1500:], "```", ""]
            continue
        if name == "parity":
            if "error_fused" in r:
                L += [f"**the fused path failed** ({r['note']}):", "", "```", r["error_fused"][-1500:], "```", ""]
                continue
            conv = "causal_conv1d kernel" if r.get("conv_kernel") else "PyTorch convolution (no causal_conv1d)"
            what = (f"fused Triton SSD scan (mamba_ssm) + {conv} vs pure PyTorch" if r["fused"]
                    else "pure vs pure (no fused kernels here)")
            L += [f"{what}; relative max error:", "", "| autocast | output | worst gradient |", "|---|---:|---:|"]
            L += [f"| {x['dtype']} | {x['out_rel']:.2e} | {x['grad_rel']:.2e} |" for x in r["rows"]]
            if "pytest" in r:
                L += ["", f"pytest `test_fused_matches_pure`: rc {r['pytest']['rc']}, `{r['pytest']['tail'][0]}`"]
        elif name == "bf16":
            L += ["| loss fp32 | loss bf16 | loss rel. diff | GEP output rel. | gradient rel. (median / worst) |",
                  "|---:|---:|---:|---:|---|",
                  f"| {r['loss_fp32']:.4f} | {r['loss_bf16']:.4f} | {r['loss_rel']:.2e} | {r['expr_rel']:.2e} | "
                  f"{r['grad_rel_median']:.2e} / {r['grad_rel_worst']:.2e} (`{r['grad_worst_tensor']}`) |"]
        elif name == "throughput":
            L += [f"d_model {r['d_model']} x {r['n_layers']} layers, batch 1, bf16 autocast.", "",
                  "| model | mode | tokens | s | tokens/s | peak GB |", "|---|---|---:|---:|---:|---:|"]
            for x in r["rows"]:
                if "stopped" in x:
                    L.append(f"| {x['model']} | {x['mode']} | {x['length']:,} | stopped: {x['stopped']} | | |")
                else:
                    L.append(f"| {x['model']} | {x['mode']} | {x['length']:,} | {x['s']:.4f} | "
                             f"{x['tokens_per_s']:,.0f} | {_f(x['peak_gb'])} |")
        elif name == "pretrain":
            r0 = r["runs"][0]
            L += [f"d_model {r0['d_model']} x {r0['n_layers']} layers, batch {r0['batch']}, median "
                  f"{r0['median_len']} tokens per cell, bf16 autocast, after {WARMUP_STEPS} untimed steps.", "",
                  "| path | steps | cells | s | cells/s | tokens/s | peak GB | loss first -> last |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
            L += [f"| {x['path']} | failed: `{x['error'].strip().splitlines()[-1][:150]}` | | | | | | |"
                  if "error" in x else
                  f"| {x['path']} | {x['steps']} | {x['cells']} | {x['seconds']:.0f} | {x['cells_per_s']:.1f} | "
                  f"{x['tokens_per_s']:,.0f} | {_f(x['peak_gb'])} | {_f(x['first_loss'], '.3f')} -> "
                  f"{_f(x['last_loss'], '.3f')} |" for x in r["runs"]]
            L += ["", "Compare tokens/s: the runs differ in length, so they see different shares of the "
                  "length-bucketed epoch."]
        L.append("")
    path.write_text("\n".join(L))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the code path")
    ap.add_argument("--out", default=str(HERE / "results" / "gpu.md"), help="markdown path (+ .json beside it)")
    ap.add_argument("--only", default=None, help="comma-separated sections (default: all)")
    ap.add_argument("--pretrain-seconds", type=float, default=None, help="length of the pretraining run (120)")
    args = ap.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    ctx = Ctx(args.dry_run)
    if args.pretrain_seconds:
        ctx.pretrain_s = args.pretrain_seconds
    from scmamba2.nn import _kernels

    # A copied working tree may have no .git: GIT_COMMIT names the commit then.
    git = os.environ.get("GIT_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), dry_run=args.dry_run,
                device=torch.cuda.get_device_name(0) if ctx.cuda else f"CPU ({platform.processor() or platform.machine()})",
                python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                kernels=f"SSD scan {_kernels.HAS_KERNELS}, causal conv {_kernels.HAS_CONV_KERNEL}",
                git=git or "unknown")
    only = set(args.only.split(",")) if args.only else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Every section starts as "not run"; the files are rewritten after each one, so a run stopped by the time
    # limit still leaves the sections it finished.
    results = {name: dict(error="not run (stopped before this section)") for name, _ in SECTIONS}
    t0 = time.perf_counter()
    for name, fn in SECTIONS:
        if only and name not in only:
            results[name] = dict(error="not selected (--only)")
            continue
        ts = time.perf_counter()
        try:
            results[name] = fn(ctx)
        except Exception:  # a failed section is reported, the others still run
            results[name] = dict(error=traceback.format_exc())
        results[name]["_seconds"] = time.perf_counter() - ts
        print(f"[{time.perf_counter() - t0:5.0f} s] {name}: {'failed' if 'error' in results[name] else 'done'}",
              flush=True)
        meta["total_s"] = time.perf_counter() - t0
        write_markdown(out, meta, results)
        out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, results=results), indent=1, default=str))
    print(f"wrote {out}")
    return 1 if any("error" in r and not r["error"].startswith("not selected") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
