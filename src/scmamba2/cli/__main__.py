"""``python -m scmamba2.cli``."""

if __name__ == "__main__":
    from . import app

    app(prog_name="scmamba2")
