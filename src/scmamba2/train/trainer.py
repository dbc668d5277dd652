"""One place that builds the Lightning ``Trainer`` from a :class:`TrainConfig` (pretraining and every task)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from .config import TrainConfig

log = logging.getLogger(__name__)

#: The CLI's ``--quiet``: no progress bars and no Lightning info lines in every trainer (see :func:`set_quiet`).
_QUIET = False


def set_quiet(quiet: bool) -> None:
    """``True``: every trainer built afterwards shows no progress bar and Lightning logs only warnings (its GPU/TPU
    lines, tips and "stopped" notes are left out). Lightning resets its loggers' levels when it is imported, so
    they are set here, when a trainer is built."""
    global _QUIET
    _QUIET = bool(quiet)


class _NoAdvert(logging.Filter):
    """Drops Lightning's "💡 Tip: ... litlogger" line, printed by every new ``Trainer``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_NO_ADVERT = _NoAdvert()


def _hide_lightning_notes() -> None:
    """Hide two Lightning messages that are no concern of the user: the litlogger advert and, for a run without
    held-out cells (the package decides whether to validate), "You defined a `validation_step` but have no
    `val_dataloader`". Every other Lightning line and warning is kept."""
    import warnings

    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    # Added once: addFilter skips a filter that is already there.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NO_ADVERT)
    warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`",
                            category=PossibleUserWarning)


def make_trainer(tcfg: TrainConfig, out_dir: str | Path | None = None, *, validate: bool = False,
                 callbacks: list | None = None, tensorboard: bool = False):
    """A step-based ``Trainer``: ``max_steps`` updates, validation every ``val_every_n_steps`` when
    ``validate``, CSV metrics in ``out_dir/logs/metrics.csv`` and a ``last.ckpt`` in ``out_dir/checkpoints``
    when ``out_dir`` is given (and TensorBoard event files in ``out_dir/tensorboard`` with ``tensorboard``), early
    stopping on ``val/loss`` when ``early_stopping_patience > 0``, a moving average of the weights (validated and
    kept) when ``ema_decay > 0``; ``tcfg.strategy`` goes through :func:`~scmamba2.train.distributed.make_strategy`."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from ._lightning_parts import StepProgressBar
    from .checkpoint import atomic_checkpoint_io
    from .distributed import make_strategy

    callbacks = list(callbacks or [])
    _hide_lightning_notes()
    if _QUIET:
        import logging

        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    progress = tcfg.progress_bar and not _QUIET
    if progress:
        callbacks.append(StepProgressBar())
    out = Path(out_dir) if out_dir is not None else None
    logger = False
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        logger = CSVLogger(str(out), name="logs", version="")
        if tensorboard:
            from lightning.pytorch.loggers import TensorBoardLogger

            logger = [logger, TensorBoardLogger(str(out), name="tensorboard", version="")]
        # Always the same name (no last-v1.ckpt), written atomically (plugins below): resume reads last.ckpt.
        callbacks.append(ModelCheckpoint(dirpath=str(out / "checkpoints"), save_last=True,
                                         every_n_train_steps=tcfg.val_every_n_steps, save_top_k=0,
                                         enable_version_counter=False))
    if tcfg.ema_decay > 0:
        from ._lightning_parts import EMAWeights

        callbacks.append(EMAWeights(tcfg.ema_decay, start_step=tcfg.warmup_steps))
    if validate and tcfg.early_stopping_patience > 0:
        callbacks.append(EarlyStopping("val/loss", patience=tcfg.early_stopping_patience, mode="min"))
    on_cpu = tcfg.accelerator == "cpu" or (tcfg.accelerator == "auto" and not torch.cuda.is_available())
    # on the CPU Lightning runs "16-mixed" as bfloat16 too
    if str(tcfg.precision).startswith(("bf16", "16")) and on_cpu and not _cpu_has_bf16():
        log.warning("precision=%r on a CPU without bfloat16 instructions: its matmuls are emulated and run slower "
                    "than float32; use precision='32-true' here", tcfg.precision)
    return pl.Trainer(
        max_steps=tcfg.max_steps, max_epochs=-1, accelerator=tcfg.accelerator, devices=tcfg.devices,
        num_nodes=tcfg.num_nodes,
        strategy=make_strategy(tcfg),
        precision=tcfg.precision, gradient_clip_val=tcfg.gradient_clip_val,
        accumulate_grad_batches=tcfg.accumulate_grad_batches, logger=logger, callbacks=callbacks,
        log_every_n_steps=tcfg.log_every_n_steps,
        # Lightning counts this in batches, not optimiser steps: scale by the accumulation.
        val_check_interval=(min(tcfg.val_every_n_steps, tcfg.max_steps) * tcfg.accumulate_grad_batches
                            if validate else None),
        check_val_every_n_epoch=None, num_sanity_val_steps=0,
        enable_progress_bar=progress, enable_model_summary=False, enable_checkpointing=out is not None,
        deterministic=False, default_root_dir=str(out) if out else None,
        plugins=[atomic_checkpoint_io()],
    )


def _cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX on x86, BF16 on Arm), read from
    ``/proc/cpuinfo``; where there is none, oneDNN's check (which also counts CPUs that only emulate bfloat16)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = None
    if flags is not None:
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def fit(trainer, plan, *, resume_hint=None, **kwargs) -> None:
    """``trainer.fit(plan, **kwargs)`` under :func:`stopped_by_sigterm`."""
    with stopped_by_sigterm(trainer, resume_hint):
        trainer.fit(plan, **kwargs)


@contextlib.contextmanager
def stopped_by_sigterm(trainer, resume_hint=None):
    """A SIGTERM (a job scheduler's stop, ``kill``) inside Lightning's loops ends the process with exit status 143
    and a message, not as a finished run: Lightning stops on it with a ``SIGTERMException`` that exits with status
    0. It is raised again with code 143 (still a ``SIGTERMException``). ``resume_hint`` (a string, or a function
    that returns one when the run stops) says how to continue (pretraining: ``--resume``)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        yield
    except SIGTERMException:
        hint = resume_hint() if callable(resume_hint) else resume_hint
        log.error("training was stopped by SIGTERM at step %d%s", trainer.global_step,
                  f"; {hint}" if hint else "; the model was not saved")
        raise SIGTERMException(143) from None
