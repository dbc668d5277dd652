"""``scmamba2 perturb``: perturbation response (train, predict, reverse)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ._common import (GeneColOpt, LayerOpt, OverwriteOpt, RawOpt, _at_least, _check_models, _staged, _user_errors,
                      app, out)


# --- perturb (issue: perturbation) ---

perturb_app = typer.Typer(no_args_is_help=True, help="Perturbation response: train, predict, reverse (rank perturbations).")
app.add_typer(perturb_app, name="perturb")


def _names(text: str, option: str) -> list[str]:
    """Comma-separated names; an empty name or an empty part of a combination (``A,,B``, ``A+``) is refused."""
    names = [t.strip() for t in text.split(",")]
    bad = [t for t in names if not t or any(not part.strip() for part in t.split("+"))]
    if bad:
        raise InputError(f"{option} {text!r} has an empty name (between two commas, or beside a '+'): give names "
                         "separated by commas, combinations joined by '+', e.g. A,B+C.")
    return names


@perturb_app.command("train")
def perturb_train(
    data: Path = typer.Argument(..., help="Control and perturbed cells (h5ad, ...)."),
    perturbation_key: str = typer.Option(..., "--perturbation-key", help="obs column: ctrl, GENE, GENE1+GENE2."),
    control: str = typer.Option("ctrl", "--control", help="Label of the control cells in that column."),
    out_dir: Path = typer.Option(..., "--out", help="Model directory to write."),
    holdout: Optional[str] = typer.Option(None, "--holdout", help="Perturbations to leave out, e.g. A,B+C."),
    kind: str = typer.Option("genetic", "--kind", help="genetic (labels name genes) or condition (drug, cytokine)."),
    match_key: Optional[str] = typer.Option(None, "--match-key", help="Pair perturbed cells with controls of the same obs group."),
    model: Optional[Path] = typer.Option(None, "--model", help="Pretrained model to start from."),
    max_steps: int = typer.Option(600, "--max-steps"),
    batch_size: int = typer.Option(32, "--batch-size"),
    n_top_genes: int = typer.Option(2000, "--n-top-genes", help="Gene panel = this many highly variable genes, "
                                    "as the other tasks (targets outside it keep their token); 0 = every gene."),
    gene_knowledge: str = typer.Option("pca", "--gene-knowledge", help="Target knowledge of the correction: pca (PCA gene embedding of the training effects) or none (the model's own gene embeddings)."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = OverwriteOpt,
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
) -> None:
    """Train a perturbation-response model: the baseline (training effects) + a learned correction, kept only
    when it beats the baseline on validation perturbations."""
    from ..data.files import check_model_dir
    from ..data.io import read
    from ..tasks.perturb import KNOWLEDGE, train_perturbation
    from ..train.config import TrainConfig

    with _user_errors():
        _check_models(model)
        check_model_dir(out_dir, overwrite=overwrite, sources=[data, model])
        _at_least(1, max_steps=max_steps, batch_size=batch_size)
        _at_least(0, n_top_genes=n_top_genes)
        if gene_knowledge not in KNOWLEDGE:
            raise InputError(f"--gene-knowledge {gene_knowledge!r} is not known: use pca (the PCA gene embedding of "
                             "the training effects) or none (the model's own gene embeddings only).")
        held = _names(holdout, "--holdout") if holdout else None
        tcfg = TrainConfig(max_steps=max_steps, batch_size=batch_size, warmup_steps=min(50, max_steps // 5), seed=seed)
        adata = read(data)
        with _staged(out_dir) as stage:
            pm = train_perturbation(adata, perturbation_key=perturbation_key, control=control, kind=kind,
                                    holdout=held, match_key=match_key, model=model, train_config=tcfg,
                                    n_top_genes=n_top_genes or None, layer=layer, use_raw=use_raw,
                                    gene_column=gene_column, gene_knowledge=gene_knowledge, out_dir=stage)
        rec = pm.meta.correction
        verdict = "kept" if rec.get("accepted") else f"dropped ({rec.get('reason', 'no validation gain')})"
        out.print(f"{len(pm.meta.train_perturbations)} perturbations trained, "
                  f"{len(pm.meta.perturbations) - len(pm.meta.train_perturbations)} held out; learned correction "
                  f"{verdict}; model -> {out_dir}")


@perturb_app.command("predict")
def perturb_predict(
    model: Path = typer.Option(..., "--model", help="Directory written by `perturb train`."),
    perturbations: str = typer.Option(..., "--perturbations", help="Comma-separated, e.g. A,B+C."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5ad: one row per perturbation."),
    controls: Optional[Path] = typer.Option(None, "--controls", help="Control cells to predict from (default: the stored ones)."),
    n_controls: int = typer.Option(256, "--n-controls"),
    baseline_only: bool = typer.Option(False, "--baseline-only", help="Leave out the learned correction."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Predict the mean log1p-normalised profile of each perturbation (obs['perturbation'], obs['source'],
    genes as var)."""
    from ..data.files import check_output, write_h5ad
    from ..data.io import read
    from ..tasks.perturb import predict_perturbation

    with _user_errors():
        _check_models(model)
        check_output(out_path, [model, controls], overwrite=overwrite, suffixes=(".h5ad",))
        _at_least(1, n_controls=n_controls)
        names = _names(perturbations, "--perturbations")
        pred = predict_perturbation(model, names, controls=read(controls) if controls else None,
                                    n_controls=n_controls, correction=not baseline_only)
        write_h5ad(pred, out_path)
        out.print(f"{pred.n_obs} perturbations x {pred.n_vars} genes -> {out_path}")


@perturb_app.command("reverse")
def perturb_reverse(
    model: Path = typer.Option(..., "--model", help="Directory written by `perturb train`."),
    query: Path = typer.Option(..., "--query", help="Observed or desired cells (h5ad, ...)."),
    out_path: Path = typer.Option(..., "--out", help="Output CSV: query, rank, perturbation, score, source (seen / baseline / baseline+correction)."),
    groupby: Optional[str] = typer.Option(None, "--groupby", help="Score group means of this obs column, not single cells."),
    top_k: int = typer.Option(8, "--top-k"),
    candidates: Optional[str] = typer.Option(None, "--candidates", help="Comma-separated (default: every known perturbation)."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Rank the perturbations whose predicted profile best matches each query (cell or group mean)."""
    from ..data.files import check_output, write_csv
    from ..data.io import read
    from ..tasks.perturb import reverse_perturbation

    with _user_errors():
        _check_models(model)
        check_output(out_path, [model, query], overwrite=overwrite, suffixes=(".csv",))
        _at_least(1, top_k=top_k)
        names = _names(candidates, "--candidates") if candidates else None
        ranks = reverse_perturbation(read(query), model, groupby=groupby, top_k=top_k, layer=layer, use_raw=use_raw,
                                     gene_column=gene_column, candidates=names)
        write_csv(ranks, out_path, index=False)
        out.print(f"{ranks['query'].nunique()} queries ranked -> {out_path}")
