"""Benchmark (ablation): annotation's linear probe on one bundled build or on both builds side by side.

On each reference of the annotation benchmark (pbmc3k 70 %, Kang's five reference donors; the same splits), each
bundled build's frozen embedding (every expressed gene, profile metric) and the log-normalised matrix of the
reference's 2,000 HVGs are computed once. Classifiers: the linear probe (L2 logistic regression on the standardised
embedding) on build A (by default ``scmamba2-pbmc-small``), on build B (by default ``scmamba2-pbmc-small-seed2``), on
both side by side (AB, one probe on the two embeddings), and the gene-level classifier (L1 one-vs-rest logistic
regression on the HVGs); each gets its C by stratified 5-fold cross-validation of the whole reference, and the
combinations average their out-of-fold probabilities (``+genes``: gene weight 0.5, annotation's default;
``avg(A,B)``: two probes averaged). Every figure is the mean over three fold seeds (0, 1, 2), with the standard
deviation over them. The reference's cross-validated macro-F1 chooses; the query's scores (each classifier refitted
on the whole reference with its C) are shown for information only.

Run from the repository root::

    .venv/bin/python benchmarks/annotate_pair.py [--data-dir ../shared/data] [--builds A=DIR,B=DIR --stem NAME]

Writes ``benchmarks/results/annotate_pair.md`` and ``.json`` (~40 min on one thread).
"""

from __future__ import annotations

import numpy as np

from annotate_mix import _genes, _probe, _proba, cli

BUILDS = {"A": "scmamba2-pbmc-small", "B": "scmamba2-pbmc-small-seed2"}
# name: weights of the classifiers whose probabilities are averaged
COMBOS = {"genes": {"genes": 1}, "A": {"A": 1}, "A+genes (the default until 2026-12-05)": {"A": .5, "genes": .5},
          "B+genes": {"B": .5, "genes": .5}, "AB": {"AB": 1}, "AB+genes": {"AB": .5, "genes": .5},
          "avg(A,B)": {"A": .5, "B": .5}, "avg(A,B)+genes": {"A": .25, "B": .25, "genes": .5}}
FOLD_SEEDS = (0, 1, 2)
COMMAND = ".venv/bin/python benchmarks/annotate_pair.py"  # with the options of a run of other builds


def features(name: str, data_dir):
    """Class codes, each build's embedding in its profile metric (reference and query) and the HVG matrices."""
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
    emb = {}
    for tag, build in BUILDS.items():
        net, genes = adapted(load_model(build), ref, len(classes), None, False, None, 0.5, probe=True)
        metric = _readout_metric(net, None).numpy()
        for which, adata in (("ref", ref), ("query", query)):
            sub, _ = match_genes(adata, genes, layer=None, use_raw=False, gene_column=None, min_overlap=0.0, what="x")
            p = prepare_cells(sub, net.vocab, net.tokenizer_config, purpose="annotate", seed=0)
            emb[tag, which] = cell_embeddings(net, net.input_cells(p.cells)) @ metric
    X, Xq = _hvg_matrices(ref, query, 2000)
    return classes, y, qy, emb, np.asarray(X), np.asarray(Xq)


def _std(E, Eq):
    mu, sd = E.mean(0), E.std(0) + 1e-8
    return (E - mu) / sd, (Eq - mu) / sd


