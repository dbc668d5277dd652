"""Profile the pure-PyTorch bidirectional Mamba2 encoder at the two shapes of backbone_profile.md.

    .venv/bin/python benchmarks/profile_backbone.py train   # (a) 32 x 250 tokens, d 128, 3 layers, fwd+bwd
    .venv/bin/python benchmarks/profile_backbone.py infer   # (b) 1 x 16,384 tokens, d 512, 1 layer, inference

Prints the wall time (min of --repeats) and the torch.profiler table of the top operators.
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from scmamba2.nn.bidirectional import BiMamba2Encoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shape", choices=["train", "infer"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    if args.shape == "train":
        enc = BiMamba2Encoder(128, 3, headdim=32, d_state=64, use_kernels=False).train()
        x = torch.randn(32, 250, 128)

        def step():
            enc.zero_grad(set_to_none=True)
            enc(x).square().mean().backward()
    else:
        enc = BiMamba2Encoder(512, 1, use_kernels=False).eval()
        x = torch.randn(1, 16384, 512)

        def step():
            with torch.inference_mode():
                enc(x)

    step()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(f"{args.shape}: min {min(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))


if __name__ == "__main__":
    main()
