"""Benchmark (ablation): the weight of the gene-level classifier that annotation averages with the linear probe.

On each reference of the annotation benchmark (pbmc3k 70 %, Kang's five reference donors; the same splits), the
bundled model's frozen embedding (every expressed gene, profile metric) and the log-normalised matrix are split
once into 5 stratified folds of the whole reference. The linear probe (L2 logistic regression on the standardised
embedding) and the gene-level classifier (L1 one-vs-rest logistic regression on the reference's 2,000 HVGs) each
get their C by those folds; their out-of-fold probabilities are averaged with weight w on the gene classifier
(w = 0: the probe alone, w = 1: the gene classifier alone). The reference's cross-validated macro-F1 chooses w;
the query's scores (both classifiers refitted on the whole reference) are shown for information only. One L2
logistic regression on both feature sets side by side is scored the same way.

Run from the repository root::

    .venv/bin/python benchmarks/annotate_mix.py [--data-dir ../shared/data]

Writes ``benchmarks/results/annotate_mix.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def features(name: str, data_dir: Path):
    """Reference and query: class codes, standardised embedding in the profile metric, log-normalised HVGs."""
    from scmamba2.bench.annotate import _settings, _split
    from scmamba2.data.prepare import prepare_cells
    from scmamba2.eval.annotation_baselines import _hvg_matrices
    from scmamba2.tasks._annotate_model import adapted
    from scmamba2.tasks.annotate_predict import cell_embeddings, match_genes
    from scmamba2.tasks.embed import _readout_metric, load_model

    ref, query, _ = _split(data_dir / f"{name}.h5ad", name, 0, _settings(False))
    classes = np.array(sorted(ref.obs["cell_type"].astype(str).unique()))
    y = np.searchsorted(classes, ref.obs["cell_type"].astype(str).to_numpy())
    qy = np.searchsorted(classes, query.obs["cell_type"].astype(str).to_numpy())
    net, genes = adapted(load_model(None), ref, len(classes), None, False, None, 0.5, probe=True)
    metric = _readout_metric(net, None).numpy()

    def emb(adata):
        sub, _ = match_genes(adata, genes, layer=None, use_raw=False, gene_column=None, min_overlap=0.0, what="x")
        p = prepare_cells(sub, net.vocab, net.tokenizer_config, purpose="annotate", seed=0)
        return cell_embeddings(net, net.input_cells(p.cells)) @ metric

    E, Eq = emb(ref), emb(query)
    mu, sd = E.mean(0), E.std(0) + 1e-8
    X, Xq = _hvg_matrices(ref, query, 2000)
    return classes, y, qy, (E - mu) / sd, (Eq - mu) / sd, X, Xq


def _probe(C):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000)


def _genes(C):
    from scmamba2.eval.annotation_baselines import l1_logreg

    return l1_logreg(C)


def _proba(m, A, n_classes):
    p = np.zeros((len(A), n_classes))
    p[:, m.classes_] = m.predict_proba(A)
    return p / p.sum(1, keepdims=True)


def run(name: str, data_dir: Path) -> dict:
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold

    from scmamba2.eval.annotation_baselines import L1_CS
    from scmamba2.tasks._annotate_probe import PROBE_CS

    classes, y, qy, E, Eq, X, Xq = features(name, data_dir)
    k = len(classes)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(E, y))

    def oof(make, A, C):
        P = np.zeros((len(y), k))
        for tr, te in folds:
            P[te] = _proba(make(C).fit(A[tr], y[tr]), A[te], k)
        return P

    def f1(yy, P):
        return float(f1_score(yy, P.argmax(1), average="macro"))

    chosen, cv_proba, q_proba = {}, {}, {}
    for kind, make, A, Aq, cs in (("probe", _probe, E, Eq, PROBE_CS), ("genes", _genes, X, Xq, L1_CS)):
        scored = [(f1(y, P), C, P) for C in cs for P in [oof(make, A, C)]]
        best = max(scored, key=lambda t: t[0])
        chosen[kind], cv_proba[kind] = best[1], best[2]
        q_proba[kind] = _proba(make(best[1]).fit(A, y), Aq, k)
    rows = []
    for w in WEIGHTS:
        cv = (1 - w) * cv_proba["probe"] + w * cv_proba["genes"]
        q = (1 - w) * q_proba["probe"] + w * q_proba["genes"]
        rows.append({"classifier": f"gene weight {w}", "reference CV macro-F1": f1(y, cv),
                     "reference CV accuracy": float((cv.argmax(1) == y).mean()), "query macro-F1": f1(qy, q),
                     "query accuracy": float((q.argmax(1) == qy).mean())})
    joint = [(f1(y, oof(_probe, np.hstack([E, X]), C)), C) for C in (0.03, 0.1, 0.3)]
    cv, C = max(joint)
    m = _probe(C).fit(np.hstack([E, X]), y)
    qp = _proba(m, np.hstack([Eq, Xq]), k)
    rows.append({"classifier": f"one L2 regression on both (C {C})", "reference CV macro-F1": cv,
                 "reference CV accuracy": None, "query macro-F1": f1(qy, qp),
                 "query accuracy": float((qp.argmax(1) == qy).mean())})
    return {"classes": len(classes), "reference cells": len(y), "query cells": len(qy), "C": chosen, "rows": rows}


def cli(doc: str, run_one, render, stem: str, argv=None,
        datasets=("pbmc3k_raw_labeled", "kang_muscat_8donors")) -> int:
    """The scripts' shared command line: ``run_one(name, data_dir)`` on each of ``datasets`` (both references by
    default; one torch thread), ``render(results, minutes)`` -> markdown lines, written with the JSON to
    ``<out>/<stem>.md`` / ``.json``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    t0 = time.time()
    res = {n: run_one(n, args.data_dir) for n in datasets}
    lines = render(res, (time.time() - t0) / 60)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    print("\n".join(lines))
    return 0


def render(res: dict, minutes: float) -> list[str]:
    lines = ["# Annotation: averaging the linear probe with a gene-level classifier", "",
             "Regenerate: `.venv/bin/python benchmarks/annotate_mix.py`. " + __doc__.split("\n\n")[1].replace("\n", " "),
             "", "Gene weight 0 is the probe alone, 1 the gene-level classifier alone (the annotation benchmark's "
             "baseline recipe, with C chosen on these folds). Single split, single seed.", ""]
    for name, r in res.items():
        lines += [f"## {name} ({r['reference cells']:,} reference / {r['query cells']:,} query cells, "
                  f"{r['classes']} types; C: probe {r['C']['probe']:.3g}, genes {r['C']['genes']:.3g})", "",
                  "| classifier | reference CV macro-F1 | reference CV accuracy | query macro-F1 | query accuracy |",
                  "|---|---|---|---|---|"]
        for row in r["rows"]:
            acc = "-" if row["reference CV accuracy"] is None else f"{row['reference CV accuracy']:.3f}"
            lines.append(f"| {row['classifier']} | {row['reference CV macro-F1']:.3f} | {acc} | "
                         f"{row['query macro-F1']:.3f} | {row['query accuracy']:.3f} |")
        lines.append("")
    mean = {w: np.mean([r["rows"][i]["reference CV macro-F1"] for r in res.values()]) for i, w in enumerate(WEIGHTS)}
    best = max(mean, key=mean.get)
    return lines + [f"Mean reference CV macro-F1 over both references by gene weight: "
                    + ", ".join(f"{w}: {m:.3f}" for w, m in mean.items()) + f". Highest: {best}.", "",
                    f"Wall time {minutes:.1f} min."]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, run, render, "annotate_mix"))
