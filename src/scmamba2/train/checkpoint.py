"""Training checkpoints (Lightning ``.ckpt``): atomic writes, clear errors on unreadable files, resume lookup.

A checkpoint is written to a temporary file in the same folder, flushed and ``fsync``-ed, then renamed over
the old one with :func:`os.replace` (atomic on POSIX and Windows), and the folder entry is ``fsync``-ed too.
A crash, a kill or a full disk during the write leaves the previous checkpoint whole; the temporary file is
removed when the write fails in Python and is ignored (it starts with a dot) when the process dies.

These are the *training* checkpoints used to resume (weights, optimiser, schedule, loop and data-order
state). The model a user loads is the checkpoint *directory* written by ``ScMamba2.save_pretrained``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT_DIR, LAST = "checkpoints", "last.ckpt"
REQUIRED_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "global_step", "epoch")
MODEL_CONFIG_KEY = "scmamba2_model_config"  # ModelConfig.to_dict() of the model (absent from older checkpoints)


def last_checkpoint_path(out_dir: str | Path) -> Path:
    """The latest training checkpoint of a :func:`~scmamba2.pretrain` run: ``out_dir/checkpoints/last.ckpt``."""
    return Path(out_dir) / CHECKPOINT_DIR / LAST


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` that never leaves a partly written ``path``.

    Writes ``.<name>.tmp-<pid>`` beside ``path``, flushes and fsyncs it, renames it over ``path`` and fsyncs
    the folder. On any error the temporary file is removed and the error is raised; ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"the training checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); the file is truncated or "
        "corrupt (an incomplete copy, a full disk, or a crash while an older scmamba2 wrote it). Delete it and "
        f"resume from another checkpoint in {path.parent}, or start the run again without --resume."
    )


def read_checkpoint(path: str | Path, *, map_location: Any = "cpu", mmap: bool = True) -> dict[str, Any]:
    """Load a Lightning training checkpoint written by scmamba2, checking that it is whole.

    ``mmap=True`` maps the tensors instead of reading them, so checking a large file is cheap.

    Raises
    ------
    CheckpointError
        The file is missing, unreadable (truncated, corrupt, not a checkpoint) or lacks the training state
        (weights, optimiser, schedule, loops), naming the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path}; run without --resume (resume=False) to start a "
                              "new run in this folder")
    try:
        ckpt = torch.load(path, map_location=map_location, mmap=mmap, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on a bad file
        raise _unreadable(path, exc) from exc
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a scmamba2 training checkpoint: it lacks {', '.join(missing)}. Resume needs the "
            "out_dir/checkpoints/last.ckpt written by pretrain; a model directory (config.json + "
            "model.safetensors) is loaded with ScMamba2.from_pretrained instead."
        )
    return ckpt


def check_fits(ckpt: dict[str, Any], module: torch.nn.Module, path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming every tensor of ``module`` that the checkpoint lacks, has extra or
    has with another shape (the model or vocabulary changed since the checkpoint was written)."""
    own, saved = module.state_dict(), ckpt["state_dict"]
    problems = [f"missing {k}" for k in sorted(set(own) - set(saved))]
    problems += [f"unexpected {k}" for k in sorted(set(saved) - set(own))]
    problems += [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in sorted(set(own) & set(saved)) if tuple(saved[k].shape) != tuple(own[k].shape)]
    if problems:
        raise CheckpointError(
            f"{path} does not fit the model built for this run ({'; '.join(problems[:20])}"
            f"{'; ...' if len(problems) > 20 else ''}); resume with the same data, vocabulary and model "
            "configuration as the run that wrote it, or start a new run without --resume."
        )


def atomic_checkpoint_io():
    """A Lightning ``CheckpointIO`` plugin: :func:`atomic_torch_save` for writes, :func:`read_checkpoint`'s clear
    errors for reads (local paths; URLs go to Lightning's own implementation)."""
    from ._lightning_parts import AtomicCheckpointIO

    return AtomicCheckpointIO()
