"""Ablation: how many steps a self-supervised fine-tune of the bundled model should run.

    .venv/bin/python benchmarks/finetune_steps.py [--steps 100,400] [--data-dir ../shared/data] [--out benchmarks/results]

``pretrain(adata, init_model="bundled")`` fine-tunes the bundled model on new cells with its own objective (the
whole profile of its gene panel), as the quickstart's second step does. Each length runs the quickstart's
fine-tune (``scmamba2.quickstart.TRAIN``: batch 32, lr 1e-3 with 10 warm-up steps and cosine decay to the last
step, 40 % of values masked) on the cells it then embeds, labels never used in training, and is scored by 5-fold
kNN (k=15) of the cell types, next to the zero-shot embedding and PCA-50 of the same cells. The *selection* sets
choose the length: the readout benchmark's (Kang's five training donors, 3,000 cells; ifnb1k) and ifnb1k cut to
its 1,000 most variable genes, a file of HVGs only like the quickstart's. The quickstart's pbmc68k_reduced (765
HVGs) only reports. One thread, seed 0; the held-out profile loss of each fine-tune (10 % of the cells, never
trained on) is shown next to predicting each gene's mean.

Writes ``<out>/finetune_steps.md`` and ``finetune_steps.json``.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))


def _sets(data_dir: Path, seed: int):
    """``(name, role, AnnData, label key, use_raw, PCA-50 of it)``."""
    import anndata as ad
    import scanpy as sc

    from scmamba2._threads import keep_torch_threads
    from scmamba2.bench.representation import load_kang, log_norm, pca_train_eval
    from scmamba2.quickstart import pca_baseline

    rng = np.random.default_rng(seed)
    kang_train = load_kang(data_dir)[0]
    kang = kang_train[np.sort(rng.choice(kang_train.n_obs, 3000, replace=False))].copy()
    ifnb = ad.read_h5ad(data_dir / "ifnb1k.h5ad")
    norm = log_norm(ifnb)
    with keep_torch_threads():  # scanpy's numba kernels reset torch's thread count otherwise
        sc.pp.highly_variable_genes(norm, n_top_genes=1000, flavor="seurat")
    ifnb_hvg = ifnb[:, norm.var["highly_variable"].to_numpy()].copy()
    for name, a in (("Kang training donors (3,000 cells)", kang), ("ifnb1k", ifnb),
                    ("ifnb1k, 1,000 HVGs only", ifnb_hvg)):
        yield name, "selection", a, "cell_type", False, pca_train_eval(a, a, seed=seed)
    q = sc.datasets.pbmc68k_reduced()
    yield "pbmc68k_reduced (quickstart, 765 HVGs)", "report", q, "bulk_labels", True, pca_baseline(q, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path(_HERE).parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(_HERE) / "results")
    ap.add_argument("--steps", default="100,400", help="fine-tune lengths, comma-separated")
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

    steps = [int(s) for s in args.steps.split(",")]
    bundled = load()
    rows, t_all = [], time.perf_counter()
    for name, role, a, key, use_raw, pca in _sets(args.data_dir, args.seed):
        if not use_raw:
            a = a[:, a.var_names.isin(bundled.vocab.genes)].copy()
        labels = a.obs[key].astype(str).to_numpy()
        rows.append({"data": name, "role": role, "embedding": "PCA-50 of these cells", **knn_scores(pca, labels, args.seed)})
        for n in [0, *steps]:
            t0, model, val = time.process_time(), bundled, {}
            if n:
                tcfg = TrainConfig(**{**TRAIN, "max_steps": n, "val_every_n_steps": n, "seed": args.seed,
                                      "progress_bar": False})
                res = pretrain(a, init_model=bundled, train_config=tcfg, use_raw=use_raw)
                model, val = res.model, res.val_end
            embed(a, model, use_raw=use_raw, progress=False)
            rows.append({"data": name, "role": role, "embedding": f"{n} steps" if n else "zero-shot",
                         **knn_scores(a.obsm["X_scmamba2"], labels, args.seed),
                         "val profile": val.get("val/profile"), "gene mean": val.get("val/profile_gene_mean"),
                         "CPU min": (time.process_time() - t0) / 60})
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune_steps.json").write_text(json.dumps({"seed": args.seed, "steps": steps, "rows": rows}, indent=1))

    def fmt(v, spec=".3f"):
        return "-" if v is None else format(v, spec)

    lines = [__doc__.strip().splitlines()[0].replace("Ablation: h", "# Fine-tuning: h"), "",
             f"Regenerate: `.venv/bin/python benchmarks/finetune_steps.py --steps {args.steps}`. "
             + " ".join(__doc__.split("\n\n")[2].split()), "",
             "| data | role | embedding | kNN accuracy | kNN macro-F1 | held-out profile loss (gene means) | CPU min |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['data']} | {r['role']} | {r['embedding']} | {r['kNN accuracy']:.3f} | {r['kNN macro-F1']:.3f} | "
              f"{fmt(r.get('val profile'))} ({fmt(r.get('gene mean'))}) | {fmt(r.get('CPU min'), '.1f')} |"
              for r in rows]
    sel = [r for r in rows if r["role"] == "selection" and r["embedding"] not in ("PCA-50 of these cells",)]
    means = {e: np.mean([r["kNN macro-F1"] for r in sel if r["embedding"] == e]) for e in dict.fromkeys(r["embedding"] for r in sel)}
    lines += ["", "Mean kNN macro-F1 over the selection sets: "
              + ", ".join(f"{e} {v:.3f}" for e, v in means.items()) + f". Highest: {max(means, key=means.get)}.",
              "", f"Wall time {(time.perf_counter() - t_all) / 60:.1f} min. Single seed: differences of ~0.01 are noise."]
    (args.out / "finetune_steps.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
