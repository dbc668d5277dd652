"""The Lightning training plan for masked-expression pretraining (GEP + MVC).

Like scvi-tools' TrainingPlan, it owns the losses, the optimiser and the schedule; the model stays a plain
``nn.Module`` that takes tensors.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from .._keys import MASK, TARGET_VALUES
from ..model import ScMamba2
from .config import TrainConfig
from .losses import masked_mse
from .schedule import make_optimizer, warmup_cosine


class PretrainPlan(pl.LightningModule):
    """Masked expression modelling: hide ``mask_ratio`` of each cell's values, predict them back.

    Logged metrics: ``train/loss``, ``train/gep``, ``train/mvc``, ``val/loss``, ``val/gep``, ``val/mvc``, ``lr``.
    """

    def __init__(self, model: ScMamba2, config: TrainConfig):
        super().__init__()
        self.model = model
        self.config = config

    def _losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(batch)
        mask, target = batch[MASK], batch[TARGET_VALUES]
        losses = {"gep": masked_mse(out.expr_pred, target, mask)}
        total = self.config.gep_weight * losses["gep"]
        if out.mvc_pred is not None:
            losses["mvc"] = masked_mse(out.mvc_pred, target, mask)
            total = total + self.config.mvc_weight * losses["mvc"]
        losses["loss"] = total
        return losses

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        n = batch[MASK].shape[0]
        for k, v in losses.items():
            self.log(f"train/{k}", v, prog_bar=(k == "loss"), batch_size=n)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return losses["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses = self._losses(batch)
        n = int(batch[MASK].sum())  # weight by masked tokens so the epoch value is a per-token mean
        for k, v in losses.items():
            self.log(f"val/{k}", v, prog_bar=(k == "loss"), batch_size=max(n, 1))

    def on_train_epoch_start(self) -> None:
        # Redraw the per-cell random choices (subsampling to max_len) each epoch, still seeded.
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        c = self.config
        opt = make_optimizer(self.model, c.lr, c.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, c.warmup_steps, c.max_steps, c.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
