"""A Lightning callback that logs training throughput (cells/s, tokens/s) to the progress bar and loggers."""

from __future__ import annotations

import time

import lightning.pytorch as pl

from .._keys import GENES, PADDING_MASK

__all__ = ["Throughput", "throughput_callback"]


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
        n = batch[GENES].shape[0]
        pl_module.log("cells_per_s", self._cells, prog_bar=True, on_step=True, batch_size=n)
        pl_module.log("tokens_per_s", self._tokens, prog_bar=True, on_step=True, batch_size=n)


def throughput_callback(smoothing: float = 0.9) -> Throughput:
    """A :class:`Throughput` callback."""
    return Throughput(smoothing)
