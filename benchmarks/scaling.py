"""Scaling estimate: one epoch of SC-MAMBA2 pretraining at the paper's scale, from our own measured figures.

    .venv/bin/python benchmarks/scaling.py [--cells 57e6] [--tokens 1200] [--d-model 1536] [--layers 36]

Writes ``benchmarks/results/scaling.md`` and ``scaling.json``; ``docs/scaling.md`` explains them. Nothing is
trained here: the FLOPs come from the analytic count of ``benchmarks/backbone.py`` (the same formula that turned
the measured step times of that benchmark into GFLOP/s), the efficiency and the activation memory per token from
``benchmarks/results/backbone.json`` (measured on this project's CPU machine), the parameter count from building
the model on the meta device. The one figure that is not ours is the H100's dense BF16 peak (a datasheet number).
"""

import argparse
import os
import importlib.util
import json
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))

REPO = Path(_HERE).parent
RESULTS = REPO / "benchmarks" / "results"
H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM datasheet, dense BF16 tensor-core peak (not measured here)
EFFICIENCIES = (None, 0.30, 0.15)  # None = the fraction measured in backbone.json; the others are what-ifs


def _backbone():
    spec = importlib.util.spec_from_file_location("_backbone", Path(_HERE) / "backbone.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _measured(backbone_json: Path) -> dict:
    """fwd+bwd fraction of the machine's GEMM rate and activation bytes per token, BiMamba2, at 1k and 2k tokens
    (the lengths nearest to a 1,200-token cell) in the backbone benchmark (d_model 512, 1 layer, fp32)."""
    res = json.loads(backbone_json.read_text())
    rows = [r for r in res["results"] if r["model"] == "mamba" and r["mode"] == "fwd+bwd" and r["status"] == "ok"
            and r["L"] in (1024, 2048)]
    frac = {r["L"]: r["gemm_fraction"] for r in rows}
    act = {r["L"]: r["peak_increment"] / r["L"] for r in rows if r.get("peak_increment")}
    return {"gemm_fraction": frac, "activation_bytes_per_token_d512": act, "date": res["meta"]["date"],
            "git_head": res["meta"]["git_head"][:10], "d_model": rows[0]["spec"]["d_model"]}


def _n_params(vocab: int, d_model: int, n_layers: int) -> int:
    import torch

    from scmamba2.model import ModelConfig, ScMamba2

    with torch.device("meta"):
        m = ScMamba2(ModelConfig(vocab_size=vocab, d_model=d_model, n_layers=n_layers, headdim=64))
    return sum(p.numel() for p in m.parameters())


def estimate(cells: float, tokens: int, d_model: int, n_layers: int, vocab: int, d_state: int = 64,
             headdim: int = 64, chunk_size: int = 64, expand: int = 2, d_conv: int = 4,
             checkpointing: bool = True) -> dict:
    bb = _backbone()
    L = tokens + 1  # + <cls>
    e = expand * d_model
    layer = bb.mamba_layer_flops(L, d_model, e, e // headdim, headdim, d_state, 1, d_conv, chunk_size)
    heads = 2 * L * (3 * d_model * d_model)  # expression head (2 d x d) + MVC gene query (d x d), per token
    fwd = n_layers * layer + heads
    train_factor = 4 if checkpointing else 3  # fwd + bwd (2x fwd) + the recomputed fwd of checkpointed layers
    per_cell = train_factor * fwd
    epoch = cells * per_cell
    meas = _measured(RESULTS / "backbone.json")
    measured_frac = min(meas["gemm_fraction"].values())
    rows = []
    for eff in EFFICIENCIES:
        f = measured_frac if eff is None else eff
        sec = epoch / (f * H100_BF16_DENSE_TFLOPS * 1e12)
        rows.append({"efficiency": round(f, 3), "source": "measured (CPU, backbone.json)" if eff is None else
                     "what-if", "H100 GPU-hours / epoch": sec / 3600, "days on 64 H100": sec / 64 / 86400,
                     "cells/s per GPU": cells / sec})
    n_params = _n_params(vocab, d_model, n_layers)
    act = max(meas["activation_bytes_per_token_d512"].values()) * d_model / meas["d_model"] / 2  # bf16: half fp32
    return {"cells": cells, "tokens_per_cell": L, "d_model": d_model, "n_layers": n_layers, "vocab": vocab,
            "layer_fwd_flops": layer, "fwd_flops_per_cell": fwd, "train_flops_per_cell": per_cell,
            "train_factor": train_factor, "epoch_flops": epoch, "n_params": n_params,
            "param_state_bytes": 16 * n_params, "activation_bytes_per_token_layer": act, "measured": meas,
            "h100_bf16_dense_tflops": H100_BF16_DENSE_TFLOPS, "gpu_hours": rows}


def write_md(r: dict, path: Path) -> None:
    gb = 1024**3
    lines = [
        "# Scaling estimate: one pretraining epoch at the paper's scale",
        "",
        f"Regenerate: `.venv/bin/python benchmarks/scaling.py` (measured inputs from `backbone.json`, "
        f"{r['measured']['date'][:10]}, git {r['measured']['git_head']}).",
        "",
        f"Corpus {r['cells']:.3g} cells x {r['tokens_per_cell']:,} tokens (1,200 genes + `<cls>`); model d_model "
        f"{r['d_model']} x {r['n_layers']} bidirectional Mamba2 layers (d_state 64, headdim 64, expand 2, chunk 64),"
        f" vocabulary {r['vocab']:,}.",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| parameters | {r['n_params'] / 1e6:,.0f} M |",
        f"| forward FLOPs per layer per cell (both directions) | {r['layer_fwd_flops'] / 1e9:,.1f} G |",
        f"| forward FLOPs per cell (all layers + heads) | {r['fwd_flops_per_cell'] / 1e12:,.2f} T |",
        f"| training FLOPs per cell ({r['train_factor']}x forward: backward + checkpoint recompute) | "
        f"{r['train_flops_per_cell'] / 1e12:,.2f} T |",
        f"| **training FLOPs per epoch** | **{r['epoch_flops']:.2e}** |",
        f"| weights + grads + AdamW state (fp32 master, 16 B/param) | {r['param_state_bytes'] / gb:,.1f} GiB |",
        f"| activations per token per layer, bf16 (our pure-PyTorch path, scaled from d_model "
        f"{r['measured']['d_model']}) | {r['activation_bytes_per_token_layer'] / 1024:,.0f} KiB |",
        "",
        f"GPU-hours on H100 (dense BF16 peak {r['h100_bf16_dense_tflops']:.0f} TFLOP/s, datasheet) at a given "
        "fraction of that peak. The measured fraction is what our pure-PyTorch fwd+bwd reached of the CPU machine's "
        f"own measured GEMM rate at 1k-2k tokens ({', '.join(f'{k}: {v:.0%}' for k, v in r['measured']['gemm_fraction'].items())}; "
        "the lower one is used); no GPU run of ours exists yet.",
        "",
        "| fraction of peak | source | H100 GPU-hours / epoch | days on 64 H100 | cells/s per GPU |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in r["gpu_hours"]:
        lines.append(f"| {row['efficiency']:.0%} | {row['source']} | {row['H100 GPU-hours / epoch']:,.0f} | "
                     f"{row['days on 64 H100']:,.2f} | {row['cells/s per GPU']:,.1f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=float, default=57e6)
    ap.add_argument("--tokens", type=int, default=1200)
    ap.add_argument("--d-model", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--vocab", type=int, default=60697, help="Vocabulary size (scGPT's whole-human vocabulary).")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    r = estimate(args.cells, args.tokens, args.d_model, args.layers, args.vocab)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(r, indent=2) + "\n")
    write_md(r, args.out / "scaling.md")
    print((args.out / "scaling.md").read_text())


if __name__ == "__main__":
    main()
