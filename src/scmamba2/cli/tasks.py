"""The task commands: annotate, integrate."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from ._common import PLOT_SUFFIXES, GeneColOpt, LayerOpt, OverwriteOpt, RawOpt, _STATE, _at_least, _check_models, _staged, _user_errors, app, out


# --- annotate (issue: cell-type annotation) ---

@app.command()
def annotate(
    reference: Optional[Path] = typer.Option(None, "--reference", help="Labelled reference (h5ad, ...). Not needed with --annotator."),
    label_key: Optional[str] = typer.Option(None, "--label-key", help="obs column of the reference's cell types (also scored in the query when it has it)."),
    query: Path = typer.Option(..., "--query", help="Cells to label."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5ad with obs['scmamba2_label'], obs['scmamba2_confidence'], obsm['scmamba2_probs']."),
    models: List[Path] = typer.Option([], "--model", help="Pretrained checkpoint or bundled model name to start from; the probe reads several side by side when it is repeated. Default (or 'bundled'): the probe reads both bundled builds side by side, fine-tuning starts from scmamba2-pbmc-small."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Fine-tune a small new model on the reference's --n-top-genes HVGs instead of starting from a pretrained one."),
    method: str = typer.Option("auto", "--method", help="probe: logistic regression on the frozen pretrained embedding; finetune: train the model with a classifier head; auto: probe from a pretrained model, finetune --from-scratch."),
    annotator: Optional[Path] = typer.Option(None, "--annotator", help="Label with an annotator saved earlier (--save-model) instead of training."),
    save_model: Optional[Path] = typer.Option(None, "--save-model", help="Save the fine-tuned annotator in this directory."),
    epochs: float = typer.Option(10.0, "--epochs", help="Fine-tuning: passes over the training cells (early stopping may end sooner)."),
    seed: int = typer.Option(0, "--seed"),
    threshold: Optional[float] = typer.Option(None, "--unknown-threshold", help="Label cells with a lower confidence 'unknown'."),
    gep_weight: float = typer.Option(0.0, "--gep-weight", help="Weight of the masked-expression regulariser (0: off)."),
    pretrain_steps: int = typer.Option(0, "--pretrain-steps", help="Self-supervised steps on reference + query expression first (no labels)."),
    gene_weight: float = typer.Option(0.5, "--gene-weight", help="Probe: weight of an L1 logistic regression on the reference's log-normalised HVGs, averaged with the probe's probabilities (0: the probe alone)."),
    n_top_genes: int = typer.Option(2000, "--n-top-genes", help="Genes of a new model (--from-scratch; highly variable in the reference)."),
    overwrite: bool = OverwriteOpt,
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
    query_layer: Optional[str] = typer.Option(None, "--query-layer", help="The query's matrix, where it differs from the reference's: a layer name, or X."),
    query_use_raw: Optional[bool] = typer.Option(None, "--query-use-raw/--query-no-raw", help="Read the query's .raw (--query-no-raw: its X), where it differs from the reference."),
    query_gene_column: Optional[str] = typer.Option(None, "--query-gene-column", help="The query's var column of gene names, where it differs from the reference's; 'index' for var_names."),
) -> None:
    """Transfer cell-type labels from a labelled reference to a query (by default a linear probe on the cell
    embedding of both bundled pretrained builds side by side, averaged with a gene-level classifier)."""
    from ..data.files import check_model_dir, check_output, read_json, write_h5ad
    from ..data.io import read
    from ..tasks.annotate import AnnotationConfig, _query_kwargs, default_train_config, fit_annotator
    from ..tasks.annotate_predict import META_FILE, predict

    with _user_errors():
        model = None if not models else models[0] if len(models) == 1 else list(models)
        inputs = [reference, query, *models, annotator]
        _check_models(*models)
        check_output(out_path, inputs, overwrite=overwrite, suffixes=(".h5ad",))
        if save_model is not None:
            check_model_dir(save_model, overwrite=overwrite, sources=inputs + [out_path], option="--save-model")
        if annotator is None and (reference is None or label_key is None):
            raise InputError("give --reference and --label-key to train an annotator, or --annotator DIR to use one "
                             "saved earlier")
        if annotator is not None and save_model is not None:
            raise InputError("--save-model saves an annotator trained by this command; with --annotator nothing is "
                             "trained (it is saved already): leave out --save-model")
        if epochs <= 0:
            raise InputError(f"--epochs {epochs:g} must be above 0 (e.g. 10; early stopping may end sooner).")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise InputError(f"--unknown-threshold {threshold:g} is a confidence and must lie in [0, 1] (e.g. 0.5).")
        _at_least(1, n_top_genes=n_top_genes)
        _at_least(0, pretrain_steps=pretrain_steps)
        if not 0.0 <= gene_weight <= 1.0:
            raise InputError(f"--gene-weight {gene_weight:g} must lie in [0, 1] (0.5: an even average; 0: the probe alone).")
        if gene_weight != 0.5 and (annotator is not None or method == "finetune" or from_scratch):
            raise InputError("--gene-weight sets how a new probe annotator is trained; with --annotator, "
                             "--method finetune or --from-scratch there is no probe to weigh: leave it out")
        if method not in ("auto", "probe", "finetune"):
            raise InputError(f"--method {method!r} must be 'auto', 'probe' or 'finetune'.")
        if annotator is not None and (from_scratch or model is not None):
            raise InputError("--annotator labels with an annotator saved earlier; --model and --from-scratch choose "
                             "how a new one is trained: leave them out")
        q = read(query, standardise=False)
        if label_key is None and annotator is not None:  # a saved annotator knows its label column: scored too
            meta = Path(annotator) / META_FILE
            label_key = read_json(meta).get("label_key") if meta.is_file() else None
        if query_layer is not None and query_use_raw:
            raise InputError("--query-layer and --query-use-raw both choose the query's matrix: give one of them")
        qopts = {}  # only what was given: the rest is the reference's
        if query_layer is not None:
            qopts["layer"] = None if query_layer == "X" else query_layer
        if query_use_raw is not None:
            qopts["use_raw"] = query_use_raw
        if query_gene_column is not None:
            qopts["gene_column"] = None if query_gene_column == "index" else query_gene_column
        qkw = _query_kwargs(layer, use_raw, gene_column, qopts)
        if label_key is not None and label_key in q.obs:  # the query's own labels: scored, with a confusion matrix
            check_output(_confusion_path(out_path), inputs + [out_path], option="the confusion matrix (beside --out)",
                         overwrite=overwrite)
        with _staged(save_model) as stage:
            if annotator is None:
                cfg = AnnotationConfig(method=method, gep_weight=gep_weight, pretrain_steps=pretrain_steps,
                                       gene_weight=gene_weight)
                ann = fit_annotator(read(reference), label_key, model=model, from_scratch=from_scratch,
                                    unlabeled=q if pretrain_steps else None,
                                    query=q, query_options=qopts, config=cfg, train_config=default_train_config(seed=seed), epochs=epochs,
                                    n_top_genes=n_top_genes, layer=layer, use_raw=use_raw, gene_column=gene_column,
                                    out_dir=stage)
            else:
                ann = annotator
            predict(q, ann, threshold=threshold, **qkw, progress=_STATE["verbose"])
            write_h5ad(q, out_path)
        info = q.uns["scmamba2_annotation"]
        out.print(f"{q.n_obs} cells labelled ({info['n_unknown']} unknown) -> {out_path}")
        if label_key is not None and label_key in q.obs:
            _print_scores(q, label_key, out_path)


def _confusion_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + "_confusion.png")


def _print_scores(q, label_key: str, out_path: Path) -> None:
    """Accuracy, macro-F1 and per-class F1 of the query's own labels; a confusion-matrix PNG beside the output."""
    from rich.markup import escape
    from rich.table import Table

    from ..eval.classification import classification_metrics, confusion_png
    from ._common import err

    keep = q.obs[label_key].notna().to_numpy()
    if not keep.any():
        out.print(f"no query cell has a label in {label_key!r}: nothing to score", highlight=False, markup=False)
        return
    truth, pred = q.obs[label_key][keep].astype(str), q.obs["scmamba2_label"][keep].astype(str)
    classes = [str(c) for c in q.uns["scmamba2_annotation"]["classes"]]
    known = truth.isin(classes).to_numpy()
    if not known.any():  # e.g. 'B' vs 'B cells': the scores would be 0 whatever the labels' quality
        err.print("[bold yellow]Warning:[/bold yellow] " + escape(
                  f"no label of the query's {label_key!r} is a class of the reference (query: {_some(truth)}; "
                  f"reference: {_some(classes)}): the two name cell types differently, so the query is not scored "
                  "(no accuracy, no confusion matrix). Map the query's labels onto the reference's names to score "
                  "it."), soft_wrap=True, highlight=False)
        return
    if not known.all():
        out.print(f"{int((~known).sum())} of the {len(truth)} labelled query cells have a label the reference does "
                  f"not have ({_some(truth[~known])}): they cannot be labelled right and count as errors.",
                  highlight=False, markup=False)
    m = classification_metrics(truth, pred)
    out.print(f"query {label_key!r}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} "
              f"({m['n_cells']} cells with a label)")
    table = Table("class", "F1", "cells")
    for c, f in m["per_class_f1"].items():
        table.add_row(c, f"{f:.3f}", str(m["support"][c]))
    out.print(table)
    png = confusion_png(truth, pred, _confusion_path(out_path),
                        title=f"{out_path.stem}: {label_key} vs scmamba2_label")
    out.print(f"confusion matrix -> {png}")