def run(name: str, data_dir) -> dict:
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold

    from scmamba2.eval.annotation_baselines import L1_CS
    from scmamba2.tasks._annotate_probe import PROBE_CS

    classes, y, qy, emb, X, Xq = features(name, data_dir)
    k = len(classes)
    feats = {t: _std(emb[t, "ref"], emb[t, "query"]) for t in BUILDS}
    feats["AB"] = _std(np.hstack([emb["A", "ref"], emb["B", "ref"]]), np.hstack([emb["A", "query"], emb["B", "query"]]))

    def f1(yy, P):
        return float(f1_score(yy, P.argmax(1), average="macro"))

    scores: dict[str, list] = {c: [] for c in COMBOS}
    chosen: dict[str, list] = {}
    for fs in FOLD_SEEDS:
        folds = list(StratifiedKFold(5, shuffle=True, random_state=fs).split(X, y))

        def oof(make, M, C):
            P = np.zeros((len(y), k))
            for tr, te in folds:
                P[te] = _proba(make(C).fit(M[tr], y[tr]), M[te], k)
            return P

        cv, q = {}, {}
        kinds = [(t, _probe, *feats[t], PROBE_CS) for t in ("A", "B", "AB")] + [("genes", _genes, X, Xq, L1_CS)]
        for kind, make, M, Mq, cs in kinds:
            best = max(((f1(y, P), C, P) for C in cs for P in [oof(make, M, C)]), key=lambda t: t[0])
            cv[kind], q[kind] = best[2], _proba(make(best[1]).fit(M, y), Mq, k)
            chosen.setdefault(kind, []).append(float(best[1]))
        for combo, w in COMBOS.items():
            P, Q = sum(v * cv[c] for c, v in w.items()), sum(v * q[c] for c, v in w.items())
            scores[combo].append([f1(y, P), f1(qy, Q), float((Q.argmax(1) == qy).mean())])
    rows = [{"classifier": c, "reference CV macro-F1": float(np.mean(v, 0)[0]),
             "reference CV sd": float(np.std(v, 0)[0]), "query macro-F1": float(np.mean(v, 0)[1]),
             "query accuracy": float(np.mean(v, 0)[2])} for c, v in scores.items()]
    return {"classes": k, "reference cells": len(y), "query cells": len(qy), "C": chosen, "rows": rows}


def render(res: dict, minutes: float) -> list[str]:
    lines = ["# Annotation: the probe on one bundled build or both side by side", "",
             f"Regenerate: `{COMMAND}`. "
             + __doc__.split("\n\n")[1].replace("\n", " "),
             "", "Builds: " + ", ".join(f"{t} = `{b}`" for t, b in BUILDS.items())
             + ". The query columns are for information and choose nothing.", ""]
    for name, r in res.items():
        lines += [f"## {name} ({r['reference cells']:,} reference / {r['query cells']:,} query cells, "
                  f"{r['classes']} types)", "",
                  "| classifier | reference CV macro-F1 (sd over fold seeds) | query macro-F1 | query accuracy |",
                  "|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['classifier']} | {row['reference CV macro-F1']:.3f} ({row['reference CV sd']:.3f}) "
                         f"| {row['query macro-F1']:.3f} | {row['query accuracy']:.3f} |")
        lines += ["", "C chosen per fold seed: " + "; ".join(f"{kk} {', '.join(f'{c:.3g}' for c in v)}"
                                                            for kk, v in r["C"].items()), ""]
    mean = {c: np.mean([r["rows"][i]["reference CV macro-F1"] for r in res.values()]) for i, c in enumerate(COMBOS)}
    best = max(mean, key=mean.get)
    return lines + ["Mean reference CV macro-F1 over both references: "
                    + ", ".join(f"{c}: {m:.4f}" for c, m in mean.items()) + f". Highest: {best}.", "",
                    f"Wall time {minutes:.1f} min."]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(add_help=False)  # the shared options (and --help) are cli()'s
    ap.add_argument("--builds", help="A=MODEL,B=MODEL: the two builds (names or folders; default the bundled two)")
    ap.add_argument("--stem", default="annotate_pair", help="results file name (default annotate_pair)")
    opts, rest = ap.parse_known_args()
    if opts.builds:
        BUILDS = dict(item.split("=", 1) for item in opts.builds.split(","))
        COMMAND += f" --builds {opts.builds} --stem {opts.stem}"
    raise SystemExit(cli(__doc__, run, render, opts.stem, rest))
