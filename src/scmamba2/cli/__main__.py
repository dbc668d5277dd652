"""``python -m scmamba2.cli``."""

from . import app

app()
