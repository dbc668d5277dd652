"""Ablation: which gene panel a self-supervised fine-tune of the bundled model should reconstruct.

    .venv/bin/python benchmarks/finetune_panel.py [--data-dir ../shared/data] [--out benchmarks/results] [--seed 0]

``pretrain(adata, init_model="bundled")`` fine-tunes the bundled model on new cells with its own objective, the
whole profile of a gene panel. ``TrainConfig(finetune_panel="keep")`` (default) keeps the model's panel (its
per-gene statistics refitted on the new cells; panel genes the data did not measure are skipped);
``"data"`` chooses a new panel on the new cells (the model's panel size; the decoder starts from the old rows
of the genes both hold). Each is run with the quickstart's fine-tune (``scmamba2.quickstart.TRAIN``: 100 steps
of 32 cells, lr 1e-3) on the cells it then embeds, labels never used, and scored by 5-fold kNN (k=15) of the
cell types, next to the zero-shot embedding (PCA baselines of the same cells: the model card and
``quickstart``). One thread, seed 0.

Writes ``<out>/finetune_panel.md`` and ``finetune_panel.json``.
"""

import argparse
import json
import os
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))


def _sets(data_dir: Path):
    import scanpy as sc

    from scmamba2.bench.representation import load_kang, pbmc3k_qc_cells

    q = sc.datasets.pbmc68k_reduced()
    yield "pbmc68k_reduced (quickstart)", q, "bulk_labels", True
    yield "pbmc3k (2,638 QC cells)", pbmc3k_qc_cells(data_dir), "cell_type", False
    yield "Kang held-out donors", load_kang(data_dir)[1], "cell_type", False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path(_HERE).parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(_HERE) / "results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from scmamba2.eval.knn import knn_label_transfer_scores as knn_scores
    from scmamba2.pretrained import load
    from scmamba2.quickstart import TRAIN
    from scmamba2.tasks.embed import embed
    from scmamba2.train.config import TrainConfig
    from scmamba2.train.pretrain import pretrain

    bundled = load()
    rows = []
    for name, a, key, use_raw in _sets(args.data_dir):
        if not use_raw:
            a = a[:, a.var_names.isin(bundled.vocab.genes)].copy()
        labels = a.obs[key].astype(str).to_numpy()
        for method in ("zero-shot", "keep", "data"):
            t0 = time.process_time()
            model = bundled
            if method != "zero-shot":
                tcfg = TrainConfig(**{**TRAIN, "seed": args.seed, "finetune_panel": method, "progress_bar": False})
                model = pretrain(a, init_model=bundled, train_config=tcfg, use_raw=use_raw).model
            embed(a, model, use_raw=use_raw, progress=False)
            s = knn_scores(a.obsm["X_scmamba2"], labels, args.seed)
            rows.append({"data": name, "embedding": method, **s, "CPU min": (time.process_time() - t0) / 60})
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune_panel.json").write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=1))
    label = {"zero-shot": "bundled model, zero-shot", "keep": "fine-tuned, the model's panel (`keep`, default)",
             "data": "fine-tuned, a new panel chosen on the data (`data`)"}
    lines = [__doc__.strip().splitlines()[0].replace("Ablation: w", "# Fine-tuning: w"), "",
             "Regenerate: `.venv/bin/python benchmarks/finetune_panel.py`. " + " ".join(__doc__.split("\n\n")[2].split()),
             "", "| data | embedding | kNN accuracy | kNN macro-F1 | CPU min |", "|---|---|---|---|---|"]
    lines += [f"| {r['data']} | {label[r['embedding']]} | {r['kNN accuracy']:.3f} | {r['kNN macro-F1']:.3f} | "
              f"{r['CPU min']:.1f} |" for r in rows]
    (args.out / "finetune_panel.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
