"""Rebuild a pretrained model that ships in the package (src/scmamba2/pretrained/NAME/).

    .venv/bin/python scripts/build_pretrained.py [--name scmamba2-pbmc-small] [--seed 0] [--steps N]
                                                 [--data-dir ../shared/data] [--run-dir out/NAME]
                                                 [--threads 1] [--resume] [--export-only]

The package ships two builds of one recipe (scmamba2.pretrained.DEFAULT_EMBEDDING), rebuilt by

    .venv/bin/python scripts/build_pretrained.py --name scmamba2-pbmc-small --seed 0
    .venv/bin/python scripts/build_pretrained.py --name scmamba2-pbmc-small-seed2 --seed 2

Pretrains (resumable across sittings with --resume), then writes the fp16 copy into the package. The model
card (MODEL_CARD.md beside it) records the data, steps, wall time and zero-shot scores of the build, alone and
side by side with the other build (embed's default). See scmamba2.bench.bundled for the pool and the recipe.
"""

import argparse
import logging
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--name", default="scmamba2-pbmc-small", help="the package folder to write")
    ap.add_argument("--run-dir", type=Path, default=None, help="default: out/NAME")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results differ in the last bits)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    from scmamba2.bench.bundled import build, export, record_reference, write_card, zero_shot_scores
    from scmamba2.pretrained import DEFAULT_EMBEDDING, available

    run_dir = args.run_dir or REPO / "out" / args.name
    if not args.export_only:
        build(args.data_dir, run_dir, steps=args.steps, resume=args.resume, seed=args.seed)
    dest = export(run_dir, REPO / "src" / "scmamba2" / "pretrained" / args.name)
    record_reference(dest)  # the few cells tests/pretrained checks the shipped embedding on
    models = {f"scmamba2 zero-shot: {args.name} alone": dest}
    if set(DEFAULT_EMBEDDING) <= set(available()):
        models["scmamba2 zero-shot: embed's default, " + " + ".join(DEFAULT_EMBEDDING) + " side by side"] = None
    scores = zero_shot_scores(models, args.data_dir)  # kNN folds of seed 0, as every zero-shot table
    print(scores.to_string())
    print("exported to", dest, "with", write_card(dest, run_dir, scores))
