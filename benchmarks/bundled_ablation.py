"""Ablation of the bundled model's recipe (mask ratio, width, panel size), chosen on the readout's selection sets.

    .venv/bin/python benchmarks/bundled_ablation.py [--candidates mask_ratio=0.2,d_model=192] [--build]
                                                    [--run-root out] [--data-dir ../shared/data]
                                                    [--out benchmarks/results]

The shipped recipe (``scmamba2.bench.bundled``) hides 40 % of each cell's token values (``mask_ratio=0.4``; the
profile decoder reconstructs the whole panel from the embedding either way) in a model of width 128 that
decodes a 2,000-gene panel, 1,800 steps. Each candidate changes one setting of ``bundled.TRAIN``,
``bundled.MODEL`` or ``bundled.TOKENIZER``, or several joined by ``+`` (e.g. ``depth_thinning=0.5+seed=1``: a
second seed of a candidate) (``bundled.build(changes=...)``): same pool, seed 0, one thread unless ``--threads``. ``--build`` pretrains a candidate into ``<run-root>/bundled_run_<tag>``
(tag e.g. ``mask0.2``, ``d_model192``; skipped when that run holds a finished model; ~50 min at width 128 on this CPU); then every
candidate is exported (fp16, as shipped) and scored by the readout benchmark (:mod:`scmamba2.bench.readout`:
selection sets Kang training donors and ifnb1k, which the model was pretrained on without labels, decide; pbmc3k
and Kang's held-out donors only report), written to ``<out>/readout_<tag>.md`` (a candidate scored before is
not rescored without ``--rescore``). The summary ``<out>/bundled_ablation.md`` puts embed's default readout of
every candidate next to the shipped default model alone (``<out>/readout_shipped_seed0.json``: candidates are
single builds, while embed's default puts two builds side by side).
"""

import argparse
import json
import logging
import os
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULT = "scmamba2: whole cell, profile metric (embed's default)"
CANDIDATE_CMD = ".venv/bin/python benchmarks/bundled_ablation.py --build"
SETS = ("Kang training donors (3,000 cells)", "ifnb1k", "pbmc3k (QC cells)", "Kang held-out donors")


SHORT = {"mask_ratio": "mask"}  # run and result names: bundled_run_mask0.2, readout_mask0.2.md


def _candidates(spec: str, bundled) -> list[dict]:
    """``"mask_ratio=0.2,d_model=192+seed=1"`` -> ``[{"mask_ratio": 0.2}, {"d_model": 192, "seed": 1}]``: one
    candidate per comma, ``+`` joining the settings one candidate changes, each typed like the shipped value."""
    shipped = {**bundled.MODEL, **bundled.TOKENIZER, **bundled.TRAIN, "seed": 0}  # seed: of the build only
    out = []
    for item in filter(None, spec.split(",")):
        changes = {}
        for part in item.split("+"):
            key, _, value = part.partition("=")
            if key not in shipped:
                raise SystemExit(f"unknown candidate key {key!r}: use one of {sorted(shipped)}")
            changes[key] = type(shipped[key])(value)
        out.append(changes)
    return out


QUICKSTART = "pbmc68k_reduced (quickstart, zero-shot)"


def _quickstart(model_dir, seed: int) -> tuple[float, float]:
    """kNN accuracy / macro-F1 of the quickstart's zero-shot embedding (pbmc68k_reduced) with this model, or
    (``model_dir`` None) of its PCA-50 baseline."""
    import scanpy as sc

    from scmamba2.eval.knn import knn_label_transfer_scores
    from scmamba2.model import ScMamba2
    from scmamba2.quickstart import LABEL_KEY, pca_baseline
    from scmamba2.tasks.embed import embed

    adata = sc.datasets.pbmc68k_reduced()
    if model_dir is None:
        x = pca_baseline(adata, seed)
    else:
        x = embed(adata, ScMamba2.from_pretrained(model_dir).eval(), use_raw=True, progress=False,
                  copy=True).obsm["X_scmamba2"]
    s = knn_label_transfer_scores(x, adata.obs[LABEL_KEY], seed)
    return s["kNN accuracy"], s["kNN macro-F1"]


HVG_FILE = "pbmc3k as an HVG-only file (2,000 log-normalised HVGs)"
_HVG_CACHE = {}


