"""The pretrained models that ship with the package.

Two builds of one recipe, differing only in their seed (folders beside this file, fp16 weights, each with
``MODEL_CARD.md``):

- ``scmamba2-pbmc-small`` (seed 0) is the default model: the network that ``integrate``, ``multiomics``,
  ``transfer_modality``, ``pretrain --init-model bundled`` and ``annotate --method finetune`` start from;
- :func:`scmamba2.embed` and ``scmamba2 embed`` without a model read cells with both builds and put their
  embeddings side by side (:data:`DEFAULT_EMBEDDING`): on the readout benchmark's selection sets that measured
  better than either build alone (``benchmarks/results/ensemble_seeds.md``); so does ``annotate``'s linear probe
  (``benchmarks/results/annotate_pair.md``).

``scripts/build_pretrained.py`` rebuilds them; the cards say from what, for how long, and how they score.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

DEFAULT_MODEL = "scmamba2-pbmc-small"
# embed's default: these bundled builds' embeddings side by side (the default model first)
DEFAULT_EMBEDDING = (DEFAULT_MODEL, "scmamba2-pbmc-small-seed2")
PACKAGE_LIMIT_BYTES = 10 * 2**20  # every bundled model together


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


def is_default_embedding(model) -> bool:
    """Whether a ``model`` argument of ``embed`` means the bundled default embedding: None or ``"bundled"``
    (unless a checkpoint folder named ``bundled`` is in the working directory)."""
    return model is None or (isinstance(model, (str, Path)) and str(model) == "bundled"
                             and bundled_name(model) is not None)


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
