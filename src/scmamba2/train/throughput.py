"""A Lightning callback that logs training throughput (cells/s, tokens/s) to the progress bar and loggers."""

from __future__ import annotations

import logging
import time

import lightning.pytorch as pl

from .._keys import GENES, PADDING_MASK

__all__ = ["Throughput", "throughput_callback"]

log = logging.getLogger(__name__)

#: A run estimated to take longer than this (seconds) gets a warning after its first step.
LONG_RUN_S = 3600.0


class Throughput(pl.Callback):
    """Log ``cells_per_s`` and ``tokens_per_s`` (non-padding tokens) after every training batch.

    Rates cover the whole step (data wait, forward, backward, optimiser), are summed over DDP ranks
    (each rank's rate times the world size) and smoothed with an exponential moving average
    (``smoothing`` is the weight of the past). They show in the progress bar and go to the CSV and
    TensorBoard logs. Defined at module level so that ``ddp_spawn`` can pickle it.
    """

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = smoothing
        self._t = None
        self._cells = self._tokens = None
        self._estimated = False
        self._start_step = 0

    def on_train_start(self, trainer, pl_module):
        """Say what is being trained before the first step: parameters, layers, tokens per batch."""
        self._start_step = int(trainer.global_step)  # > 0 when a run is resumed
        n = sum(p.numel() for p in pl_module.parameters())
        cfg = getattr(getattr(pl_module, "model", None), "config", None)
        shape = f", d_model {cfg.d_model} x {cfg.n_layers} layers, up to {cfg.max_len} tokens a cell" if cfg else ""
        log.info("training a model of %.2f M parameters%s for %d steps", n / 1e6, shape, trainer.max_steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t is None:
            self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        dt = max(now - self._t, 1e-9)
        self._t = now
        world = trainer.world_size
        cells = batch[GENES].shape[0] * world / dt
        tokens = float((~batch[PADDING_MASK]).sum()) * world / dt
        if self._cells is None:
            self._cells, self._tokens = cells, tokens
        else:
            s = self.smoothing
            self._cells = s * self._cells + (1 - s) * cells
            self._tokens = s * self._tokens + (1 - s) * tokens
        if not self._estimated and trainer.max_steps and trainer.max_steps > 0:
            self._estimated = True
            self._estimate(dt, trainer)
        n = batch[GENES].shape[0]
        pl_module.log("cells_per_s", self._cells, prog_bar=True, on_step=True, batch_size=n)
        pl_module.log("tokens_per_s", self._tokens, prog_bar=True, on_step=True, batch_size=n)

    def _estimate(self, first_step_s: float, trainer) -> None:
        """The first step's time and what it means for the run (an over-estimate: it includes start-up)."""
        done = self._start_step  # after --resume: the steps run before
        steps = max(trainer.max_steps - done, 0)
        left = steps * first_step_s * trainer.accumulate_grad_batches
        text = (f"first step: {first_step_s:.2f} s; {'the ' if done else ''}{steps} steps "
                f"{'left ' if done else ''}take about {_duration(left)} at this rate")
        if left > LONG_RUN_S:
            log.warning("%s: a long run. A smaller model (model: d_model, n_layers), fewer genes (--n-top-genes), "
                        "shorter cells (tokenizer: max_len) or a GPU make it shorter.", text)
        else:
            log.info(text)


def throughput_callback(smoothing: float = 0.9) -> Throughput:
    """A :class:`Throughput` callback."""
    return Throughput(smoothing)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