def _hvg_file(model_dir, data_dir: Path, seed: int) -> tuple[float, float]:
    """kNN accuracy / macro-F1 of the zero-shot embedding of pbmc3k's QC cells stored as many shared files store
    cells: ``log1p`` of counts normalised to 10,000 over all genes, then only the 2,000 HVGs (scanpy ``seurat``);
    or (``model_dir`` None) of PCA-50 of the same scaled matrix."""
    import scanpy as sc

    from scmamba2._threads import keep_torch_threads
    from scmamba2.bench.representation import pbmc3k_qc_cells
    from scmamba2.eval.baselines import pca_embedding
    from scmamba2.eval.knn import knn_label_transfer_scores
    from scmamba2.model import ScMamba2
    from scmamba2.tasks.embed import embed

    if "hv" not in _HVG_CACHE:
        a = pbmc3k_qc_cells(data_dir)
        with keep_torch_threads():  # scanpy's numba kernels reset torch's thread count (to every core) otherwise
            sc.pp.normalize_total(a, target_sum=1e4)
            sc.pp.log1p(a)
            sc.pp.highly_variable_genes(a, n_top_genes=2000, flavor="seurat")
        _HVG_CACHE["hv"] = a[:, a.var["highly_variable"].to_numpy()].copy()
    hv = _HVG_CACHE["hv"]
    if model_dir is None:
        x = pca_embedding(hv, n_comps=50, normalize=False, seed=seed)
    else:
        x = embed(hv, ScMamba2.from_pretrained(model_dir).eval(), progress=False, copy=True).obsm["X_scmamba2"]
    s = knn_label_transfer_scores(x, hv.obs["cell_type"].astype(str).to_numpy(), seed)
    return s["kNN accuracy"], s["kNN macro-F1"]


def _extra(model_dir, args) -> dict:
    """The two columns scored outside the readout benchmark: the quickstart's data and an HVG-only file."""
    return {QUICKSTART: _quickstart(model_dir, args.seed), HVG_FILE: _hvg_file(model_dir, args.data_dir, args.seed)}


