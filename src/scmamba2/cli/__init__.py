"""The ``scmamba2`` command line: a thin typer layer over the Python API.

One module per group of commands; importing them registers their commands on :data:`app` in the order
``scmamba2 --help`` lists them.
"""

from . import core, tasks, multiomics, perturb, datasets  # noqa: F401,E402  (registers the commands)
from ._common import app

__all__ = ["app"]
