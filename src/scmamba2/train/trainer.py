"""One place that builds the Lightning ``Trainer`` from a :class:`TrainConfig` (pretraining and every task)."""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig


def make_trainer(tcfg: TrainConfig, out_dir: str | Path | None = None, *, validate: bool = False,
                 callbacks: list | None = None, tensorboard: bool = False):
    """A step-based ``Trainer``: ``max_steps`` updates, validation every ``val_every_n_steps`` when
    ``validate``, CSV metrics in ``out_dir/logs/metrics.csv`` and a ``last.ckpt`` in ``out_dir/checkpoints``
    when ``out_dir`` is given (and TensorBoard event files in ``out_dir/tensorboard`` with ``tensorboard``), early
    stopping on ``val/loss`` when ``early_stopping_patience > 0``; ``tcfg.strategy`` goes through
    :func:`~scmamba2.train.distributed.make_strategy`."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from .checkpoint import atomic_checkpoint_io
    from .distributed import make_strategy

    callbacks = list(callbacks or [])
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
    if validate and tcfg.early_stopping_patience > 0:
        callbacks.append(EarlyStopping("val/loss", patience=tcfg.early_stopping_patience, mode="min"))
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
        enable_progress_bar=tcfg.progress_bar, enable_model_summary=False, enable_checkpointing=out is not None,
        deterministic=False, default_root_dir=str(out) if out else None,
        plugins=[atomic_checkpoint_io()],
    )
