"""Rebuild the pretrained model that ships in the package (src/scmamba2/pretrained/scmamba2-pbmc-small/).

    .venv/bin/python scripts/build_pretrained.py [--data-dir ../shared/data] [--run-dir out/bundled_run]
                                                 [--steps N] [--seed 0] [--threads 1] [--resume]
                                                 [--export-only]

Pretrains (resumable across sittings with --resume), then writes the fp16 copy into the package. The model
card (MODEL_CARD.md beside it) records the data, steps, wall time and zero-shot scores of the shipped build.
See scmamba2.bench.bundled for the pool and the recipe.
"""

import argparse
import logging
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--run-dir", type=Path, default=REPO / "out" / "bundled_run")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results differ in the last bits)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    from scmamba2.bench.bundled import NAME, build, export, record_reference, write_card, zero_shot_scores

    if not args.export_only:
        build(args.data_dir, args.run_dir, steps=args.steps, resume=args.resume, seed=args.seed)
    dest = export(args.run_dir, REPO / "src" / "scmamba2" / "pretrained" / NAME)
    record_reference(dest)  # the few cells tests/pretrained checks the shipped embedding on
    scores = zero_shot_scores(dest, args.data_dir, seed=args.seed)
    print(scores.to_string())
    print("exported to", dest, "with", write_card(dest, args.run_dir, scores))