def _default_rows(rows) -> dict:
    """``{set: (accuracy, macro-F1)}`` of embed's default readout and ``{set: ...}`` of PCA-50."""
    ours = {r["set"]: (r["kNN accuracy"], r["kNN macro-F1"]) for r in rows if r["embedding"] == DEFAULT}
    pca = {r["set"]: (r["kNN accuracy"], r["kNN macro-F1"]) for r in rows if r["embedding"].startswith("baseline")}
    return ours, pca


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--candidates", default="mask_ratio=0.2,mask_ratio=0.6,mask_ratio=0.75,d_model=192,"
                                            "profile_genes=3000,max_steps=900",
                    help="comma-separated candidates, each KEY=VALUE (one key of bundled.TRAIN, MODEL or TOKENIZER, "
                         "or seed: the build's) or several joined by '+', e.g. depth_thinning=0.5+seed=1")
    ap.add_argument("--build", action="store_true", help="pretrain the candidates that have no finished run yet")
    ap.add_argument("--default-only", action="store_true",
                    help="score only embed's default readout (a third of the time), not the readout's other variants")
    ap.add_argument("--rescore", action="store_true", help="rerun the readout of candidates scored before")
    ap.add_argument("--run-root", type=Path, default=Path(_HERE).parent / "out")
    ap.add_argument("--data-dir", type=Path, default=Path(_HERE).parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(_HERE) / "results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results differ in the last bits)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    import scmamba2.bench.bundled as bundled
    from scmamba2.bench import readout
    from scmamba2.pretrained import model_path

    if args.default_only:
        readout.VARIANTS = {k: v for k, v in readout.VARIANTS.items() if k == DEFAULT.removeprefix("scmamba2: ")}

    shipped = json.loads((args.out / "readout_shipped_seed0.json").read_text())  # the default model alone
    ours, pca = _default_rows(next(iter(shipped["tables"].values())))
    ours.update(_extra(model_path(), args))
    pca.update(_extra(None, args))
    candidates = _candidates(args.candidates, bundled)
    recipe = {**bundled.MODEL, **bundled.TOKENIZER, **bundled.TRAIN, "seed": 0}
    summary = [("shipped: " + ", ".join(f"{k} {recipe[k]}" for k in dict.fromkeys(k for c in candidates for k in c)),
                "see MODEL_CARD.md", ours)]
    for changes in candidates:
        tag = "_".join(f"{SHORT.get(key, key)}{value}" for key, value in changes.items())
        run = args.run_root / f"bundled_run_{tag}"
        if args.build and not (run / "build_info.json").is_file():
            bundled.build(args.data_dir, run, seed=args.seed, changes=changes)
        info = json.loads((run / "build_info.json").read_text())
        loss = (f"{info['val_end']['val/profile']:.3f} (before training {info['val_start']['val/profile']:.3f}, "
                f"gene means {info['val_end']['val/profile_gene_mean']:.3f})")
        label = ", ".join(f"{key} {value}" for key, value in changes.items())
        instead = ", ".join(f"{key} {value} instead of {recipe[key]}" for key, value in changes.items())
        scored = args.out / f"readout_{tag}.json"
        if scored.is_file() and not args.rescore:  # scored before: only the summary is rewritten
            rows = next(iter(json.loads(scored.read_text())["tables"].values()))
            scores = _default_rows(rows)[0]
            scores.update(_extra(bundled.export(run, args.run_root / f"candidate_{tag}"), args))
            summary.append((label, loss, scores))
            continue
        cand = bundled.export(run, args.run_root / f"candidate_{tag}")
        res = readout.run(args.data_dir, args.out, seed=args.seed, model_dir=cand)
        res.notes.insert(0, f"A candidate of the bundled recipe, **not shipped**: {instead}, everything else as "
                            f"shipped ({info['steps']} steps, seed {info['seed']}, "
                            f"{info['sittings'][-1]['wall_minutes']} min on {info['sittings'][-1]['threads']} "
                            f"thread(s)). Held-out profile loss {loss}. "
                            "Made by `benchmarks/bundled_ablation.py --build`; the shipped model's figures are in "
                            "readout.md, the comparison in bundled_ablation.md."
                            + (" Scored with `--default-only`: embed's default readout alone." if args.default_only else ""))
        res.meta["model"] = f"candidate: {label}"
        res.meta["command"] = CANDIDATE_CMD  # a candidate's readout is made by this script, not readout.py
        res.write(args.out, stem=f"readout_{tag}")
        scores = _default_rows(next(iter(res.tables.values())).to_dict("records"))[0]
        scores.update(_extra(cand, args))
        summary.append((label, loss, scores))

    columns = SETS + (QUICKSTART, HVG_FILE)
    head = "| candidate | held-out profile loss | " + " | ".join(f"{s}: acc / F1" for s in columns) + " |"
    lines = ["# The bundled recipe: an ablation", "",
             f"Regenerate: `{CANDIDATE_CMD}`. "
             + " ".join(__doc__.split("\n\n")[2].split()), "",
             "5-fold kNN (k=15) label transfer of `cell_type`, embed's default readout (every expressed gene, "
             "profile metric). The first two sets are the selection sets. Two more columns: the quickstart's "
             "zero-shot embedding (`bulk_labels` of scanpy's pbmc68k_reduced; PCA-50 of its 765 genes as in the "
             "quickstart), and pbmc3k's QC cells stored as an HVG-only file (log1p of counts per 10,000, then only "
             "its 2,000 `seurat` HVGs, as many shared files hold cells; PCA-50 of the same scaled matrix).", "", head, "|" + "---|" * (2 + len(columns))]
    for label, loss, scores in summary + [("baseline: PCA-50 of each set's cells", "", pca)]:
        cells = " | ".join(f"{scores[s][0]:.3f} / {scores[s][1]:.3f}" if s in scores else "-" for s in columns)
        lines.append(f"| {label} | {loss} | {cells} |")
    best = max(summary, key=lambda row: sum(row[2][s][1] for s in SETS[:2]))
    lines += ["", f"Highest mean kNN macro-F1 over the two selection sets: {best[0]} "
              f"({sum(best[2][s][1] for s in SETS[:2]) / 2:.3f}). Single seed: differences of ~0.01 are within noise.",
              "", "The held-out profile loss is over each candidate's own panel: a candidate with another "
              "`profile_genes` is scored on a different set of genes, so its loss does not compare with the others'."]
    (args.out / "bundled_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
