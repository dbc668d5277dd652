"""Confidence of an annotation: the softmax temperature fitted on the reference's held-out cells and the
embedding typicality (:mod:`~scmamba2.tasks._annotate_typicality`), with the held-out scores."""

from __future__ import annotations

import logging

from ..eval.classification import classification_metrics
from ._annotate_typicality import Typicality
from .annotate_predict import class_logits, fit_temperature

log = logging.getLogger(__name__)


def calibrate_model(net, cells, y, train_idx, val_idx, n_classes: int, cfg, device):
    """:func:`calibration` of the fine-tuned model's logits."""
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    logits, emb = class_logits(net.to(dev), cells, device=dev)
    net.cpu()
    return calibration(logits, emb, y, train_idx, val_idx, n_classes, cfg)


def calibration(logits, emb, y, train_idx, val_idx, n_classes: int, cfg):
    """The softmax temperature (fitted on the held-out cells), the embedding typicality (centroids and covariance
    from the training cells; distances calibrated on every reference cell at its predicted class: the held-out
    cells alone are too few for a 5% tail, e.g. 24 in a 240-cell reference) and the held-out scores."""
    temperature = fit_temperature(logits[val_idx], y[val_idx]) if cfg.calibrate and len(val_idx) else 1.0
    typicality = None
    if cfg.outlier_tail > 0:
        typicality = Typicality.fit(emb[train_idx], y[train_idx], n_classes, emb, logits.argmax(1),
                                    tail=cfg.outlier_tail)
    scores = {}
    if len(val_idx):
        m = classification_metrics(y[val_idx], logits[val_idx].argmax(1))  # classes with held-out cells
        scores = {"val_accuracy": round(m["accuracy"], 4), "val_macro_f1": round(m["macro_f1"], 4)}
        log.info("annotation: held-out reference cells: accuracy %.3f, macro-F1 %.3f", m["accuracy"], m["macro_f1"])
    return temperature, typicality, scores
