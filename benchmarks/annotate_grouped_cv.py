"""Benchmark (ablation): can the Kang reference's own donors predict what the query's unseen donors prefer?

On the Kang query (three donors the models never saw) the gene-level classifier alone beats its average with the
probe on both bundled builds (annotate_pair.md), while the reference's stratified cross-validation ranks them
level. If that were a donor shift, cross-validation with whole reference donors held out (GroupKFold over its
five donors) should see it too, and could choose the gene weight. Features as in ``annotate_pair.py`` (both builds
side by side, the reference's 2,000 HVGs); each classifier's C by the folds of the scheme (one fold seed); out-of-fold
probabilities averaged at each gene weight (0: the probe alone, 1: the genes alone). The query columns use the C's
of stratified CV (annotation's own) and are for information.

    .venv/bin/python benchmarks/annotate_grouped_cv.py [--data-dir ../shared/data] [--out benchmarks/results]

Writes ``<out>/annotate_grouped_cv.md`` and ``.json`` (~3 min on one thread).
"""

from pathlib import Path

import numpy as np

import annotate_pair as pair
from annotate_mix import _genes, _probe, _proba, cli

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
NAME = "kang_muscat_8donors"


def run(name: str, data_dir: Path) -> dict:
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    from scmamba2.bench.annotate import _settings, _split
    from scmamba2.eval.annotation_baselines import L1_CS
    from scmamba2.tasks._annotate_probe import PROBE_CS

    classes, y, qy, emb, X, Xq = pair.features(name, data_dir)
    ref, _, _ = _split(data_dir / f"{name}.h5ad", name, 0, _settings(False))  # the same cells in the same order
    donors = ref.obs["donor"].astype(str).to_numpy()
    k = len(classes)
    AB, ABq = pair._std(np.hstack([emb["A", "ref"], emb["B", "ref"]]), np.hstack([emb["A", "query"], emb["B", "query"]]))

    def f1(yy, P):
        return float(f1_score(yy, P.argmax(1), average="macro"))

    schemes = {"stratified 5-fold (annotation's)": list(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y)),
               "whole donors held out (GroupKFold, 5 donors)": list(GroupKFold(5).split(X, y, donors))}
    out: dict = {"donors": dict(zip(*map(lambda a: a.tolist(), np.unique(donors, return_counts=True)))), "schemes": {}}
    for scheme, folds in schemes.items():
        def oof(make, M, C):
            P = np.zeros((len(y), k))
            for tr, te in folds:
                P[te] = _proba(make(C).fit(M[tr], y[tr]), M[te], k)
            return P

        best = {kind: max(((f1(y, P), C, P) for C in cs for P in [oof(make, M, C)]), key=lambda t: t[0])
                for kind, make, M, cs in (("probe", _probe, AB, PROBE_CS), ("genes", _genes, X, L1_CS))}
        out["schemes"][scheme] = {"C": {kk: v[1] for kk, v in best.items()},
                                  "macro-F1": [f1(y, (1 - w) * best["probe"][2] + w * best["genes"][2]) for w in WEIGHTS]}
    C = out["schemes"]["stratified 5-fold (annotation's)"]["C"]
    q = {kind: _proba(make(C[kind]).fit(M, y), Mq, k) for kind, make, M, Mq in (("probe", _probe, AB, ABq),
                                                                               ("genes", _genes, X, Xq))}
    out["query macro-F1"] = [f1(qy, (1 - w) * q["probe"] + w * q["genes"]) for w in WEIGHTS]
    return out


def render(results: dict, minutes: float) -> list[str]:
    res = results[NAME]
    head = "| macro-F1 | " + " | ".join(f"gene weight {w}" for w in WEIGHTS) + " | C (probe, genes) |"
    lines = ["# Annotation on Kang: stratified against donor-held-out cross-validation of the reference", "",
             "Regenerate: `.venv/bin/python benchmarks/annotate_grouped_cv.py`. "
             + " ".join(__doc__.split("\n\n")[1].split()), "",
             "Reference donors (cells): " + ", ".join(f"{d} ({n})" for d, n in res["donors"].items()) + ".", "",
             head, "|---" * (len(WEIGHTS) + 2) + "|"]
    for scheme, r in res["schemes"].items():
        lines.append(f"| reference, {scheme} | " + " | ".join(f"{v:.3f}" for v in r["macro-F1"])
                     + f" | {r['C']['probe']:.3g}, {r['C']['genes']:.3g} |")
    lines.append("| query (3 unseen donors; information only) | "
                 + " | ".join(f"{v:.3f}" for v in res["query macro-F1"]) + " | stratified CV's |")
    return lines + ["", f"Wall time {minutes:.1f} min, one thread."]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, run, render, "annotate_grouped_cv", datasets=(NAME,)))
