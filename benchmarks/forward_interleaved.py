"""Benchmark: BiMamba2 against the same-size transformer, forward only, both models alternating in one process.

    .venv/bin/python benchmarks/forward_interleaved.py [--lengths 1024,2048,4096] [--rounds 25] [--threads 2]

``backbone.py`` times each model in its own process, one after the other, so the machine's drift between the
two (this shared machine's GEMM rate moves by ~40 % within minutes) lands on the ratio: its 2,048-token forward
ratio ranged from 0.76x to 1.19x over five runs. Here both encoders of ``backbone.py`` (d_model 512, one layer,
batch 1, fp32, ``inference_mode``; the transformer of ``benchmarks/_transformer.py``, 8 heads, SDPA) are built
in one process with the allocator setting pretraining applies, and every round times one forward of each, in
an order that alternates per round. The ratio transformer time / BiMamba2 time is taken per round (so drift
slower than a round cancels); reported: its median and quartiles over the rounds. Writes
``benchmarks/results/forward_interleaved.md``.
"""

import argparse
import datetime
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))


def _transformer(d_model: int):
    spec = importlib.util.spec_from_file_location("_bench_transformer", Path(_HERE) / "_transformer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TransformerEncoder(d_model, 1, nhead=8, d_hid=d_model, dropout=0.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="1024,2048,4096")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path(_HERE) / "results" / "forward_interleaved.md")
    args = ap.parse_args(argv)

    import torch

    from scmamba2._malloc import tune_cpu_allocator
    from scmamba2.nn.bidirectional import BiMamba2Encoder

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"bimamba2": BiMamba2Encoder(args.d_model, 1, dropout=0.0).eval(),
              "transformer": _transformer(args.d_model).eval()}
    rows = []
    for length in map(int, args.lengths.split(",")):
        x = torch.randn(1, length, args.d_model)
        times = {name: [] for name in models}

        def run(name):
            with torch.inference_mode():
                t0 = time.perf_counter()
                models[name](x)
                return time.perf_counter() - t0

        for name in models:  # warm-up
            run(name)
        for r in range(args.rounds):
            for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
                times[name].append(run(name))
        ratios = sorted(t / m for t, m in zip(times["transformer"], times["bimamba2"]))
        q1, med, q3 = statistics.quantiles(ratios, n=4)
        rows.append((length, statistics.median(times["bimamba2"]), statistics.median(times["transformer"]),
                     med, q1, q3, sum(r >= 1 for r in ratios) / len(ratios)))
        print(rows[-1], flush=True)

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["# Forward pass, BiMamba2 vs transformer, both alternating in one process", "",
             "Regenerate: `.venv/bin/python benchmarks/forward_interleaved.py` (method: its docstring)", "",
             f"Date: {datetime.date.today()}. Git {git}. d_model {args.d_model}, one layer, batch 1, fp32, "
             f"{args.threads} thread(s), {args.rounds} rounds.", "",
             "| tokens | BiMamba2 s (median) | transformer s (median) | transformer / BiMamba2, median [quartiles] "
             "of per-round ratios | rounds with BiMamba2 at least as fast |",
             "|---:|---:|---:|---:|---:|"]
    for length, tm, tt, med, q1, q3, share in rows:
        lines.append(f"| {length:,} | {tm:.4f} | {tt:.4f} | {med:.2f}x [{q1:.2f}-{q3:.2f}] | {share:.0%} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
