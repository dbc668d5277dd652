"""The Lightning classes behind :mod:`scmamba2.train.checkpoint` and :mod:`scmamba2.train.resume`.

They live at module level (not inside the factory functions) so that they pickle: ``ddp_spawn`` sends the
trainer, its plugins and callbacks to the worker processes. This module imports Lightning; the two public
modules import it only when a trainer is built.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import RichProgressBar, WeightAveraging

from .checkpoint import _unreadable, atomic_torch_save
from .resume import ResumableLoader, derive_seed


class AtomicCheckpointIO(TorchCheckpointIO):
    """:func:`~scmamba2.train.checkpoint.atomic_torch_save` for writes, clear errors for unreadable files
    (local paths; URLs go to Lightning's own implementation)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        try:
            return super().load_checkpoint(path, map_location, weights_only)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise _unreadable(Path(path), exc) from exc


class StepSeed(pl.Callback):
    """Seeds torch's global generator (dropout) before every training batch from ``(seed, batch number, rank)``.

    The batch number is the :class:`~scmamba2.train.resume.ResumableLoader`'s count when the training loader
    is one, else Lightning's (epoch, batch index).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            where = (loader.batches_consumed,)
        else:
            where = (trainer.current_epoch, batch_idx)
        torch.manual_seed(derive_seed(self.seed, *where, trainer.global_rank))


class LastValidation(pl.Callback):
    """Remembers the global step and the ``val/`` metrics of the latest validation inside ``fit``, so that a
    validation after ``fit`` at the same step need not run (and be logged) again."""

    def __init__(self) -> None:
        self.step, self.metrics = None, {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.step = trainer.global_step
            self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar for a run bounded by steps: it described the epoch as ``Epoch 0/-2``
    (``max_epochs=-1`` minus one); here ``Epoch 0 (1000 steps)``."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        text = f"Epoch {current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            text += f"/{trainer.max_epochs - 1}"
        if trainer.max_steps and trainer.max_steps > 0:
            text += f" ({trainer.max_steps} steps)"
        return f"{text:{len(self.validation_description)}}"


class _EMAUpdate:
    """The in-place moving-average step of :class:`EMAWeights` (``multi_avg_fn`` of ``AveragedModel``): floating
    tensors move ``1 - decay`` of the way to the model's, other tensors (integer buffers such as the profile
    decoder's gene ids) are copied, never averaged. A class at module level, so that it pickles (``ddp_spawn``)."""

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)

    def __call__(self, averaged, current, num_averaged) -> None:
        with torch.no_grad():
            for a, c in zip(averaged, current):
                if a.is_floating_point():
                    a.lerp_(c.to(a.device, a.dtype), 1.0 - self.decay)
                else:
                    a.copy_(c)


class EMAWeights(WeightAveraging):
    """Lightning's weight averaging as an exponential moving average of the weights (``decay`` per optimiser
    step), updated from the first step after ``start_step`` (the warm-up's end: earlier weights are far from the
    trained ones). Validation and the saved model use the average once it exists (before its first update, the
    trained weights); a checkpoint keeps both, so a resume goes on exactly. The average lives on the device the
    strategy trains on. (Lightning's own ``EMAWeightAveraging`` averages integer buffers too, does not pickle and
    copies the untrained weights over the trained ones when it never updated.)"""

    def __init__(self, decay: float, start_step: int) -> None:
        super().__init__(multi_avg_fn=_EMAUpdate(decay), use_buffers=True)
        self.start_step = int(start_step)
        self._swapped = False  # whether the running validation swapped the average in

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self._device is None:
            self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)

    def should_update(self, step_idx=None, epoch_idx=None) -> bool:
        return step_idx is not None and step_idx >= self.start_step

    def _averaged(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_train_end(self, trainer, pl_module) -> None:
        if self._averaged():
            super().on_train_end(trainer, pl_module)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._swapped = self._averaged()
        if self._swapped:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped:
            super().on_validation_epoch_end(trainer, pl_module)
        self._swapped = False
