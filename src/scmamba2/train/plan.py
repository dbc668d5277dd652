"""The Lightning training plan: the losses, the optimiser and the schedule.

Like scvi-tools' TrainingPlan, it owns the losses; the model stays a plain ``nn.Module`` that takes tensors.
One plan serves pretraining and every fine-tuning task: each loss is computed when the model has the head
and the batch has the targets, and weighted by the :class:`~scmamba2.train.config.TrainConfig`:

- ``gep``: masked expression, MSE on the positions in ``MASK`` (pretraining: the hidden values; perturbation:
  every gene of the perturbed cell);
- ``mvc``: the same targets predicted from the cell embedding alone;
- ``profile``: the whole standardised expression of the model's gene panel, zeros included, predicted from
  the cell embedding alone (``PROFILE`` targets; NaN entries are skipped);
- ``cls``: cross-entropy of the classifier on ``LABELS`` (optionally class-weighted);
- ``ecs``: elastic cell similarity of the cell embeddings (``ecs_weight > 0``);
- ``dab``: cross-entropy of the batch discriminator on ``BATCH`` (its gradient reaches the encoder reversed);
- ``contrastive`` (training steps only): InfoNCE between each cell's embedding and the embedding of a view
  that keeps a random half of its gene tokens (:func:`half_view`), the other cells of the batch as negatives.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from .._keys import BATCH, GENES, LABELS, LIBRARY, MASK, PADDING_MASK, PROFILE, TARGET_VALUES, VALUES
from ..errors import InputError
from ..model import ScMamba2
from .checkpoint import MODEL_CONFIG_KEY
from .config import TrainConfig
from .losses import elastic_cell_similarity, info_nce, masked_mse, nan_mse, nb_nll
from .schedule import make_optimizer, warmup_cosine


class TrainingPlan(pl.LightningModule):
    """Trains ``model`` on the losses its heads and the batches allow.

    Logged metrics: ``train/<loss>`` and ``val/<loss>`` for each loss above plus ``loss`` (the weighted total),
    ``val/acc`` when there is a classifier, and ``lr``. Beside each expression loss, validation logs what a
    model that ignores the cell scores: ``val/profile_gene_mean`` (predicting each panel gene's mean, i.e. 0
    in standardised units) and, when ``gene_means`` is given, ``val/gep_gene_mean`` (predicting each masked
    gene's mean value). A loss that falls only to these is learning gene averages, not cell state.

    Parameters
    ----------
    model
        The model.
    config
        Optimiser, schedule and loss weights.
    class_weights
        ``(n_classes,)`` weights of the classification loss (e.g. inverse class frequencies).
    gene_means
        ``(vocab_size,)`` mean value of each gene over the training tokens, for ``val/gep_gene_mean``.
    """

    def __init__(self, model: ScMamba2, config: TrainConfig, class_weights: torch.Tensor | None = None,
                 gene_means: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.config = config
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.register_buffer("gene_means", gene_means, persistent=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[MODEL_CONFIG_KEY] = self.model.config.to_dict()  # read by resume's checks before any data

    def _losses(self, batch: dict[str, torch.Tensor], train: bool = False) -> tuple[dict[str, torch.Tensor], object]:
        c = self.config
        # Only the per-token heads a loss reads (the default pretraining reads neither: profile loss only).
        token_heads = [name for name, w in (("expr", c.gep_weight), ("mvc", c.mvc_weight)) if MASK in batch and w > 0]
        out = self.model(batch, token_heads=token_heads)
        losses: dict[str, torch.Tensor] = {}
        total = out.cell_emb.sum() * 0.0
        if MASK in batch and c.gep_weight > 0:
            losses["gep"] = masked_mse(out.expr_pred, batch[TARGET_VALUES], batch[MASK])
            total = total + c.gep_weight * losses["gep"]
        if MASK in batch and out.mvc_pred is not None and c.mvc_weight > 0:
            losses["mvc"] = masked_mse(out.mvc_pred, batch[TARGET_VALUES], batch[MASK])
            total = total + c.mvc_weight * losses["mvc"]
        if out.profile_pred is not None and PROFILE in batch and c.profile_weight > 0:
            losses["profile"] = self._profile_loss(out.profile_pred, batch)
            total = total + c.profile_weight * losses["profile"]
        if out.class_logits is not None and LABELS in batch and c.cls_weight > 0:
            losses["cls"] = F.cross_entropy(out.class_logits, batch[LABELS], weight=self.class_weights)
            total = total + c.cls_weight * losses["cls"]
        if c.ecs_weight > 0:
            losses["ecs"] = elastic_cell_similarity(out.cell_emb, c.ecs_threshold)
            total = total + c.ecs_weight * losses["ecs"]
        if out.batch_logits is not None and BATCH in batch and c.dab_weight > 0:
            losses["dab"] = F.cross_entropy(out.batch_logits, batch[BATCH])
            total = total + c.dab_weight * losses["dab"]
        if train and c.contrastive_weight > 0:
            view = half_view(batch)
            states = self.model.encode(view[GENES], view[VALUES], view[PADDING_MASK], view.get(BATCH))
            z = self.model.cell_embedding(states, view[PADDING_MASK])
            losses["contrastive"] = info_nce(out.cell_emb, z, c.contrastive_temperature)
            total = total + c.contrastive_weight * losses["contrastive"]
        losses["loss"] = total
        return losses, out

    def _target_sum(self) -> float:
        tok = getattr(self.model, "tokenizer_config", None)
        return float(tok.target_sum) if tok is not None else 1e4

    def _counts(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The panel genes' raw counts (NaN = not measured) and library sizes, from the standardised targets."""
        if LIBRARY not in batch:
            raise InputError("profile_likelihood='nb' models raw counts with each cell's library size, but these "
                             "cells carry none (their values were log-normalised, not raw counts): give raw "
                             "counts (e.g. --layer counts / --use-raw), or use profile_likelihood='mse'.")
        head = self.model.profile_head
        library = batch[LIBRARY]
        value = batch[PROFILE] * head.gene_std + head.gene_mean  # log1p of counts per target_sum
        return torch.expm1(value) * (library.unsqueeze(1) / self._target_sum()), library

    def _profile_loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        head = self.model.profile_head
        if head.log_theta is None:
            return nan_mse(pred, batch[PROFILE])
        counts, library = self._counts(batch)
        # the head predicts the log expression relative to exp(gene_mean) - 1 (about each gene's typical level
        # per target_sum counts), so that a fresh head starts near the gene means, as the MSE head starts at 0
        offset = torch.log(torch.expm1(head.gene_mean).clamp(min=1e-4))
        return nb_nll(pred + offset, counts, library, head.log_theta, self._target_sum())

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses, _ = self._losses(batch, train=True)
        n = batch[TARGET_VALUES].shape[0] if TARGET_VALUES in batch else len(next(iter(batch.values())))
        for k, v in losses.items():
            self.log(f"train/{k}", v, prog_bar=(k == "loss"), batch_size=n)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return losses["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses, out = self._losses(batch)
        # Weight by masked tokens when there are some, so the epoch value of gep is a per-token mean.
        n_cells = out.cell_emb.shape[0]
        n = int(batch[MASK].sum()) if MASK in batch else n_cells
        for k, v in losses.items():
            per_cell = k == "profile"  # a per-cell loss: weight batches by cells
            self.log(f"val/{k}", v, prog_bar=(k == "loss"), batch_size=n_cells if per_cell else max(n, 1),
                     sync_dist=True)
        if "profile" in losses:
            target = batch[PROFILE]
            if self.model.profile_head.log_theta is None:
                reference = nan_mse(torch.zeros_like(target), target)
            else:  # each gene's mean expression per target_sum counts over these cells
                counts, library = self._counts(batch)
                mean = torch.nanmean(counts / library.unsqueeze(1), dim=0, keepdim=True) * self._target_sum()
                reference = nb_nll(torch.log(mean.clamp(min=1e-8)).expand_as(target), counts, library,
                                   self.model.profile_head.log_theta, self._target_sum())
            self.log("val/profile_gene_mean", reference, batch_size=n_cells, sync_dist=True)
        if "gep" in losses and self.gene_means is not None:
            guess = self.gene_means[batch[GENES]]
            self.log("val/gep_gene_mean", masked_mse(guess, batch[TARGET_VALUES], batch[MASK]),
                     batch_size=max(n, 1), sync_dist=True)
        if out.class_logits is not None and LABELS in batch:
            acc = (out.class_logits.argmax(-1) == batch[LABELS]).float().mean()
            self.log("val/acc", acc, prog_bar=True, batch_size=n_cells, sync_dist=True)

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


def half_view(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with each cell reduced to ``<cls>`` and a random half (at least one) of its gene tokens, kept in
    order and right-padded (unmasked values: the view sees the cell's expression, not the GEP input).

    Draws from torch's generator, which the training loop seeds at every step.
    """
    pad, genes = batch[PADDING_MASK], batch[GENES]
    values = batch.get(TARGET_VALUES, batch[VALUES])  # TARGET_VALUES: the values before GEP masking
    valid = ~pad
    keep = valid & (torch.rand(genes.shape, device=genes.device) < 0.5)
    keep[:, 0] = valid[:, 0]  # <cls>
    if genes.shape[1] > 1:
        keep[:, 1] |= valid[:, 1] & ~keep[:, 1:].any(1)  # at least one gene
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # kept tokens first, in order
    n = int(keep.sum(1).max())
    order = order[:, :n]
    view = {GENES: genes.gather(1, order), VALUES: values.gather(1, order),
            PADDING_MASK: ~keep.gather(1, order)}
    if BATCH in batch:
        view[BATCH] = batch[BATCH]
    return view
