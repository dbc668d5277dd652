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
                  help="SC-MAMBA2: a bidirectional Mamba2 foundation model for single-cell data.")
err = Console(stderr=True)
out = Console()

LayerOpt = typer.Option(None, "--layer", help="Take the matrix from this layer instead of X.")
RawOpt = typer.Option(False, "--use-raw", help="Take the matrix from .raw instead of X.")
GeneColOpt = typer.Option(None, "--gene-column", help="Name genes by this var column instead of var_names.")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

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


@app.callback()
def main(verbose: bool = typer.Option(True, "--verbose/--quiet", help="Show progress messages.")) -> None:
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
    data: List[Path] = typer.Argument(..., help="One or more data files."),
    out_dir: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with sections model, tokenizer, train."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override train.max_steps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override train.seed."),
    n_top_genes: Optional[int] = typer.Option(None, "--n-top-genes", help="Keep only this many HVGs."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
) -> None:
    """Pretrain a new model with masked expression modelling."""
    from .data.io import read
    from .train.config import TrainConfig, load_run_config
    from .train.pretrain import pretrain as _pretrain

    with _user_errors():
        run = load_run_config(config) if config else {"model": {}, "tokenizer": None, "train": TrainConfig()}
        train = run["train"]
        if max_steps is not None:
            train = replace(train, max_steps=max_steps)
        if seed is not None:
            train = replace(train, seed=seed)
        adatas = [read(p) for p in data]
        res = _pretrain(adatas, out_dir=out_dir, model_config=run["model"], tokenizer_config=run["tokenizer"],
                        train_config=train, layer=layer, use_raw=use_raw, gene_column=gene_column,
                        n_top_genes=n_top_genes)
        if res.val_loss_start is not None:
            out.print(f"held-out masked-expression loss: {res.val_loss_start:.4f} -> {res.val_loss_end:.4f}")
        out.print(f"model written to {out_dir}")


@app.command()
def embed(
    data: Path = typer.Argument(..., help="Data file to embed."),
    model: Path = typer.Option(..., "--model", help="Checkpoint directory."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5ad with obsm['X_scmamba2']."),
    umap: Optional[Path] = typer.Option(None, "--umap", help="Also write a UMAP PNG of the embedding."),
    color: List[str] = typer.Option([], "--color", help="obs column(s) to colour the UMAP by."),
    all_genes: bool = typer.Option(False, "--all-genes", help="Read every measured gene, zeros included."),
    batch_size: int = typer.Option(64, "--batch-size", help="At most this many cells per batch."),
    max_tokens: int = typer.Option(65536, "--max-tokens", help="At most this many (padded) tokens per batch."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
) -> None:
    """Embed cells with a trained model into obsm['X_scmamba2']."""
    from .data.io import read
    from .tasks.embed import embed as _embed

    with _user_errors():
        if umap is not None and not color:
            raise InputError("--umap needs at least one --color KEY (an obs column) to colour the cells by")
        adata = read(data)
        missing = [c for c in color if c not in adata.obs]
        if missing:
            raise InputError(f"--color {missing} not found in obs; available columns: {list(adata.obs.columns)}")
        _embed(adata, model, batch_size=batch_size, max_tokens=max_tokens, layer=layer, use_raw=use_raw, gene_column=gene_column,
               all_genes=all_genes)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(out_path)
        out.print(f"{adata.n_obs} cells embedded -> {out_path} (obsm['X_scmamba2'])")
        if umap is not None:
            from .eval.plots import umap_png

            umap_png(adata, use_rep="X_scmamba2", color=color, path=umap)
            out.print(f"UMAP -> {umap}")


@app.command()
def quickstart(
    out_dir: Path = typer.Option(Path("out/quickstart"), "--out", help="Where to write the results."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Training steps (default: the demo's)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """The demo: pretrain on scanpy's pbmc68k_reduced, embed, compare with PCA by kNN label transfer."""
    from .quickstart import run_quickstart

    with _user_errors():
        summary = run_quickstart(out_dir, max_steps=max_steps, seed=seed)
        out.print(summary)


# --- annotate (issue: cell-type annotation) ---

# --- integrate (issue: batch integration) ---

# --- multiomics (issue: multi-omics) ---

# --- perturb (issue: perturbation) ---

# --- datasets and bench (issue: datasets registry and report) ---


if __name__ == "__main__":  # pragma: no cover
    app()
