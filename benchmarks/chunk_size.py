"""Benchmark: the scan's chunk size at the shapes the package runs, on this CPU.

    .venv/bin/python benchmarks/chunk_size.py [--threads 2] [--rounds 5]

The chunked scan computes the same output for any chunk size (``tests/nn/test_mamba2.py``); the size only
trades the quadratic work inside a chunk against the number of chunk states passed between chunks. One
bidirectional layer per shape, the same weights for every chunk size, forward (``inference_mode``) and forward +
backward of ``out.sum()``; every round runs each chunk size once, so the machine's drift hits all alike;
median over rounds. Shapes: the bundled model's batch (32 x 256, d_model 128, headdim 32), the issue's target
(8 x 1,024, d_model 256, headdim 32; batch 8 to stay under the recomputation threshold), and one long cell of
the backbone benchmark (1 x 2,048 and 1 x 8,192, d_model 512, headdim 64). Writes
``benchmarks/results/chunk_size.md``.
"""

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))

SHAPES = [(32, 256, 128, 32), (8, 1024, 256, 32), (1, 2048, 512, 64), (1, 8192, 512, 64)]  # batch, L, d, headdim
CHUNKS = (16, 32, 64, 128)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(_HERE) / "results" / "chunk_size.md")
    args = ap.parse_args(argv)

    import torch

    from scmamba2._malloc import tune_cpu_allocator
    from scmamba2.nn.bidirectional import BiMamba2Encoder

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for batch, length, d, headdim in SHAPES:
        x = torch.randn(batch, length, d)
        models = {c: BiMamba2Encoder(d, 1, dropout=0.0, chunk_size=c, headdim=headdim) for c in CHUNKS}
        for m in models.values():
            m.load_state_dict(models[CHUNKS[0]].state_dict())
        for mode in ("forward", "forward + backward"):
            def run(c):
                m = models[c]
                if mode == "forward":
                    with torch.inference_mode():
                        m.eval()(x)
                else:
                    m.train()(x.clone().requires_grad_()).sum().backward()

            times = {c: [] for c in CHUNKS}
            for c in CHUNKS:  # warm-up
                run(c)
            for _ in range(args.rounds):
                for c in CHUNKS:
                    t0 = time.perf_counter()
                    run(c)
                    times[c].append(time.perf_counter() - t0)
            med = {c: statistics.median(v) for c, v in times.items()}
            rows.append((f"{batch} x {length:,}, d{d}, headdim {headdim}", mode, med))
            print(rows[-1], flush=True)

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["# Scan chunk size", "", "Regenerate: `.venv/bin/python benchmarks/chunk_size.py` (method: its docstring)",
             "", f"Date: {datetime.date.today()}. Git {git}. {args.threads} thread(s), {args.rounds} rounds; seconds "
             "(median), and each chunk size's time relative to 64 (above 1 = faster than 64).", "",
             "| shape | pass | " + " | ".join(f"chunk {c}" for c in CHUNKS) + " | fastest |",
             "|---|---|" + "---:|" * (len(CHUNKS) + 1)]
    for shape, mode, med in rows:
        cells = " | ".join(f"{med[c]:.3f} ({med[64] / med[c]:.2f}x)" for c in CHUNKS)
        lines.append(f"| {shape} | {mode} | {cells} | {min(med, key=med.get)} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
