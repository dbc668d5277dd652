"""The pretrained model that ships with the package.

``scmamba2-pbmc-small`` (folder beside this file, fp16 weights, with ``MODEL_CARD.md``) is what
:func:`scmamba2.embed` and ``scmamba2 embed`` use when no model is given. ``scripts/build_pretrained.py``
rebuilds it; the card says from what, for how long, and how it scores.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

DEFAULT_MODEL = "scmamba2-pbmc-small"


def available() -> list[str]:
    """Names of the bundled models."""
    here = Path(__file__).parent
    return sorted(p.name for p in here.iterdir() if (p / "model.safetensors").is_file())


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """The folder of the bundled model ``name`` (a checkpoint directory :meth:`ScMamba2.from_pretrained` reads)."""
    path = Path(__file__).parent / name
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(
            f"no bundled model {name!r} in this installation of scmamba2 (bundled: {available() or 'none'}); "
            "pass a checkpoint directory with --model / model=, or rebuild it with scripts/build_pretrained.py"
        )
    return path


def bundled_name(model) -> str | None:
    """The bundled model a ``--model`` / ``model=`` value names, or None: ``"bundled"`` (the default model) or a
    bundled model's name, given as a string or path, unless a checkpoint folder of that name (one with a
    ``config.json``) is in the working directory: that folder is then meant."""
    if not isinstance(model, (str, Path)) or (Path(model) / "config.json").is_file():
        return None
    name = str(model)
    return DEFAULT_MODEL if name == "bundled" else (name if name in available() else None)


def load(name: str = DEFAULT_MODEL):
    """The bundled model ``name`` as an :class:`~scmamba2.ScMamba2` (float32, eval mode)."""
    from ..model import ScMamba2

    return ScMamba2.from_pretrained(model_path(name)).eval()
