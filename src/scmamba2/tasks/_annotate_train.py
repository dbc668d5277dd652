"""The two training loops of annotation: self-supervised expression pretraining (no labels) and the classifier
fine-tuning with validation, early stopping and the best weights restored. Used by
:func:`scmamba2.tasks.annotate.fit_annotator`; this module imports Lightning."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from .._keys import LABELS, MASK
from ..data.collate import Collator, LengthBucketSampler, TokenizedDataset
from ..data.tokenize import TokenizedCells
from ..train.plan import TrainingPlan
from ..train.resume import ResumableLoader, step_seed_callback
from ..train.throughput import throughput_callback
from ..train.trainer import fit, make_trainer

log = logging.getLogger(__name__)

# Batches are drawn from buckets of this many batches sorted by length: less padding than a plain shuffle, but
# mixed enough that a batch is not made of one cell type (cell types differ in their number of genes).
BUCKET_BATCHES = 4


class BestWeights(pl.Callback):
    """At each validation, the mean cross-entropy (unweighted) of the model on ``batches``; keeps a copy of the
    weights with the lowest, stops training after ``patience`` validations without a lower one (0: never), and
    :meth:`restore` loads the copy.

    The class-weighted validation loss of the training plan is not used: a rare class with one or two held-out
    cells would dominate it (and its noise).
    """

    def __init__(self, batches: list[dict[str, torch.Tensor]], patience: int = 0) -> None:
        self.batches, self.patience = batches, int(patience)
        self.best: float = float("inf")
        self.best_step: int | None = None
        self.best_metrics: dict[str, float] = {}
        self.state: dict[str, torch.Tensor] | None = None
        self.waited = 0

    @torch.no_grad()
    def _score(self, model) -> tuple[float, float]:
        was_training = model.training
        model.eval()
        nll, hits, n = 0.0, 0, 0
        for b in self.batches:
            b = {k: v.to(model.gene_encoder.embedding.weight.device) for k, v in b.items()}
            logits = model(b).class_logits
            nll += float(torch.nn.functional.cross_entropy(logits, b[LABELS], reduction="sum"))
            hits += int((logits.argmax(-1) == b[LABELS]).sum())
            n += len(logits)
        model.train(was_training)
        return nll / max(n, 1), hits / max(n, 1)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        nll, acc = self._score(pl_module.model)
        pl_module.log("val/nll", nll)
        if nll < self.best:
            self.best, self.best_step, self.waited = nll, int(trainer.global_step), 0
            self.best_metrics = {"val/nll": round(nll, 5), "val/acc": round(acc, 5)}
            self.state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        else:
            self.waited += 1
            if self.patience and self.waited >= self.patience:
                trainer.should_stop = True

    def restore(self, model: torch.nn.Module) -> bool:
        if self.state is None:
            return False
        model.load_state_dict(self.state)
        return True


def _loader(cells: TokenizedCells, labels, tcfg, mask_ratio: float, pad_id: int) -> ResumableLoader:
    ds = TokenizedDataset(cells, labels=labels, resample=True, seed=tcfg.seed)
    lengths = np.minimum(np.asarray(cells.lengths), cells.config.max_len)
    sampler = LengthBucketSampler(lengths, batch_size=tcfg.batch_size, shuffle=True, seed=tcfg.seed,
                                  bucket_size_multiplier=BUCKET_BATCHES, drop_last=len(cells) > tcfg.batch_size)
    collate = Collator(pad_id=pad_id, mask_ratio=mask_ratio, seed=tcfg.seed)
    return ResumableLoader(ds, sampler, collate, seed=tcfg.seed, num_workers=tcfg.num_workers)


def finetune_config(tcfg, cfg, net):
    """The training config of the classifier fine-tuning: cross-entropy, plus ``cfg.gep_weight`` x (GEP + MVC)."""
    gep = cfg.gep_weight
    return replace(tcfg, gep_weight=gep, mvc_weight=gep if net.mvc_head is not None else 0.0, cls_weight=1.0,
                   ecs_weight=0.0, dab_weight=0.0, mask_ratio=cfg.mask_ratio)


def train_classifier(net, cells: TokenizedCells, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                     class_weights, cfg, tcfg, out_dir) -> dict:
    """Cross-entropy (+ ``cfg.gep_weight`` x GEP/MVC) on ``train_idx``; every ``tcfg.val_every_n_steps`` the
    unmasked ``val_idx`` cells are scored (:class:`BestWeights`), training stops after
    ``tcfg.early_stopping_patience`` scores without improvement and the best weights are restored. ``tcfg`` comes
    from :func:`finetune_config`. Returns a summary for ``Annotator.info``."""
    gep = cfg.gep_weight
    pad = net.vocab.pad_id
    loader = _loader(cells.subset(train_idx), y[train_idx], tcfg, cfg.mask_ratio if gep > 0 else 0.0, pad)
    val = None
    batches: list[dict[str, torch.Tensor]] = []
    if len(val_idx):
        # Validation sees cells as prediction does: unmasked (no MASK key: the loss is the cross-entropy only).
        vds = TokenizedDataset(cells.subset(val_idx), labels=y[val_idx])
        collate = Collator(pad_id=pad)
        for s in range(0, len(val_idx), tcfg.batch_size):
            b = collate([vds[i] for i in range(s, min(s + tcfg.batch_size, len(val_idx)))])
            b.pop(MASK)
            batches.append(b)
        val = DataLoader(batches, batch_size=None)
    best = BestWeights(batches, patience=tcfg.early_stopping_patience)
    # Early stopping is the BestWeights callback's (on the unweighted cross-entropy), not make_trainer's.
    trainer = make_trainer(replace(tcfg, early_stopping_patience=0), out_dir, validate=val is not None,
                           callbacks=[step_seed_callback(tcfg.seed), best, throughput_callback()])
    plan = TrainingPlan(net, tcfg, class_weights=class_weights)
    log.info("annotation: fine-tuning on %d cells (%d held out), %d classes, up to %d steps", len(train_idx),
             len(val_idx), net.config.n_classes, tcfg.max_steps)
    fit(trainer, plan, train_dataloaders=loader, val_dataloaders=val)
    restored = best.restore(net)
    steps = int(trainer.global_step)
    if restored:
        log.info("annotation: lowest held-out cross-entropy %.4f at step %d of %d (weights restored)", best.best,
                 best.best_step, steps)
    return {"steps_run": steps, "stopped_early": steps < tcfg.max_steps, "best_step": best.best_step,
            "best_val": best.best_metrics or None,
            "final_train_loss": _metric(trainer, "train/cls")}


def concat_cells(parts: list[TokenizedCells]) -> TokenizedCells:
    """One :class:`TokenizedCells` of several with the same tokenizer config (cells in order)."""
    if len(parts) == 1:
        return parts[0]
    offsets = [np.asarray([0])]
    shift = 0
    for p in parts:
        offsets.append(p.offsets[1:] + shift)
        shift += int(p.offsets[-1])
    return TokenizedCells(np.concatenate([p.gene_ids for p in parts]), np.concatenate([p.values for p in parts]),
                          np.concatenate(offsets), parts[0].config, cls_id=parts[0].cls_id, seed=parts[0].seed)


def pretrain_expression(net, pool: list[TokenizedCells], cfg, tcfg, out_dir) -> int:
    """``cfg.pretrain_steps`` of GEP + MVC (no labels, no validation) on the cells of ``pool``; returns the steps."""
    tcfg = replace(tcfg, max_steps=cfg.pretrain_steps, gep_weight=1.0,
                   mvc_weight=1.0 if net.mvc_head is not None else 0.0, cls_weight=0.0, ecs_weight=0.0,
                   dab_weight=0.0, mask_ratio=cfg.mask_ratio, early_stopping_patience=0,
                   warmup_steps=min(tcfg.warmup_steps, cfg.pretrain_steps // 5))
    cells = concat_cells(pool)
    loader = _loader(cells, None, tcfg, cfg.mask_ratio, net.vocab.pad_id)
    trainer = make_trainer(tcfg, out_dir, callbacks=[step_seed_callback(tcfg.seed), throughput_callback()])
    log.info("annotation: %d steps of expression pretraining on %d cells (no labels)", tcfg.max_steps, len(cells))
    fit(trainer, TrainingPlan(net, tcfg), train_dataloaders=loader)
    log.info("annotation: pretraining GEP loss %.4f at the end", _metric(trainer, "train/gep") or float("nan"))
    return int(trainer.global_step)


def _metric(trainer, key: str) -> float | None:
    v = trainer.callback_metrics.get(key)
    return None if v is None else round(float(v), 5)


def class_weights(y: np.ndarray, n_classes: int, kind: str):
    """Cross-entropy weights: ``None`` for ``kind="none"``, else inverse class frequencies (``"balanced"``)."""
    if kind == "none":
        return None
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def pretrain_unlabeled(net, cells, unlabeled, genes, cfg, tcfg, query_kwargs: dict, out_dir) -> int:
    """GEP + MVC steps on the reference cells (and ``unlabeled``), no labels."""
    from ..data.prepare import prepare_cells
    from .annotate_predict import match_genes

    pool = [cells]
    if unlabeled is not None:
        sub, _ = match_genes(unlabeled, genes, **query_kwargs,
                             min_overlap=cfg.min_gene_overlap, what="unlabeled data")
        pool.append(net.input_cells(prepare_cells(sub, net.vocab, net.tokenizer_config, purpose="pretrain",
                                                  drop_empty=True, seed=tcfg.seed).cells))
    return pretrain_expression(net, pool, cfg, tcfg, None if out_dir is None else Path(out_dir) / "pretrain")
