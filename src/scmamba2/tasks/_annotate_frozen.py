"""The frozen-encoder path of annotation: the linear probe on the pretrained embedding (averaged with the
gene-level classifier), its calibration, and the optional self-supervised adaptation of the encoder before it.
Used by :func:`scmamba2.tasks.annotate.fit_annotator`."""

from __future__ import annotations

import logging

from ..errors import InputError
from ._annotate_confidence import calibration
from ._annotate_genes import fit_gene_probe, mix
from ._annotate_probe import fit_probe
from ._annotate_typicality import Typicality
from .annotate_predict import side_by_side
from .embed import _readout_metric

log = logging.getLogger(__name__)


def fit_probes(nets, cells, y, train_idx, val_idx, n_classes: int, cfg, seed: int, device, expr=None):
    """The linear probe on the frozen embedding of the training cells (of the models ``nets`` side by side), with
    the gene-level classifier on ``expr`` (log-normalised matrix, gene names) when ``cfg.gene_weight > 0``, then
    calibration on the held-out cells."""
    import numpy as np
    import torch
    from scipy.linalg import block_diag
    from threadpoolctl import threadpool_limits

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    emb = side_by_side(nets, cells, device=dev)
    for net in nets:
        net.cpu()
    metrics = [_readout_metric(net, None) for net in nets]
    metric = None if all(m is None for m in metrics) else block_diag(*[  # each model's readout on its own columns
        np.eye(net.config.d_model) if m is None else m.double().numpy() for net, m in zip(nets, metrics)])
    # One BLAS thread: the choice of C compares cross-validated scores that can tie to the fourth decimal, and
    # the thread count changes the sums (pbmc3k: C 0.316 with two threads, 0.1 with one), so the result would
    # depend on the machine.
    with threadpool_limits(1):
        kind = "none" if cfg.class_weight == "auto" else cfg.class_weight
        probe, fit = fit_probe(emb[train_idx], y[train_idx], n_classes, class_weight=kind, folds=cfg.probe_folds,
                               metric=metric, seed=seed)
        gene_probe = None
        if expr is not None:
            X, names = expr
            gene_probe, gfit = fit_gene_probe(X[train_idx], names, y[train_idx], n_classes, n_top_genes=cfg.gene_top_genes,
                                              folds=cfg.probe_folds, seed=seed)
            fit.update(gfit)
        logits = probe_logits(probe, gene_probe, emb, expr, cfg.gene_weight)
        temperature, typicality, scores = calibration(logits, emb, y, train_idx, val_idx, n_classes, cfg)
        if cfg.refit and len(val_idx):  # the chosen C's on every reference cell; the temperature stays the held-out one
            probe, _ = fit_probe(emb, y, n_classes, class_weight=kind, folds=cfg.probe_folds, seed=seed, C=probe.C,
                                 metric=metric)
            if gene_probe is not None:
                gene_probe, gfit = fit_gene_probe(X, names, y, n_classes, n_top_genes=cfg.gene_top_genes, seed=seed,
                                                  C=gene_probe.C)
                fit["refit_gene_probe_genes_used"] = gfit["gene_probe_genes_used"]
            if typicality is not None:
                logits = probe_logits(probe, gene_probe, emb, expr, cfg.gene_weight)
                typicality = Typicality.fit(emb, y, n_classes, emb, logits.argmax(1), tail=cfg.outlier_tail)
            fit["refit_cells"] = int(len(y))
    return probe, gene_probe, temperature, typicality, {"steps_run": 0, "class_weight": kind, **fit, **scores}


def probe_logits(probe, gene_probe, emb, expr, gene_weight: float):
    """The probe's logits, mixed with the gene probe's probabilities when there is one."""
    logits = probe(emb)
    if gene_probe is None:
        return logits
    X, names = expr
    return mix(logits, gene_probe.proba(gene_probe.select(X, names)), gene_weight)


def adapt_encoders(bases, reference, unlabeled, steps: int, seed: int, ref_kwargs: dict, query_kwargs: dict):
    """Each of ``bases`` fine-tuned with its own self-supervised objective on the reference's (and ``unlabeled``)
    cells for ``steps`` steps (the quickstart's recipe), for the probe; the models given are not changed. Every
    check runs before the first model trains."""
    from ..data.io import select_matrix
    from ..data.validate import validate
    from ..quickstart import TRAIN
    from ..train.config import TrainConfig
    from ..train.pretrain import pretrain

    for i, base in enumerate(bases):
        if base.profile_head is None:
            which = "the model" if len(bases) == 1 else f"model {i + 1} of the {len(bases)} read side by side"
            raise InputError(f"pretrain_steps with the probe fine-tunes the model's whole-profile decoder, which "
                             f"{which} has not: use method='finetune' (--method finetune) for its GEP + MVC steps")
    parts = [select_matrix(reference, **ref_kwargs)]
    if unlabeled is not None:
        parts.append(select_matrix(unlabeled, **query_kwargs))
    kinds = [validate(p, raise_on_error=False).value_kind for p in parts]  # pooled, they are read as one kind
    if len({"raw_counts" if k == "raw_counts" else "normalised" for k in kinds}) > 1:
        raise InputError(f"pretrain_steps pools the reference ({kinds[0]}) and the query ({kinds[1]}) for "
                         "self-supervised steps, so both must hold the same kind of values: give both raw counts "
                         "(layer= / use_raw=, query_options=) or both log-normalised values")
    tcfg = TrainConfig(**{**TRAIN, "max_steps": steps, "val_every_n_steps": steps, "seed": seed,
                          "progress_bar": False})
    log.info("pretrain_steps: %d self-supervised steps of each of %d model(s) on %s before the probe", steps,
             len(bases), "reference + query cells" if unlabeled is not None else "the reference cells")
    return [pretrain(parts, init_model=base, train_config=tcfg).model.eval() for base in bases]
