"""``python -m scmamba2``: the command line, as the ``scmamba2`` console script."""

if __name__ == "__main__":
    from .cli import app

    app(prog_name="scmamba2")
