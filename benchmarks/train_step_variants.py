"""Benchmark: which of this branch's training-step changes pay for themselves, per CPU-second.

Run from the repository root::

    .venv/bin/python benchmarks/train_step_variants.py --shape bundled
    .venv/bin/python benchmarks/train_step_variants.py --shape target

Writes ``benchmarks/results/train_step_variants_<shape>.json`` and ``train_step_variants.md`` (the table of
every shape measured so far; the conclusions are in ``train_step.md``).

Variants, all in one process on one model (same parameters, same batch), switched between steps:

* ``main``: main's step: main's ``nn/ssd.py`` (``git show <--main>:src/scmamba2/nn/ssd.py``, the chunked scan
  differentiated by autograd) and main's bidirectional layer (the block called on the doubled batch
  ``cat(x, reverse(x))``: ``in_proj``/``out_proj`` on both directions).
* ``a``: one ``in_proj``/``out_proj`` per bidirectional layer, only conv + scan + gated norm on the doubled
  batch (this checkout's ``BiMamba2Layer``), the scan differentiated by autograd (as in main).
* ``b``: main's layer with the scan as one autograd.Function with a hand-written backward
  (``manual_backward=True``).
* ``a+b``: both, no recomputation (``recompute_tokens=None``).
* ``a+rc``, ``a+b+rc``: with conv + scan + gated norm recomputed in the backward pass in slices of
  ``recompute_tokens=4096`` tokens.

One step = :meth:`scmamba2.train.plan.TrainingPlan._losses` with pretraining's loss weights when the profile
head is on (the profile loss only; GEP/MVC weights 0, their heads still run as in pretraining),
``backward``, gradient clipping at 1.0 and an AdamW step, in train mode (dropout 0.1). The model is ScMamba2
with continuous values and the profile decoder of ``DEFAULT_PROFILE_GENES`` genes (pretraining's defaults).

Shapes: ``bundled`` = the bundled model's (d_model 128 x 2 layers, batch 32 x 256 tokens: its ``max_len``,
which nearly every PBMC cell reaches); ``target`` = the issue's (d_model 256 x 4 layers, ~1,000 tokens per
cell, lengths log-normal and batched by the length-bucket sampler as in ``benchmarks/train_step.py``) at
``--batch`` cells (default 4: the machine is shared and main's step stores ~90 KB per token and layer;
the CPU time per token of these steps hardly depends on the batch size).

Timing: one thread (``torch.set_num_threads(1)``); every variant gets one warm-up step, then ``--rounds``
rounds each run every variant once, in an order rotated per round, timed by ``time.process_time`` (this
process's own CPU time: other work on the shared cores inflates wall time, not this). The process runs with
the allocator setting pretraining applies (:func:`scmamba2._malloc.tune_cpu_allocator`); runs before
2026-12-03 lacked it, and page faults then took a large share of every step. Reported: the
median over rounds, and the range. Memory: bytes saved for the backward pass by one forward
(``torch.autograd.graph.saved_tensors_hooks``, each storage counted once; recomputed slices count only
their inputs), per real token.
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
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VARIANTS = ("main", "a", "b", "a+b", "a+rc", "a+b+rc")
# name: (d_model, n_layers, length, max_len)
SHAPES = {"bundled": (128, 2, 256, 256), "target": (256, 4, 1000, 2000)}


def _load_main_ssd(commit: str, tmp: Path):
    text = subprocess.run(["git", "show", f"{commit}:src/scmamba2/nn/ssd.py"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
    path = tmp / "main_ssd.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("_main_ssd", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="bundled")
    ap.add_argument("--batch", type=int, default=None, help="cells per batch (bundled 32, target 4)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--main", default="230fc2a", help="the commit whose scan and layer are 'main' (default: main "
                    "when this comparison began; main itself now holds these changes)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from scmamba2._malloc import tune_cpu_allocator

    tune_cpu_allocator()  # as pretraining does (src/scmamba2/_malloc.py); page faults otherwise skew the ratios
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sys.path.insert(0, str(HERE))
    from train_step import make_batch

    import scmamba2.nn.bidirectional as bidi
    import scmamba2.nn.mamba2 as mamba2
    from scmamba2._keys import GENES, PADDING_MASK, PROFILE, VALUES
    from scmamba2.data.collate import Collator
    from scmamba2.model import ModelConfig, ScMamba2
    from scmamba2.train.config import TrainConfig
    from scmamba2.train.plan import TrainingPlan
    from scmamba2.train.pretrain import DEFAULT_PROFILE_GENES
    from scmamba2.train.schedule import make_optimizer

    d, n_layers, length, max_len = SHAPES[args.shape]
    n_cells = args.batch or (32 if args.shape == "bundled" else 4)
    with tempfile.TemporaryDirectory() as tmp:
        main_ssd = _load_main_ssd(args.main, Path(tmp))
    branch_ssd = mamba2.ssd_chunked
    branch_mix = bidi.BiMamba2Layer._mix_both

    def main_scan(*args, manual_backward=False, **kwargs):  # main's ssd_chunked has no manual_backward
        return main_ssd.ssd_chunked(*args, **kwargs)

    def main_mix(self, x, padding_mask, lengths):  # main's layer: the whole block on cat(h, reverse(h))
        h, batch = self._normed(x, padding_mask), x.shape[0]
        both = self.block(torch.cat([h, bidi.reverse_valid(h, lengths)], dim=0))
        return both[:batch] + bidi.reverse_valid(both[batch:], lengths)

    vocab_size = 20000
    model = ScMamba2(ModelConfig(vocab_size=vocab_size, d_model=d, n_layers=n_layers, max_len=max_len,
                                 value_mode="continuous", profile_genes=DEFAULT_PROFILE_GENES)).train()
    layers = [m for m in model.modules() if isinstance(m, bidi.BiMamba2Layer)]

    def use(variant: str) -> None:
        mamba2.ssd_chunked = main_scan if variant == "main" else branch_ssd
        bidi.BiMamba2Layer._mix_both = main_mix if variant in ("main", "b") else branch_mix
        for layer in layers:
            layer.recompute_tokens = 4096 if variant.endswith("+rc") else None
            layer.block.manual_backward = "b" in variant.split("+")

    plan = TrainingPlan(model, TrainConfig(gep_weight=0.0, mvc_weight=0.0))
    opt = make_optimizer(model, 1e-4, 0.01)
    rng = np.random.default_rng(0)
    if length == max_len:  # every cell cut to max_len (PBMC cells have ~800 genes)
        items = [{GENES: np.concatenate([[1], rng.choice(np.arange(4, vocab_size), length - 1, replace=False)]),
                  VALUES: np.concatenate([[0.0], rng.integers(1, 51, length - 1)]).astype(np.float32)}
                 for _ in range(n_cells)]
        batch = Collator(pad_id=0, mask_ratio=0.4, seed=0)(items)
    else:
        batch = make_batch(n_cells, length, vocab_size, 51, seed=0)
    batch[VALUES] = batch[VALUES].float() / 10  # continuous, log-normalised-like values
    batch[PROFILE] = torch.from_numpy(rng.standard_normal((n_cells, DEFAULT_PROFILE_GENES)).astype(np.float32))
    real_tokens = int((~batch[PADDING_MASK]).sum())

    def step() -> float:
        c0 = time.process_time()
        losses, _ = plan._losses(batch)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return time.process_time() - c0

    def saved_bytes() -> int:
        seen: dict[int, int] = {}

        def pack(t):
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            losses, _ = plan._losses(batch)
        del losses
        return sum(seen.values())

    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    memory, times = {}, {v: [] for v in variants}
    for v in variants:
        use(v)
        memory[v] = saved_bytes()
        step()  # warm-up
    t0 = time.time()
    for rnd in range(args.rounds):
        for v in variants[rnd % len(variants):] + variants[: rnd % len(variants)]:
            use(v)
            times[v].append(step())
        print(f"[{time.time() - t0:5.0f}s] round {rnd}: " + ", ".join(f"{v} {times[v][-1]:.2f}" for v in variants),
              flush=True)
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                machine=f"{platform.machine()}, {os.cpu_count()} cores (shared)", torch=torch.__version__,
                git=subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                   text=True).stdout.strip(),
                main=subprocess.run(["git", "rev-parse", "--short", args.main], cwd=REPO, capture_output=True,
                                    text=True).stdout.strip(),
                shape=dict(d_model=d, n_layers=n_layers, batch=n_cells, width=int(batch[PADDING_MASK].shape[1]),
                           real_tokens=real_tokens), rounds=args.rounds)
    ref = statistics.median(times["main"]) if "main" in times else None
    rows = {}
    for v in variants:
        med = statistics.median(times[v])
        rows[v] = dict(cpu_s=med, lo=min(times[v]), hi=max(times[v]), speed_vs_main=ref / med if ref else None,
                       tokens_per_cpu_s=real_tokens / med, saved_kb_per_token=memory[v] / real_tokens / 1e3,
                       times=times[v])
        print(f"{v:7s} {med:6.2f} CPU s/step [{min(times[v]):.2f}-{max(times[v]):.2f}]"
              f"  x{(ref / med) if ref else float('nan'):.2f} vs main  {memory[v] / real_tokens / 1e3:6.1f} KB/token saved")
    out = Path(args.out_dir) / f"train_step_variants_{args.shape}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    write_markdown(Path(args.out_dir))
    print(f"wrote {out} and train_step_variants.md")
    return 0


LABELS = {"main": "main's step", "a": "(a) shared projections", "b": "(b) hand-written scan backward",
          "a+b": "(a) + (b)", "a+rc": "(a) + recompute 4,096", "a+b+rc": "(a) + (b) + recompute 4,096"}


def write_markdown(out_dir: Path) -> None:
    """``train_step_variants.md`` from every ``train_step_variants_<shape>.json`` in ``out_dir``."""
    lines = ["# Training step variants: which of issue 18's changes pay per CPU-second", "",
             "Regenerate: `.venv/bin/python benchmarks/train_step_variants.py --shape bundled` (and `--shape "
             "target`); method in its docstring. One process per shape, all variants on the same model and batch, "
             "switched between steps in rotated order; CPU seconds per step (process time, 1 thread): median "
             "[min-max] over the rounds. Saved = bytes kept for the backward pass by one forward, per real token.",
             "", "| shape | variant | CPU s/step | speed vs main | tokens per CPU-s | saved KB/token |",
             "|---|---|---:|---:|---:|---:|"]
    metas = []
    for path in sorted(out_dir.glob("train_step_variants_*.json")):
        res = json.loads(path.read_text())
        m, sh = res["meta"], res["meta"]["shape"]
        metas.append(f"{path.stem.rsplit('_', 1)[-1]}: {m['date']}, git {m['git']} (main {m['main']}), "
                     f"{m['rounds']} rounds, torch {m['torch']}, {m['machine']}")
        name = f"d{sh['d_model']} x {sh['n_layers']}, {sh['batch']} x {sh['width']}"
        for v, r in res["rows"].items():
            speed = "-" if r["speed_vs_main"] is None else f"{r['speed_vs_main']:.2f}x"
            lines.append(f"| {name} | {LABELS.get(v, v)} | {r['cpu_s']:.2f} [{r['lo']:.2f}-{r['hi']:.2f}] | {speed} "
                         f"| {r['tokens_per_cpu_s']:,.0f} | {r['saved_kb_per_token']:.1f} |")
    lines += ["", "Runs: " + "; ".join(metas) + "."]
    (out_dir / "train_step_variants.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