def _some(labels, n: int = 5) -> str:
    """A few distinct labels, quoted, for a message."""
    names = sorted(set(map(str, labels)))
    return ", ".join(map(repr, names[:n])) + (f", ... ({len(names)} in all)" if len(names) > n else "")


# --- integrate (issue: batch integration) ---

@app.command()
def integrate(
    data: Path = typer.Argument(..., help="Data file with the cells of every batch."),
    batch_key: str = typer.Option(..., "--batch-key", help="obs column of each cell's batch."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5ad with obsm['X_scmamba2']."),
    label_key: Optional[str] = typer.Option(None, "--label-key", help="obs column of cell types (evaluation and UMAP only)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Pretrained checkpoint to embed with or fine-tune (default: the bundled model)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="finetune: train a small new model on --n-top-genes HVGs instead of fine-tuning the pretrained one."),
    umap: Optional[Path] = typer.Option(None, "--umap", help="Also write UMAP panels coloured by batch (and label)."),
    method: str = typer.Option("harmony", "--method", help="harmony (default): the pretrained model's embedding corrected by Harmony, nothing trained; finetune: train a model with the losses below."),
    save_model: Optional[Path] = typer.Option(None, "--save-model", help="finetune: save the fine-tuned model in this directory."),
    steps: Optional[int] = typer.Option(None, "--steps", help="finetune: training steps (default: 1000)."),
    seed: int = typer.Option(0, "--seed"),
    ecs: Optional[bool] = typer.Option(None, "--ecs/--no-ecs", help="finetune: elastic cell similarity loss (default: off)."),
    dab: Optional[bool] = typer.Option(None, "--dab/--no-dab", help="finetune: adversarial batch discriminator (gradient reversal) (default: on)."),
    dsbn: Optional[bool] = typer.Option(None, "--dsbn/--no-dsbn", help="finetune: domain-specific batch norm (default: off)."),
    batch_decoder: Optional[bool] = typer.Option(None, "--batch-decoder/--no-batch-decoder", help="finetune: give the expression heads a learned batch vector (the embedding need not carry the batch) (default: on)."),
    n_top_genes: Optional[int] = typer.Option(None, "--n-top-genes", help="finetune --from-scratch: genes of the new model (highly variable) (default: 2000)."),
    overwrite: bool = OverwriteOpt,
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
) -> None:
    """Integrate batches: correct the pretrained (by default the bundled) model's embedding with Harmony, or
    (--method finetune) fine-tune it (--from-scratch: a small new model) with its own objective, batch-conditioned
    decoders and DAB (+ ECS, DSBN); embed into obsm."""
    from ..data.files import check_model_dir, check_output, write_h5ad
    from ..data.io import read
    from ..tasks.integrate import IntegrationConfig
    from ..tasks.integrate import integrate as _integrate
    from ..train.config import TrainConfig

    with _user_errors():
        if method not in ("finetune", "harmony"):
            raise InputError(f"--method {method!r}: choose harmony (the default) or finetune.")
        if method == "harmony":
            training = {"--save-model": save_model, "--steps": steps, "--ecs/--no-ecs": ecs, "--dab/--no-dab": dab,
                        "--dsbn/--no-dsbn": dsbn, "--batch-decoder/--no-batch-decoder": batch_decoder,
                        "--n-top-genes": n_top_genes, "--from-scratch": from_scratch or None}
            given = [k for k, v in training.items() if v is not None]
            if given:
                raise InputError(f"{', '.join(given)} only apply to training, and the default --method harmony "
                                 "trains nothing (it corrects the pretrained embedding): add --method finetune, or "
                                 f"leave out {', '.join(given)}.")
        if n_top_genes is not None and not from_scratch:
            raise InputError("--n-top-genes chooses the genes of a new model, but --method finetune fine-tunes the "
                             "pretrained model on its own genes: add --from-scratch, or leave out --n-top-genes.")
        steps = 1000 if steps is None else steps
        n_top_genes = 2000 if n_top_genes is None else n_top_genes
        _check_models(model)
        check_output(out_path, [data, model], overwrite=overwrite, suffixes=(".h5ad",))
        if umap is not None:
            check_output(umap, [data, model, out_path], option="--umap", overwrite=overwrite, suffixes=PLOT_SUFFIXES)
        if save_model is not None:
            check_model_dir(save_model, overwrite=overwrite, sources=[data, model, out_path], option="--save-model")
        _at_least(1, steps=steps, n_top_genes=n_top_genes)
        adata = read(data, standardise=False)
        if method == "harmony":
            from ..tasks.integrate_harmony import integrate_harmony

            integrate_harmony(adata, batch_key, model=model, label_key=label_key, layer=layer, use_raw=use_raw,
                              gene_column=gene_column, seed=seed)
            write_h5ad(adata, out_path)
            _integrate_summary(adata, out_path, umap, batch_key, label_key, seed)
            return
        losses = {"ecs": ecs, "dab": dab, "dsbn": dsbn, "batch_decoder": batch_decoder}
        cfg = IntegrationConfig(**{k: v for k, v in losses.items() if v is not None})  # unset: the config's default
        tcfg = TrainConfig(max_steps=steps, batch_size=32, lr=1e-3, warmup_steps=min(100, steps // 5), seed=seed)
        with _staged(save_model) as stage:
            _integrate(adata, batch_key, model=model, from_scratch=from_scratch, label_key=label_key, config=cfg, train_config=tcfg,
                       n_top_genes=n_top_genes, layer=layer, use_raw=use_raw, gene_column=gene_column, out_dir=stage)
            write_h5ad(adata, out_path)
        _integrate_summary(adata, out_path, umap, batch_key, label_key, seed)


def _integrate_summary(adata, out_path, umap, batch_key, label_key, seed) -> None:
    info = adata.uns["scmamba2"]["X_scmamba2"]["integration"]
    asw = (f" (label ASW {info['asw_label']:.3f}, batch ASW {info['asw_batch']:.3f})"
           if "asw_label" in info and "asw_batch" in info else "")
    out.print(f"{adata.n_obs} cells integrated over {len(info['batch_categories'])} batches -> {out_path}{asw}")
    if umap is not None:
        from ..eval.plots import umap_png

        umap_png(adata, use_rep="X_scmamba2", color=[batch_key] + ([label_key] if label_key else []), path=umap,
                 seed=seed)
        out.print(f"UMAP -> {umap}")
