"""Benchmark: the scan's hand-written backward against autograd's, by sequence length (one long cell).

    .venv/bin/python benchmarks/scan_backward.py [--lengths 2048,4096,8192,16384] [--rounds 3] [--threads 2]

One bidirectional layer (d_model 512, batch 1), forward + backward of a random-weighted sum of its output (a
dense gradient), with the allocator setting pretraining applies. Both backwards run in one process on the same
weights and input, alternating in every round, so the machine's drift hits both alike. The switch is
``scmamba2.nn.mamba2.MANUAL_BACKWARD_MAX_LEN`` (set here to force one path); its value is what this table
decides. Writes ``benchmarks/results/scan_backward.md``.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))

PATHS = {"hand-written": 10**9, "autograd": 0}  # MANUAL_BACKWARD_MAX_LEN that forces each path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="2048,4096,8192,16384")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(_HERE) / "results" / "scan_backward.md")
    args = ap.parse_args(argv)

    import torch

    import scmamba2.nn.mamba2 as mamba2
    from scmamba2._malloc import tune_cpu_allocator
    from scmamba2.nn.bidirectional import BiMamba2Encoder

    default = mamba2.MANUAL_BACKWARD_MAX_LEN
    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layer = BiMamba2Encoder(512, 1)
    rows = []
    for length in map(int, args.lengths.split(",")):
        x, w = torch.randn(1, length, 512), torch.randn(1, length, 512)
        times = {k: [] for k in PATHS}
        for r in range(args.rounds + 1):  # round 0 warms up
            for name, limit in PATHS.items():
                mamba2.MANUAL_BACKWARD_MAX_LEN = limit
                t0 = time.perf_counter()
                (layer(x) * w).sum().backward()
                if r:
                    times[name].append(time.perf_counter() - t0)
                layer.zero_grad(set_to_none=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(f"| {length:,} | " + " | ".join(f"{med[k]:.2f} [{min(times[k]):.2f}-{max(times[k]):.2f}]"
                                                   for k in PATHS) + f" | {med['hand-written'] / med['autograd']:.2f}x |")
        print(rows[-1], flush=True)
    mamba2.MANUAL_BACKWARD_MAX_LEN = default
    text = "\n".join([
        "# The scan's backward by sequence length: hand-written vs autograd",
        "",
        f"Regenerate: `.venv/bin/python benchmarks/scan_backward.py`. One bidirectional layer, d_model 512, batch 1, "
        f"forward + backward of a random-weighted sum, {args.threads} threads, the allocator setting applied; seconds "
        f"per step, median [min-max] of {args.rounds} alternating rounds after a warm-up. torch {torch.__version__}.",
        "",
        "| tokens | hand-written s | autograd s | hand-written / autograd |",
        "|---:|---:|---:|---:|",
        *rows,
        "",
        f"The default (`MANUAL_BACKWARD_MAX_LEN` = {default:,}) keeps the hand-written backward up to that many "
        "tokens a sequence, where pretraining's cells are and where it saves ~40 % "
        "of the bytes kept for backward at the same step speed (`train_step_variants.md`), and uses autograd above.",
        "",
    ])
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
