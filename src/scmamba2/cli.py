"""The ``scmamba2`` command line: a thin typer layer over the Python API."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .errors import CheckpointError, InputError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="SC-MAMBA2: a bidirectional Mamba2 foundation model for single-cell data.")
err = Console(stderr=True)
out = Console(soft_wrap=True)  # a result line is never broken inside a path
_STATE = {"verbose": True}  # the main callback's --verbose/--quiet, for commands that draw progress bars

LayerOpt = typer.Option(None, "--layer", help="Take the matrix from this layer instead of X.")
RawOpt = typer.Option(False, "--use-raw", help="Take the matrix from .raw instead of X.")
GeneColOpt = typer.Option(None, "--gene-column", help="Name genes by this var column instead of var_names.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace a model folder that is not empty (never the folder "
                            "of the model this command starts from).")


def _setup_logging(verbose: bool) -> None:
    import warnings

    from rich.logging import RichHandler

    from .train.trainer import set_quiet

    _STATE["verbose"] = verbose
    set_quiet(not verbose)
    # Lightning's own deprecation notes (e.g. torch's pytree API it calls) are nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    if not verbose:
        warnings.filterwarnings("ignore", module=r"lightning|torch|scanpy|anndata")

    handler = RichHandler(console=err, show_path=False, show_time=False)
    handler.addFilter(lambda record: not record.name.startswith("lightning"))  # Lightning prints its own
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("scmamba2").setLevel(logging.INFO if verbose else logging.WARNING)


@contextlib.contextmanager
def _user_errors():
    """Problems with the user's input end the command with one paragraph and exit code 1, no traceback."""
    try:
        yield
    except (InputError, CheckpointError) as e:
        err.print(f"[bold red]Error:[/bold red] {e}", soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    except FileNotFoundError as e:
        err.print(f"[bold red]Error:[/bold red] file not found: {e.filename or e}", highlight=False)
        raise typer.Exit(1)
    except (PermissionError, IsADirectoryError, NotADirectoryError) as e:
        err.print(f"[bold red]Error:[/bold red] cannot use {e.filename or e}: {e.strerror or e}; check the path and "
                  "its permissions.", soft_wrap=True, highlight=False)
        raise typer.Exit(1)


@contextlib.contextmanager
def _removed_on_error(folder: Path):
    """A folder this command creates is removed again when the command stops on a user error."""
    existed = Path(folder).exists()
    try:
        yield
    except (InputError, CheckpointError):
        if not existed and Path(folder).is_dir():
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        raise


def _staged(folder: Optional[Path]):
    """The model folder is written beside its final place and moved there when the whole command succeeded."""
    from .data.files import staged_dir

    return staged_dir(folder) if folder is not None else contextlib.nullcontext(None)


def _at_least(minimum: float, **options) -> None:
    """Refuse an option below ``minimum`` (names as on the command line: max_steps -> --max-steps)."""
    for name, value in options.items():
        if value is not None and value < minimum:
            raise InputError(f"--{name.replace('_', '-')} {value} must be at least {minimum:g}.")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"scmamba2 {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(verbose: bool = typer.Option(True, "--verbose/--quiet", help="Show progress messages (--quiet: only the "
                                      "result and errors)."),
         version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    _setup_logging(verbose)


@app.command()
def validate(
    data: Path = typer.Argument(..., help="h5ad, h5mu, 10x folder or .h5, or csv."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
    model: Optional[Path] = typer.Option(None, "--model", help="Check the genes against this model's vocabulary."),
    modality: str = typer.Option("rna", help="Modality of an .h5mu file."),
) -> None:
    """Check a data file: value kind (raw counts, log-normalised, scaled), NaN, empty cells, gene ids."""
    from .data.io import read, select_matrix
    from .data.validate import validate as _validate

    with _user_errors():
        adata = select_matrix(read(data, layer=layer, use_raw=use_raw, modality=modality), gene_column=gene_column)
        vocab = None
        if model is not None:
            from .data.vocab import GeneVocab
            from .model import VOCAB_FILE

            vocab = GeneVocab.load(Path(model) / VOCAB_FILE)
        report = _validate(adata, vocab=vocab, raise_on_error=False)
        out.print(str(report), highlight=False)
        if not report.ok:
            raise InputError(report.error_message())


@app.command()
def pretrain(
    data: Optional[List[str]] = typer.Argument(None, help="Data files (h5ad, ...), folders of h5ad shards, "
                                               "TileDB-SOMA experiments (local folder or soma://URI)."),
    out_dir: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with sections model, tokenizer, train, "
                                          "data (corpus sources, obs filter, streaming)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override train.max_steps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override train.seed."),
    n_top_genes: Optional[int] = typer.Option(None, "--n-top-genes", help="Keep only this many HVGs."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out from its "
                                "checkpoints/last.ckpt (same data and settings)."),
    overwrite: bool = OverwriteOpt,
    soma_layer: Optional[str] = typer.Option(None, "--soma-layer", help="X layer of TileDB-SOMA experiments "
                                             "(default: Census's 'raw', else the experiment's only layer)."),
    soma_gene_column: Optional[str] = typer.Option(None, "--soma-gene-column", help="var column naming the genes "
                                                   "of TileDB-SOMA experiments (default: Census's "
                                                   "'feature_name', else e.g. 'var_id' of tiledbsoma.io.from_h5ad)."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
) -> None:
    """Pretrain a new model with masked expression modelling.

    One data file is read into memory; several h5ad files, folders of h5ad shards and TileDB-SOMA experiments
    are streamed block by block (data.stream: true / false decides for plain files), and the progress bar
    shows cells/s and tokens/s. Logs go to OUT/logs/metrics.csv and OUT/tensorboard (tensorboard --logdir OUT).
    """
    from .data.corpus import CorpusConfig
    from .data.files import check_model_dir, clear_dir
    from .data.io import read
    from .train.config import TrainConfig, load_run_config
    from .train.pretrain import pretrain as _pretrain

    with _user_errors(), _removed_on_error(out_dir):
        _at_least(1, max_steps=max_steps, n_top_genes=n_top_genes)
        if resume and overwrite:
            raise InputError("--resume continues the run in --out and --overwrite replaces it: give one of them.")
        check_model_dir(out_dir, overwrite=overwrite or resume, sources=[Path(d) for d in data or []
                                                                          if "://" not in d])
        run = load_run_config(config) if config else {"model": {}, "tokenizer": None, "train": None,
                                                      "data": CorpusConfig()}
        train, dcfg, data = run["train"], run["data"], list(data or [])
        overrides = {k: v for k, v in (("max_steps", max_steps), ("seed", seed)) if v is not None}
        if overrides:
            if train is None:  # pretrain()'s defaults: the profile objective with continuous values, else GEP + MVC
                tok = run["tokenizer"]
                profile = tok is None or tok.value_mode == "continuous"
                train = TrainConfig(**({"gep_weight": 0.0, "mvc_weight": 0.0} if profile else {}))
            train = replace(train, **overrides)
        if not data and not dcfg.sources:
            raise InputError("Give DATA (files, folders of h5ad shards, SOMA experiments) or data.sources in --config.")
        if soma_layer is not None or soma_gene_column is not None:
            dcfg = replace(dcfg, soma_layer=soma_layer or dcfg.soma_layer,
                           soma_gene_column=soma_gene_column or dcfg.soma_gene_column)
        if dcfg.streams(data):
            if layer is not None or use_raw or gene_column is not None:
                dcfg = replace(dcfg, layer="raw" if use_raw else (layer or dcfg.layer),
                               gene_column=gene_column or dcfg.gene_column)
            source = dcfg.open(data)
        else:
            source = [read(p) for p in data]
        if overwrite and out_dir.is_dir():
            clear_dir(out_dir)
        res = _pretrain(source, out_dir=out_dir, model_config=run["model"], tokenizer_config=run["tokenizer"],
                        train_config=train, layer=None if not isinstance(source, list) else layer,
                        use_raw=use_raw and isinstance(source, list),
                        gene_column=None if not isinstance(source, list) else gene_column,
                        n_top_genes=n_top_genes, resume=resume, data_config=dcfg)
        for name, ref in (("profile", "profile_gene_mean"), ("gep", "gep_gene_mean")):
            if f"val/{name}" in res.val_end:
                start, end = res.val_start.get(f"val/{name}", float("nan")), res.val_end[f"val/{name}"]
                reference = res.val_end.get(f"val/{ref}")
                out.print(f"held-out {name} loss before -> after training: {start:.4f} -> {end:.4f}" + (
                    f" (predicting each gene's mean: {reference:.4f})" if reference is not None else ""),
                    soft_wrap=True)
        out.print(f"model written to {out_dir}")


@app.command("import-checkpoint")
def import_checkpoint(
    source: Path = typer.Argument(..., help="Release folder with best_model.pt, args.json and vocab.json."),
    out_dir: Path = typer.Option(..., "--out", help="scmamba2 checkpoint directory to write."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Import the tensors that fit; start the "
                                       "rest from initialisation (listed in import_report.json)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Convert an SC-MAMBA2 / scGPT-layout release checkpoint into an scmamba2 checkpoint directory."""
    from .data.files import check_model_dir, write_json
    from .train.import_checkpoint import import_checkpoint as _import

    with _user_errors():
        check_model_dir(out_dir, overwrite=overwrite, sources=[source])
        model, report = _import(source, allow_partial=allow_partial)
        with _staged(out_dir) as stage:
            model.save_pretrained(stage)
            write_json(stage / "import_report.json", report.to_dict(), indent=2)
        out.print(f"{len(report.mapped)} tensors mapped, {len(report.converted)} converted, "
                  f"{len(report.not_mapped)} not mapped, {len(report.uninitialised)} left at initialisation "
                  f"-> {out_dir} (details in import_report.json)")


@app.command()
def embed(
    data: Path = typer.Argument(..., help="Data file to embed."),
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint directory (default: the bundled "
                                         "pretrained model, scmamba2-pbmc-small)."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5ad with obsm['X_scmamba2']."),
    umap: Optional[Path] = typer.Option(None, "--umap", help="Also write a UMAP PNG of the embedding."),
    color: List[str] = typer.Option([], "--color", help="obs column(s) to colour the UMAP by."),
    all_genes: bool = typer.Option(False, "--all-genes", help="Read every measured gene, zeros included."),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="Tokens per cell (<cls> included): a random "
                                          "subset of that many genes. Default: every expressed gene."),
    readout: Optional[str] = typer.Option(None, "--readout", help="'profile' (the default for a model with a "
                                          "linear profile decoder: distances as between the decoded profiles) or "
                                          "'raw' (the pooled encoder output)."),
    batch_size: int = typer.Option(64, "--batch-size", help="At most this many cells per batch."),
    max_tokens: int = typer.Option(65536, "--max-tokens", help="At most this many (padded) tokens per batch."),
    batch_key: Optional[str] = typer.Option(None, "--batch-key", help="obs column of each cell's batch, for a model integrated with --dsbn (its batch names are read from the model's integration.json)."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
) -> None:
    """Embed cells with a trained model into obsm['X_scmamba2']."""
    from .data.files import check_output, read_json, write_h5ad
    from .data.io import read
    from .tasks.embed import embed as _embed

    with _user_errors():
        check_output(out_path, [data, model])
        if umap is not None:
            check_output(umap, [data, model, out_path], option="--umap")
        _at_least(1, batch_size=batch_size, max_tokens=max_tokens)
        if umap is not None and not color:
            raise InputError("--umap needs at least one --color KEY (an obs column) to colour the cells by")
        adata = read(data)
        missing = [c for c in color if c not in adata.obs]
        if missing:
            raise InputError(f"--color {missing} not found in obs; available columns: {list(adata.obs.columns)}")
        categories = None
        if batch_key is not None:
            from .tasks.integrate import META_FILE

            if model is None:
                raise InputError("--batch-key applies to a model trained with batches (scmamba2 integrate "
                                 "--save-model DIR): pass it with --model DIR")
            meta = model / META_FILE
            if not meta.is_file():
                raise InputError(f"--batch-key needs the batch names the model was trained with: {meta} is missing "
                                 "(it is written by `scmamba2 integrate --save-model DIR`)")
            categories = read_json(meta)["batch_categories"]
        _embed(adata, model, batch_size=batch_size, max_tokens=max_tokens, layer=layer, use_raw=use_raw,
               gene_column=gene_column, all_genes=all_genes, max_len=max_len, readout=readout,
               batch_key=batch_key, batch_categories=categories, progress=_STATE["verbose"])
        write_h5ad(adata, out_path)
        out.print(f"{adata.n_obs} cells embedded -> {out_path} (obsm['X_scmamba2'])")
        if umap is not None:
            from .eval.plots import umap_png

            umap_png(adata, use_rep="X_scmamba2", color=color, path=umap)
            out.print(f"UMAP -> {umap}")


@app.command()
def quickstart(
    out_dir: Path = typer.Option(Path("out/quickstart"), "--out", help="Where to write the results."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Fine-tuning steps (default: the demo's 100)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """The demo: the bundled model on scanpy's pbmc68k_reduced, zero-shot and after a short self-supervised
    fine-tune, each compared with PCA by kNN label transfer."""
    from .quickstart import run_quickstart

    with _user_errors():
        _at_least(1, max_steps=max_steps)
        summary = run_quickstart(out_dir, max_steps=max_steps, seed=seed)
        out.print(summary)


# --- annotate (issue: cell-type annotation) ---

@app.command()
def annotate(
    reference: Optional[Path] = typer.Option(None, "--reference", help="Labelled reference (h5ad, ...). Not needed with --annotator."),
    label_key: Optional[str] = typer.Option(None, "--label-key", help="obs column of the reference's cell types (also scored in the query when it has it)."),
    query: Path = typer.Option(..., "--query", help="Cells to label."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5ad with obs['scmamba2_label'], obs['scmamba2_confidence'], obsm['scmamba2_probs']."),
    model: Optional[Path] = typer.Option(None, "--model", help="Pretrained checkpoint to start from (default: the bundled pretrained model)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Fine-tune a small new model on the reference's --n-top-genes HVGs instead of starting from a pretrained one."),
    method: str = typer.Option("auto", "--method", help="probe: logistic regression on the frozen pretrained embedding; finetune: train the model with a classifier head; auto: probe from a pretrained model, finetune --from-scratch."),
    annotator: Optional[Path] = typer.Option(None, "--annotator", help="Label with an annotator saved earlier (--save-model) instead of training."),
    save_model: Optional[Path] = typer.Option(None, "--save-model", help="Save the fine-tuned annotator in this directory."),
    epochs: float = typer.Option(10.0, "--epochs", help="Fine-tuning: passes over the training cells (early stopping may end sooner)."),
    seed: int = typer.Option(0, "--seed"),
    threshold: Optional[float] = typer.Option(None, "--unknown-threshold", help="Label cells with a lower confidence 'unknown'."),
    gep_weight: float = typer.Option(0.0, "--gep-weight", help="Weight of the masked-expression regulariser (0: off)."),
    pretrain_steps: int = typer.Option(0, "--pretrain-steps", help="Self-supervised steps on reference + query expression first (no labels)."),
    n_top_genes: int = typer.Option(2000, "--n-top-genes", help="Genes of a new model (--from-scratch; highly variable in the reference)."),
    overwrite: bool = OverwriteOpt,
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
) -> None:
    """Transfer cell-type labels from a labelled reference to a query (by default a linear probe on the bundled
    pretrained model's cell embedding)."""
    from .data.files import check_model_dir, check_output, write_h5ad
    from .data.io import read
    from .tasks.annotate import AnnotationConfig, default_train_config, fit_annotator
    from .tasks.annotate_predict import predict

    with _user_errors():
        inputs = [reference, query, model, annotator]
        check_output(out_path, inputs)
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
        if method not in ("auto", "probe", "finetune"):
            raise InputError(f"--method {method!r} must be 'auto', 'probe' or 'finetune'.")
        if annotator is not None and (from_scratch or model is not None):
            raise InputError("--annotator labels with an annotator saved earlier; --model and --from-scratch choose "
                             "how a new one is trained: leave them out")
        q = read(query)
        with _staged(save_model) as stage:
            if annotator is None:
                cfg = AnnotationConfig(method=method, gep_weight=gep_weight, pretrain_steps=pretrain_steps)
                ann = fit_annotator(read(reference), label_key, model=model, from_scratch=from_scratch,
                                    unlabeled=q if pretrain_steps else None,
                                    query=q, config=cfg, train_config=default_train_config(seed=seed), epochs=epochs,
                                    n_top_genes=n_top_genes, layer=layer, use_raw=use_raw, gene_column=gene_column,
                                    out_dir=stage)
            else:
                ann = annotator
            predict(q, ann, threshold=threshold, layer=layer, use_raw=use_raw, gene_column=gene_column,
                    progress=_STATE["verbose"])
            write_h5ad(q, out_path)
        info = q.uns["scmamba2_annotation"]
        out.print(f"{q.n_obs} cells labelled ({info['n_unknown']} unknown) -> {out_path}")
        if label_key is not None and label_key in q.obs:
            _print_scores(q, label_key, out_path)


def _print_scores(q, label_key: str, out_path: Path) -> None:
    """Accuracy, macro-F1 and per-class F1 of the query's own labels; a confusion-matrix PNG beside the output."""
    from rich.table import Table

    from .eval.classification import classification_metrics, confusion_png

    keep = q.obs[label_key].notna().to_numpy()
    truth, pred = q.obs[label_key][keep].astype(str), q.obs["scmamba2_label"][keep].astype(str)
    m = classification_metrics(truth, pred)
    out.print(f"query {label_key!r}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} "
              f"({m['n_cells']} cells with a label)")
    table = Table("class", "F1", "cells")
    for c, f in m["per_class_f1"].items():
        table.add_row(c, f"{f:.3f}", str(m["support"][c]))
    out.print(table)
    png = confusion_png(truth, pred, out_path.with_name(out_path.stem + "_confusion.png"),
                        title=f"{out_path.stem}: {label_key} vs scmamba2_label")
    out.print(f"confusion matrix -> {png}")


# --- integrate (issue: batch integration) ---

@app.command()
def integrate(
    data: Path = typer.Argument(..., help="Data file with the cells of every batch."),
    batch_key: str = typer.Option(..., "--batch-key", help="obs column of each cell's batch."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5ad with obsm['X_scmamba2']."),
    label_key: Optional[str] = typer.Option(None, "--label-key", help="obs column of cell types (evaluation and UMAP only)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Pretrained checkpoint (harmony: default the bundled model; finetune: default a small new model)."),
    umap: Optional[Path] = typer.Option(None, "--umap", help="Also write UMAP panels coloured by batch (and label)."),
    method: str = typer.Option("harmony", "--method", help="harmony (default): the pretrained model's embedding corrected by Harmony, nothing trained; finetune: train a model with the losses below."),
    save_model: Optional[Path] = typer.Option(None, "--save-model", help="finetune: save the fine-tuned model in this directory."),
    steps: Optional[int] = typer.Option(None, "--steps", help="finetune: training steps [default: 1000]."),
    seed: int = typer.Option(0, "--seed"),
    ecs: Optional[bool] = typer.Option(None, "--ecs/--no-ecs", help="finetune: elastic cell similarity loss [default: off]."),
    dab: Optional[bool] = typer.Option(None, "--dab/--no-dab", help="finetune: adversarial batch discriminator (gradient reversal) [default: on]."),
    dsbn: Optional[bool] = typer.Option(None, "--dsbn/--no-dsbn", help="finetune: domain-specific batch norm [default: off]."),
    batch_decoder: Optional[bool] = typer.Option(None, "--batch-decoder/--no-batch-decoder", help="finetune: give the expression heads a learned batch vector (the embedding need not carry the batch) [default: on]."),
    n_top_genes: Optional[int] = typer.Option(None, "--n-top-genes", help="finetune: genes of a new model (highly variable) [default: 2000]."),
    overwrite: bool = OverwriteOpt,
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
) -> None:
    """Integrate batches: correct the pretrained (by default the bundled) model's embedding with Harmony, or
    (--method finetune) train with GEP + MVC (batch-conditioned decoders) (+ ECS) + DAB (+ DSBN); embed into obsm."""
    from .data.files import check_model_dir, check_output, write_h5ad
    from .data.io import read
    from .tasks.integrate import IntegrationConfig
    from .tasks.integrate import integrate as _integrate
    from .train.config import TrainConfig

    with _user_errors():
        if method not in ("finetune", "harmony"):
            raise InputError(f"--method {method!r}: choose harmony (the default) or finetune.")
        if method == "harmony":
            training = {"--save-model": save_model, "--steps": steps, "--ecs/--no-ecs": ecs, "--dab/--no-dab": dab,
                        "--dsbn/--no-dsbn": dsbn, "--batch-decoder/--no-batch-decoder": batch_decoder,
                        "--n-top-genes": n_top_genes}
            given = [k for k, v in training.items() if v is not None]
            if given:
                raise InputError(f"{', '.join(given)} only apply to training, and the default --method harmony "
                                 "trains nothing (it corrects the pretrained embedding): add --method finetune, or "
                                 f"leave out {', '.join(given)}.")
        steps = 1000 if steps is None else steps
        n_top_genes = 2000 if n_top_genes is None else n_top_genes
        check_output(out_path, [data, model])
        if umap is not None:
            check_output(umap, [data, model, out_path], option="--umap")
        if save_model is not None:
            check_model_dir(save_model, overwrite=overwrite, sources=[data, model, out_path], option="--save-model")
        _at_least(1, steps=steps, n_top_genes=n_top_genes)
        adata = read(data)
        if method == "harmony":
            from .tasks.integrate_harmony import integrate_harmony

            integrate_harmony(adata, batch_key, model=model, label_key=label_key, layer=layer, use_raw=use_raw,
                              gene_column=gene_column, seed=seed)
            write_h5ad(adata, out_path)
            _integrate_summary(adata, out_path, umap, batch_key, label_key, seed)
            return
        losses = {"ecs": ecs, "dab": dab, "dsbn": dsbn, "batch_decoder": batch_decoder}
        cfg = IntegrationConfig(**{k: v for k, v in losses.items() if v is not None})  # unset: the config's default
        tcfg = TrainConfig(max_steps=steps, batch_size=32, lr=1e-3, warmup_steps=min(100, steps // 5), seed=seed)
        with _staged(save_model) as stage:
            _integrate(adata, batch_key, model=model, label_key=label_key, config=cfg, train_config=tcfg,
                       n_top_genes=n_top_genes, layer=layer, use_raw=use_raw, gene_column=gene_column, out_dir=stage)
            write_h5ad(adata, out_path)
        _integrate_summary(adata, out_path, umap, batch_key, label_key, seed)


def _integrate_summary(adata, out_path, umap, batch_key, label_key, seed) -> None:
    info = adata.uns["scmamba2"]["X_scmamba2"]["integration"]
    asw = (f" (label ASW {info['asw_label']:.3f}, batch ASW {info['asw_batch']:.3f})"
           if "asw_label" in info and "asw_batch" in info else "")
    out.print(f"{adata.n_obs} cells integrated over {len(info['batch_categories'])} batches -> {out_path}{asw}")
    if umap is not None:
        from .eval.plots import umap_png

        umap_png(adata, use_rep="X_scmamba2", color=[batch_key] + ([label_key] if label_key else []), path=umap,
                 seed=seed)
        out.print(f"UMAP -> {umap}")


# --- multiomics (issue: multi-omics) ---

class _DefaultTrain(typer.core.TyperGroup):
    """``scmamba2 multiomics DATA ...`` means ``scmamba2 multiomics train DATA ...``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["train", *args]
        return super().parse_args(ctx, args)


multiomics_app = typer.Typer(cls=_DefaultTrain, no_args_is_help=True,
                             help="Multi-omics (RNA + protein / ATAC): joint embedding (train, the default) and "
                                  "cross-modal prediction (predict).")
app.add_typer(multiomics_app, name="multiomics")


@multiomics_app.command("train")
def multiomics_train(
    data: Path = typer.Argument(..., help=".h5mu (rna + prot/adt and/or atac) or .h5ad with protein counts in obsm."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5mu (or .h5ad) with obsm['X_scmamba2']."),
    model_out: Path = typer.Option(..., "--model-out", help="Directory to save the trained model in."),
    batch_key: Optional[str] = typer.Option(None, "--batch-key", help="obs column of each cell's batch (DAB)."),
    label_key: Optional[str] = typer.Option(None, "--label-key", help="obs column of cell types (evaluation and UMAP only)."),
    umap: Optional[Path] = typer.Option(None, "--umap", help="Also write a UMAP PNG of the joint embedding."),
    protein_key: Optional[str] = typer.Option(None, "--protein-key", help="obsm key of the protein counts (.h5ad input)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Pretrained RNA checkpoint to start from [default: the bundled model]."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Train a small new model on --n-top-genes HVGs instead of starting from a pretrained one."),
    steps: int = typer.Option(1000, "--steps", help="Training steps."),
    seed: int = typer.Option(0, "--seed"),
    n_top_genes: int = typer.Option(2000, "--n-top-genes", help="RNA genes of a new model (--from-scratch; highly variable)."),
    n_top_peaks: int = typer.Option(1000, "--n-top-peaks", help="ATAC peaks kept (most variable)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train a joint model of paired modalities; write the joint embedding and save the model."""
    from .tasks.multiomics import MultiomicsConfig, multiomics
    from .train.config import TrainConfig

    from .data.files import check_model_dir, check_output, write_h5ad

    with _user_errors():
        from .data.multiomics import read_multiomics, to_container

        check_output(out_path, [data, model])
        if umap is not None:
            check_output(umap, [data, model, out_path], option="--umap")
        check_model_dir(model_out, overwrite=overwrite, sources=[data, model, out_path], option="--model-out")
        _at_least(1, steps=steps, n_top_genes=n_top_genes, n_top_peaks=n_top_peaks)
        color = [k for k in (batch_key, label_key) if k]
        if umap is not None and not color:
            raise InputError("--umap needs --batch-key or --label-key: the obs column(s) to colour the cells by")
        md = read_multiomics(data, protein_key=protein_key)
        cfg = MultiomicsConfig(n_top_genes=n_top_genes, n_top_peaks=n_top_peaks)
        tcfg = TrainConfig(max_steps=steps, batch_size=32, lr=1e-3, warmup_steps=min(100, steps // 5), seed=seed)
        with _staged(model_out) as stage:
            mm = multiomics(md, batch_key=batch_key, label_key=label_key, model=model, from_scratch=from_scratch, config=cfg,
                            train_config=tcfg, protein_key=protein_key, out_dir=stage)
            write_h5ad(to_container(md, out_path), out_path)
        out.print(f"{md.n_obs} cells, modalities {', '.join(mm.spec.modalities)} -> {out_path} (obsm['X_scmamba2']); "
                  f"model -> {model_out}")
        if umap is not None:
            from .eval.plots import umap_png

            umap_png(md.as_anndata(), use_rep="X_scmamba2", color=color, path=umap)
            out.print(f"UMAP -> {umap}")


@multiomics_app.command("predict")
def multiomics_predict(
    query: Path = typer.Option(..., "--query", help="RNA of the cells (.h5ad; or the rna modality of an .h5mu)."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5ad with obsm['scmamba2_pred_<modality>']."),
    model: Optional[Path] = typer.Option(None, "--model", help="Without --reference: a directory written by `scmamba2 multiomics ... --model-out`. With --reference: the pretrained model whose embedding finds the neighbours (default the bundled one)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Paired RNA + protein cells (.h5mu, or .h5ad with protein counts in obsm): predict protein by the query's nearest reference cells in the pretrained embedding; nothing trained."),
    modality: str = typer.Option("prot", "--modality", help="Modality to predict: prot (adt) or atac (atac needs a joint --model)."),
    n_neighbors: int = typer.Option(15, "--n-neighbors", help="With --reference: reference cells averaged per query cell."),
    protein_key: Optional[str] = typer.Option(None, "--protein-key", help="obsm key of the reference's protein counts (.h5ad reference)."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
    batch_key: Optional[str] = typer.Option(None, "--batch-key", help="obs column of each cell's batch, for a model trained with --batch-key (other batches: the mean batch vector)."),
) -> None:
    """Predict a modality from RNA alone: with a joint --model (the target modality's tokens are read with their
    values masked), or from a --reference of paired cells by nearest neighbours in the pretrained embedding."""
    from .data.files import check_output, write_h5ad
    from .data.io import read
    from .data.multiomics import canonical_modality
    from .tasks.multiomics import predict_modality

    with _user_errors():
        if reference is None and model is None:
            raise InputError("give --model (a joint model from `scmamba2 multiomics train`) or --reference (paired "
                             "RNA + protein cells, predicted through the bundled model's embedding)")
        if reference is not None and canonical_modality(modality) != "prot":
            raise InputError(f"--reference predicts protein only, not --modality {modality}; for ATAC give a joint "
                             "--model from `scmamba2 multiomics train`")
        if reference is None and (protein_key is not None or n_neighbors != 15):
            raise InputError("--protein-key and --n-neighbors apply to --reference only")
        if reference is not None and batch_key is not None:
            raise InputError("--batch-key applies to a joint --model trained with batches, not to --reference")
        _at_least(1, n_neighbors=n_neighbors)
        check_output(out_path, [query, model, reference])
        q = read(query, modality="rna")
        if reference is not None:
            from .tasks.transfer_modality import transfer_modality

            transfer_modality(reference, q, model=model, n_neighbors=n_neighbors, protein_key=protein_key,
                              layer=layer, use_raw=use_raw, gene_column=gene_column)
        else:
            predict_modality(q, model, modality, layer=layer, use_raw=use_raw, gene_column=gene_column,
                             batch_key=batch_key)
        write_h5ad(q, out_path)
        key = next(k for k in q.obsm if k.startswith("scmamba2_pred_"))
        out.print(f"{q.n_obs} cells x {q.obsm[key].shape[1]} features predicted -> {out_path} (obsm[{key!r}])")

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
    from .data.files import check_model_dir
    from .data.io import read
    from .tasks.perturb import KNOWLEDGE, train_perturbation
    from .train.config import TrainConfig

    with _user_errors():
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
) -> None:
    """Predict the mean log1p-normalised profile of each perturbation (obs['perturbation'], obs['source'],
    genes as var)."""
    from .data.files import check_output, write_h5ad
    from .data.io import read
    from .tasks.perturb import predict_perturbation

    with _user_errors():
        check_output(out_path, [model, controls])
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
    out_path: Path = typer.Option(..., "--out", help="Output CSV: query, rank, perturbation, score."),
    groupby: Optional[str] = typer.Option(None, "--groupby", help="Score group means of this obs column, not single cells."),
    top_k: int = typer.Option(8, "--top-k"),
    candidates: Optional[str] = typer.Option(None, "--candidates", help="Comma-separated (default: every known perturbation)."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
) -> None:
    """Rank the perturbations whose predicted profile best matches each query (cell or group mean)."""
    from .data.files import check_output, write_csv
    from .data.io import read
    from .tasks.perturb import reverse_perturbation

    with _user_errors():
        check_output(out_path, [model, query])
        _at_least(1, top_k=top_k)
        names = _names(candidates, "--candidates") if candidates else None
        ranks = reverse_perturbation(read(query), model, groupby=groupby, top_k=top_k, layer=layer, use_raw=use_raw,
                                     gene_column=gene_column, candidates=names)
        write_csv(ranks, out_path, index=False)
        out.print(f"{ranks['query'].nunique()} queries ranked -> {out_path}")

# --- datasets and bench (issue: datasets registry and report) ---

datasets_app = typer.Typer(no_args_is_help=True, help="The public benchmark datasets and the local ones: list, get.")
app.add_typer(datasets_app, name="datasets")
CacheOpt = typer.Option(None, "--dir", help="Dataset cache (default $SCMAMBA2_DATA or ~/.cache/scmamba2).")
SharedOpt = typer.Option(None, "--shared-dir",
                         help="Local data folder (default $SCMAMBA2_SHARED_DATA or ../shared/data).")


@datasets_app.command("list")
def datasets_list(cache: Optional[Path] = CacheOpt, shared_dir: Optional[Path] = SharedOpt) -> None:
    """Every registered dataset: source, tasks, shape, licence, whether a checksum is known and where it is."""
    from rich.table import Table

    from .datasets import cache_dir, list_datasets

    with _user_errors():
        table = Table(box=None, header_style="bold")
        for col in ("name", "source", "tasks", "cells x features", "licence", "sha256", "status"):
            table.add_column(col, overflow="fold", no_wrap=col != "licence")
        root = cache_dir(cache)
        for r in list_datasets(shared_dir):
            if r.source == "local":
                status = "on disk"
            elif any((root / r.name / f"{r.name}{e}").exists() for e in (".h5ad", ".h5mu")):
                status = "cached"
            else:
                status = "manual" if r.manual else "download"
            known = "yes" if r.files and all(f.sha256 for f in r.files) else "no"
            licence = r.licence.split(" (")[0].split(";")[0]  # the short form; the record has the rest
            licence = "not stated" if licence.startswith("not stated") else licence
            table.add_row(r.name, r.source, ",".join(r.tasks) or "-", r.shape, licence, known, status)
        Console(width=max(out.width, 130)).print(table)  # one row per dataset, also in a narrow pipe


@datasets_app.command("get")
def datasets_get(name: str = typer.Argument(..., help="A name from `scmamba2 datasets list`."),
                 cache: Optional[Path] = CacheOpt, shared_dir: Optional[Path] = SharedOpt) -> None:
    """Download (resuming a partial file), check the sha256, cache and convert a dataset; prints its path."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from .datasets import get

    with _user_errors(), Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), console=err, transient=False) as bar:
        current = {}

        def on_file(f):
            current["id"] = bar.add_task(f.filename, total=None)

        def progress(done, total):
            bar.update(current["id"], completed=done, total=total)

        path = get(name, cache=cache, shared_dir=shared_dir, progress=progress, on_file=on_file)
    out.print(str(path), highlight=False, soft_wrap=True)


@app.command()
def bench(
    tasks: Optional[List[str]] = typer.Argument(None, help="Tasks to run (default: all)."),
    data: List[str] = typer.Option([], "--data", help="Dataset name(s), repeat or comma-separate; 'local' = "
                                   "every local file (default: each task's own)."),
    out_dir: Path = typer.Option(Path("benchmarks/results"), "--out",
                                 help="Folder for the task results and the report."),
    seed: int = typer.Option(0, "--seed"),
    quick: bool = typer.Option(False, "--quick", help="Each task's small, fast setting."),
    cache: Optional[Path] = CacheOpt,
    shared_dir: Optional[Path] = SharedOpt,
    strict: bool = typer.Option(False, "--strict", help="Exit with code 1 when a task failed or is missing."),
    collect: bool = typer.Option(False, "--collect", help="Run nothing: write the report from the task results "
                                 "already in --out (each task's <task>.json)."),
) -> None:
    """Run the task benchmarks (ours and the baselines) and write report.md, report.html and report.json."""
    import shlex
    import sys

    from .bench.runner import collect_benchmarks, run_benchmarks

    names = [n for item in data for n in item.split(",") if n]
    with _user_errors():
        if collect:
            outcomes, paths = collect_benchmarks(tasks or None, out_dir=out_dir)
        else:
            outcomes, paths = run_benchmarks(
                tasks or None, datasets=names or None, out_dir=out_dir, seed=seed, quick=quick, cache=cache,
                shared_dir=shared_dir, command="scmamba2 " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                on_task=lambda o: err.print(f"{o.task}: {o.status} ({o.wall_s:.0f} s)"
                                            f"{': ' + o.error if o.error else ''}", highlight=False, soft_wrap=True))
    out.print(f"report: {paths['md']} | {paths['html']} | {paths['json']}", highlight=False, soft_wrap=True)
    if strict and any(o.status in ("failed", "missing") for o in outcomes):
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
