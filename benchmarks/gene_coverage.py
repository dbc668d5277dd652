"""How many and which genes the bundled model needs: pbmc3k's QC cells embedded zero-shot from fewer genes.

    .venv/bin/python benchmarks/gene_coverage.py [--data-dir ../shared/data] [--out benchmarks/results]

Many shared files hold only highly variable genes (the quickstart's pbmc68k_reduced: 765). This embeds the same
cells (pbmc3k QC cells, genes of the model's vocabulary) from: every gene; only the 2,000 ``seurat`` HVGs,
renormalised over them (what the tokenizer does with such a file) or with each cell's whole library kept (one
extra column outside the vocabulary holds the other counts); and as many *random* expressed genes per cell as
the HVG view has, whole library kept, which separates "how many genes" from "which genes". Each row is the
5-fold kNN (k=15) label transfer of ``cell_type``; PCA-50 of the 2,000 HVGs (normalise, log1p, scale) beside.
One thread, seed 0. Writes ``<out>/gene_coverage.md``.
"""

import argparse
import logging
import os
from pathlib import Path

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))


def _with_rest(a, library):
    """``a`` plus one column outside the vocabulary holding each cell's other counts (its library is kept)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    m = sp.csr_matrix(a.X)
    rest = library - np.asarray(m.sum(1)).ravel()
    return ad.AnnData(sp.hstack([m, sp.csr_matrix(rest[:, None])]).tocsr().astype(np.float32),
                      var=pd.DataFrame(index=[*map(str, a.var_names), "__rest_of_the_cell__"]))


def _random_genes(X, n_keep, rng):
    """``X`` (CSR) with each row cut to ``n_keep[i]`` of its stored entries, chosen at random."""
    import scipy.sparse as sp

    data = X.data.copy()
    for i in range(X.shape[0]):
        s, e = X.indptr[i], X.indptr[i + 1]
        drop = rng.permutation(e - s)[min(n_keep[i], e - s):]
        data[s + drop] = 0
    out = sp.csr_matrix((data, X.indices.copy(), X.indptr.copy()), shape=X.shape)
    out.eliminate_zeros()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path(_HERE).parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(_HERE) / "results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import scanpy as sc
    import scipy.sparse as sp
    import torch

    from scmamba2._threads import keep_torch_threads
    from scmamba2.bench.representation import pbmc3k_qc_cells
    from scmamba2.eval.baselines import pca_embedding
    from scmamba2.eval.knn import knn_label_transfer_scores
    from scmamba2.pretrained import load
    from scmamba2.tasks.embed import embed

    torch.set_num_threads(1)
    model = load()
    raw = pbmc3k_qc_cells(args.data_dir)
    raw = raw[:, raw.var_names.isin(model.vocab.genes)].copy()
    raw.X = sp.csr_matrix(raw.X)
    labels = raw.obs["cell_type"].astype(str).to_numpy()
    ln = raw.copy()
    with keep_torch_threads():  # scanpy's numba kernels reset torch's thread count otherwise
        sc.pp.normalize_total(ln, target_sum=1e4)
        sc.pp.log1p(ln)
        sc.pp.highly_variable_genes(ln, n_top_genes=2000, flavor="seurat")
    hv = ln.var["highly_variable"].to_numpy()
    library = np.asarray(raw.X.sum(1)).ravel()
    n_hv = np.asarray((raw.X[:, hv] > 0).sum(1)).ravel()
    n_all = np.diff(raw.X.indptr)
    rand = raw.copy()
    rand.X = _random_genes(raw.X, n_hv, np.random.default_rng(args.seed))

    views = [
        ("every gene (raw counts)", raw, f"{int(np.median(n_all))}"),
        ("the 2,000 HVGs, renormalised over them (an HVG-only file)", raw[:, hv].copy(), f"{int(np.median(n_hv))}"),
        ("the 2,000 HVGs, each cell's whole library kept", _with_rest(raw[:, hv], library), f"{int(np.median(n_hv))}"),
        ("as many random expressed genes as the HVG view, whole library kept", _with_rest(rand, library),
         f"{int(np.median(n_hv))}"),
    ]
    rows = []
    for name, a, median in views:
        x = embed(a, model, progress=False, copy=True).obsm["X_scmamba2"]
        s = knn_label_transfer_scores(x, labels, args.seed)
        rows.append((f"scmamba2 zero-shot: {name}", median, s["kNN accuracy"], s["kNN macro-F1"]))
        print(rows[-1], flush=True)
    s = knn_label_transfer_scores(pca_embedding(raw[:, hv].copy(), n_comps=50, seed=args.seed), labels, args.seed)
    rows.append(("baseline: PCA-50 of the 2,000 HVGs (normalise, log1p, scale)", "-", s["kNN accuracy"],
                 s["kNN macro-F1"]))
    lines = ["# Gene coverage: how many and which genes the bundled model reads", "",
             "Regenerate: `.venv/bin/python benchmarks/gene_coverage.py`. " + " ".join(__doc__.split("\n\n")[2].split()),
             "", f"{raw.n_obs:,} cells, {raw.n_vars:,} genes of the model's vocabulary.", "",
             "| input | median expressed genes (tokens) per cell | kNN accuracy | kNN macro-F1 |", "|---|---|---|---|",
             *[f"| {n} | {m} | {a:.3f} | {f:.3f} |" for n, m, a, f in rows], ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gene_coverage.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
