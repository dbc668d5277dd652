"""What every command shares: the typer app, the consoles, the common options and the error handling."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import CheckpointError, InputError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="SC-MAMBA2: a bidirectional Mamba2 foundation model for single-cell data.")
err = Console(stderr=True)
out = Console(soft_wrap=True)  # a result line is never broken inside a path
_STATE = {"verbose": True}  # the main callback's --verbose/--quiet, for commands that draw progress bars

LayerOpt = typer.Option(None, "--layer", help="Take the matrix from this layer instead of X.")
RawOpt = typer.Option(False, "--use-raw", help="Take the matrix from .raw instead of X.")
GeneColOpt = typer.Option(None, "--gene-column", help="Name genes by this var column instead of var_names.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace outputs that exist (the files of --out / --umap, a "
                            "model folder that is not empty); never an input, nor the folder of the model this "
                            "command starts from.")
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")  # what --umap may write (matplotlib picks by suffix)


def _setup_logging(verbose: bool) -> None:
    import warnings

    from rich.logging import RichHandler

    from ..train.trainer import set_quiet

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
    from ..data.files import staged_dir

    return staged_dir(folder) if folder is not None else contextlib.nullcontext(None)


def _check_models(*models) -> None:
    """Refuse a --model that is neither a bundled model's name nor a complete checkpoint folder; called before the
    outputs are checked, so that a folder that is no model is reported as such (not as an input --out lies in)."""
    from ..model import check_checkpoint
    from ..pretrained import bundled_name

    for m in models:
        if m is not None and bundled_name(m) is None:
            check_checkpoint(m)


def _at_least(minimum: float, **options) -> None:
    """Refuse an option below ``minimum`` (names as on the command line: max_steps -> --max-steps)."""
    for name, value in options.items():
        if value is not None and value < minimum:
            raise InputError(f"--{name.replace('_', '-')} {value} must be at least {minimum:g}.")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        out.print(f"scmamba2 {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(verbose: bool = typer.Option(True, "--verbose/--quiet", help="Show progress messages (--quiet: only the "
                                      "result and errors)."),
         version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    _setup_logging(verbose)
