"""Benchmark: the scan's two forms, factored and segment-sum, at the shapes pretraining runs.

    .venv/bin/python benchmarks/scan_forms.py [--rounds 5] [--threads 1]

:func:`scmamba2.nn.ssd.ssd_chunked` alone (no projections, conv or norm), on the doubled batch a bidirectional
layer scans: the bundled model's (32 cells x 256 tokens -> 64 sequences, 8 heads of 32) and the issue's target
(8 x 1,024 -> 16, 16 heads of 32; and 32 x 1,024 -> 64), d_state 64, one group, chunks 32 / 64 / 128. The
step sizes are those of a trained model (dt 0.003-0.05 by head, A from -1.5 to -14), within the factored form's
range limit at every chunk here. Forward without autograd, and forward + backward of a random-weighted sum (the
hand-written backward of either form). The form is forced with ``scmamba2.nn.ssd.FACTORED_MAX_RANGE``; every
round runs every case once, so the machine's drift hits all alike; CPU seconds (process time), median over
rounds. Writes ``benchmarks/results/scan_forms.md``.
"""

import argparse
import datetime
import math
import os
import statistics
import subprocess
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))

SHAPES = [(64, 256, 8), (16, 1024, 16), (64, 1024, 16)]  # sequences, length, heads (headdim 32, d_state 64)
CHUNKS = (32, 64, 128)
FORMS = {"factored": math.inf, "segment-sum": -1.0}  # FACTORED_MAX_RANGE that forces each form


def _inputs(torch, seqs, length, heads, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(seqs, length, heads, 32, generator=gen)
    dt = torch.linspace(0.003, 0.05, heads) * torch.rand(seqs, length, heads, generator=gen).mul(2)
    A = -torch.linspace(1.5, 14.0, heads)
    B = torch.randn(seqs, length, 1, 64, generator=gen)
    C = torch.randn(seqs, length, 1, 64, generator=gen)
    D = torch.ones(heads)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(_HERE) / "results" / "scan_forms.md")
    args = ap.parse_args(argv)

    import torch

    from scmamba2.nn import ssd

    torch.set_num_threads(args.threads)
    limits = dict(ssd.FACTORED_MAX_RANGE)
    times: dict = {}
    for _ in range(args.rounds):
        for seqs, length, heads in SHAPES:
            x, dt, A, B, C, D = _inputs(torch, seqs, length, heads)
            weight = torch.randn(seqs, length, heads, 32)
            for q in CHUNKS:
                for form, limit in FORMS.items():
                    ssd.FACTORED_MAX_RANGE[torch.float32] = limit
                    t0 = time.process_time()
                    with torch.inference_mode():
                        ssd.ssd_chunked(x, dt, A, B, C, q, D=D)
                    t1 = time.process_time()
                    (ssd.ssd_chunked(x, dt, A, B, C, q, D=D) * weight).sum().backward()
                    t2 = time.process_time()
                    key = (seqs, length, heads, q, form)
                    times.setdefault(key, ([], []))
                    times[key][0].append(t1 - t0)
                    times[key][1].append(t2 - t1)
    ssd.FACTORED_MAX_RANGE.update(limits)

    med = {k: (statistics.median(f), statistics.median(fb)) for k, (f, fb) in times.items()}
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=_HERE).stdout.strip()
    lines = ["# The scan's two forms: factored vs segment-sum", "",
             f"Regenerate: `.venv/bin/python benchmarks/scan_forms.py` (method: its docstring). "
             f"Date {datetime.date.today()}, git {git}, torch {torch.__version__}, {args.threads} thread(s), "
             f"{args.rounds} rounds; CPU seconds (median).", "",
             "| sequences x length, heads | chunk | forward: segment-sum | forward: factored | speed-up | "
             "forward + backward: segment-sum | forward + backward: factored | speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for seqs, length, heads in SHAPES:
        for q in CHUNKS:
            seg, fac = med[(seqs, length, heads, q, "segment-sum")], med[(seqs, length, heads, q, "factored")]
            lines.append(f"| {seqs} x {length:,}, {heads} | {q} | {seg[0]:.3f} | {fac[0]:.3f} | "
                         f"{seg[0] / fac[0]:.2f}x | {seg[1]:.3f} | {fac[1]:.3f} | {seg[1] / fac[1]:.2f}x |")
    best = {}
    for (seqs, length, heads, q, form), (f, fb) in med.items():
        key = (seqs, length, heads)
        if form == "factored" and (key not in best or fb < best[key][1]):
            best[key] = (q, fb)
    lines += ["", "Fastest chunk of the factored form (forward + backward): "
              + "; ".join(f"{s} x {l:,}: {q}" for (s, l, _), (q, _) in best.items()) + "."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
