"""Benchmark (ablation): how annotation's two classifiers choose their regularisation strength C.

Annotation's linear probe and gene-level classifier each choose C from a grid by stratified 5-fold
cross-validation on the reference's training cells, scored by macro-F1. Macro-F1 on folds that hold a handful of
cells of the rare types is a step function of C, so the choice can jump: on Kang's reference the probe chose
C = 0.0316 on the training nine-tenths and 3.16 on the whole reference. This script compares that criterion with
the cross-validated log-loss (smooth in C) by nested cross-validation on each reference alone: 5 outer stratified
folds; on each outer training part the inner 5-fold search chooses both C's by each criterion, both classifiers are
fitted with them and their probabilities averaged (gene weight 0.5, annotation's default); the outer held-out
cells' macro-F1 (pooled over the outer folds) scores the criterion. The query's scores (C chosen on the whole
reference by each criterion) are shown for information only. Same features and splits as
``benchmarks/annotate_mix.py``.

Run from the repository root::

    .venv/bin/python benchmarks/annotate_c_choice.py [--data-dir ../shared/data]

Writes ``benchmarks/results/annotate_c_choice.md`` and ``.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # annotate_mix, this script's sibling
CRITERIA = ("macro-F1", "log-loss")
WEIGHT = 0.5


def choose(make, A, y, cs, k, seed=0):
    """The C each criterion chooses by stratified 5-fold CV of ``make(C)`` on ``(A, y)``."""
    from sklearn.metrics import f1_score, log_loss
    from sklearn.model_selection import StratifiedKFold

    from annotate_mix import _proba

    n_folds = int(min(5, np.bincount(y, minlength=k).min()))
    folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(A, y))
    scores = {c: [] for c in CRITERIA}
    for C in cs:
        P = np.zeros((len(y), k))
        for tr, te in folds:
            P[te] = _proba(make(C).fit(A[tr], y[tr]), A[te], k)
        scores["macro-F1"].append(f1_score(y, P.argmax(1), average="macro"))
        scores["log-loss"].append(-log_loss(y, np.clip(P, 1e-12, 1), labels=np.arange(k)))
    return {c: float(cs[int(np.argmax(s))]) for c, s in scores.items()}


def run(name: str, data_dir: Path) -> dict:
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold

    from annotate_mix import _genes, _probe, _proba, features

    from scmamba2.eval.annotation_baselines import L1_CS
    from scmamba2.tasks._annotate_probe import PROBE_CS

    classes, y, qy, E, Eq, X, Xq = features(name, data_dir)
    k = len(classes)
    kinds = (("probe", _probe, E, Eq, PROBE_CS), ("genes", _genes, X, Xq, L1_CS))
    outer = {c: np.zeros((len(y), k)) for c in CRITERIA}
    chosen_outer = {c: {"probe": [], "genes": []} for c in CRITERIA}
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=1).split(E, y):
        ytr = y[tr]
        picks = {kind: choose(make, A[tr], ytr, cs, k) for kind, make, A, _, cs in kinds}
        for c in CRITERIA:
            p = 0.0
            for kind, make, A, _, _ in kinds:
                C = picks[kind][c]
                chosen_outer[c][kind].append(C)
                w = WEIGHT if kind == "genes" else 1 - WEIGHT
                p = p + w * _proba(make(C).fit(A[tr], ytr), A[te], k)
            outer[c][te] = p
    whole = {kind: choose(make, A, y, cs, k) for kind, make, A, _, cs in kinds}
    rows = []
    for c in CRITERIA:
        q = sum((WEIGHT if kind == "genes" else 1 - WEIGHT) * _proba(make(whole[kind][c]).fit(A, y), Aq, k)
                for kind, make, A, Aq, _ in kinds)
        rows.append({"criterion": c, "nested CV macro-F1 (reference)": float(f1_score(y, outer[c].argmax(1),
                                                                                      average="macro")),
                     "nested CV accuracy (reference)": float((outer[c].argmax(1) == y).mean()),
                     "C chosen in the outer folds": chosen_outer[c],
                     "C on the whole reference": {kind: whole[kind][c] for kind in ("probe", "genes")},
                     "query macro-F1": float(f1_score(qy, q.argmax(1), average="macro")),
                     "query accuracy": float((q.argmax(1) == qy).mean())})
    return {"classes": k, "reference cells": len(y), "query cells": len(qy), "rows": rows}


def render(res: dict, minutes: float) -> list[str]:
    lines = ["# Annotation: choosing C by cross-validated macro-F1 or log-loss", "",
             "Regenerate: `.venv/bin/python benchmarks/annotate_c_choice.py`. "
             + " ".join(__doc__.split("\n\n")[1].split()), "",
             "Single seed; the query columns are for information and choose nothing.", ""]
    for name, r in res.items():
        lines += [f"## {name} ({r['reference cells']:,} reference / {r['query cells']:,} query cells, "
                  f"{r['classes']} types)", "",
                  "| C chosen by | nested CV macro-F1 (reference) | nested CV accuracy | C in the 5 outer folds: probe; "
                  "genes | C on the whole reference: probe / genes | query macro-F1 | query accuracy |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            co, cw = row["C chosen in the outer folds"], row["C on the whole reference"]
            fmt = lambda v: ", ".join(f"{x:.3g}" for x in v)  # noqa: E731
            lines.append(f"| {row['criterion']} | {row['nested CV macro-F1 (reference)']:.3f} | "
                         f"{row['nested CV accuracy (reference)']:.3f} | {fmt(co['probe'])}; {fmt(co['genes'])} | "
                         f"{cw['probe']:.3g} / {cw['genes']:.3g} | {row['query macro-F1']:.3f} | "
                         f"{row['query accuracy']:.3f} |")
        lines.append("")
    mean = {c: np.mean([r["rows"][i]["nested CV macro-F1 (reference)"] for r in res.values()])
            for i, c in enumerate(CRITERIA)}
    return lines + ["Mean nested CV macro-F1 over both references: "
                    + ", ".join(f"{c}: {m:.3f}" for c, m in mean.items()) + f". Higher: {max(mean, key=mean.get)}.",
                    "", f"Wall time {minutes:.1f} min."]


if __name__ == "__main__":
    from annotate_mix import cli

    raise SystemExit(cli(__doc__, run, render, "annotate_c_choice"))
