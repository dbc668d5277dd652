"""``python -m scmamba2``: the command line, as the ``scmamba2`` console script."""

from .cli import app

app(prog_name="scmamba2")
