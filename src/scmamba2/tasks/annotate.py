"""``scmamba2.annotate``: cell-type annotation from the cell embedding.

:func:`fit_annotator` learns from a labelled reference in one of two ways. By default it starts from the bundled
pretrained models (or ``model=``) and fits a linear probe on their frozen cell embedding (every expressed gene read,
both bundled builds side by side, as :func:`scmamba2.embed` does; :mod:`~scmamba2.tasks._annotate_probe`). With
``config.method="finetune"`` the model gets a classifier head and is fine-tuned; ``from_scratch=True`` fine-tunes a
small new model on the reference's highly variable genes instead. Fine-tuning uses cross-entropy with class weights
against imbalance, early stopping on a stratified held-out split with the best weights kept, an optional
masked-expression (GEP + MVC) regulariser and optional self-supervised pretraining on unlabelled expression first.
Both ways fit a softmax temperature on the held-out reference cells so that the confidence means what it says.
:func:`~scmamba2.tasks.annotate_predict.predict` labels a query; :func:`annotate` does both.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ..data.tokenize import TokenizerConfig
from ..errors import InputError
from ..model import ScMamba2
from ._annotate_model import SMALL_MODEL, adapted, new_model  # noqa: F401 (SMALL_MODEL: the documented default)
from ._annotate_confidence import calibrate_model
from ._annotate_frozen import adapt_encoders, fit_probes
from .annotate_predict import META_FILE, UNKNOWN, Annotator, check_raw, match_genes, predict
from .embed import check_start

log = logging.getLogger(__name__)

__all__ = ["AnnotationConfig", "Annotator", "annotate", "fit_annotator", "predict", "META_FILE", "UNKNOWN"]



@dataclass
class AnnotationConfig:
    """Fine-tuning choices of :func:`fit_annotator`.

    Parameters
    ----------
    method
        ``"probe"``: a linear probe (logistic regression, ``C`` by cross-validation) on the frozen pretrained
        encoder's embedding; ``"finetune"``: a classifier head trained with the encoder; ``"auto"``: the probe
        for a pretrained model, fine-tuning for a new one (``from_scratch``). Chosen on the pbmc3k and Kang
        references' own held-out tenth (benchmarks/results/annotate.md).
    class_weight
        ``"balanced"``: class weights ``n / (n_classes * n_c)`` from the training cells (rare types count as much
        as common ones, which is what macro-F1 rewards); ``"none"``: unweighted; ``"auto"``: balanced for
        fine-tuning, none for the probe (what scored higher on the references' held-out split).
    gep_weight
        Weight of the masked-expression losses (GEP and MVC, ``mask_ratio`` of each cell's values hidden) added
        to the cross-entropy while fine-tuning; 0 switches them off (the classifier then sees unmasked cells).
    mask_ratio
        Fraction of values hidden for GEP/MVC (fine-tuning regulariser and ``pretrain_steps``).
    pretrain_steps
        Self-supervised steps (no labels) on the reference's expression, plus the query's when :func:`annotate`
        is given one (transductive self-supervision), before the classifier is trained. Fine-tuning: GEP + MVC.
        The probe: each pretrained model's own objective (its whole-profile decoder, the quickstart's fine-tune:
        batch 32, lr 1e-3; :func:`scmamba2.pretrain` with ``init_model``), after which its encoder is frozen. 200
        steps with the default model alone: the references' held-out macro-F1 pbmc3k 0.832 -> 0.833, Kang 0.778 ->
        0.778 (queries 0.904 -> 0.910, 0.794 -> 0.785) at ~3x the CPU time: within noise, so off by default
        (benchmarks/results/annotate.md, which also has the row for the default's two builds).
    val_fraction
        Fraction of each class held out (stratified, seeded) for early stopping, the best weights and the
        temperature; a class with fewer than 2 cells stays in training.
    calibrate
        Fit the softmax temperature on the validation cells (else 1).
    outlier_tail
        Typicality of a cell's embedding for its predicted class (:mod:`~scmamba2.tasks._annotate_typicality`):
        1 within the central ``1 - outlier_tail`` of the reference cells, falling towards 0 beyond; the
        confidence is the class probability times it. 0 switches it off (confidence = probability).
    min_gene_overlap
        Smallest accepted gene overlap: of the annotator's genes in the query; for a pretrained model, of the
        model's vocabulary in the reference or of the reference's genes in the vocabulary (the larger).
    probe_folds
        Folds of the stratified cross-validation that chooses the probe's ``C`` (on the training cells only).
    gene_weight
        The probe only: weight of a gene-level classifier (L1 logistic regression on the log-normalised
        expression of the reference's ``gene_top_genes`` most variable genes, ``C`` by the same cross-validation;
        :mod:`~scmamba2.tasks._annotate_genes`) in the average of its class probabilities and the probe's; 0: the
        probe alone. 0.5 scored a higher cross-validated macro-F1 on the pbmc3k and Kang references than the probe
        and than the gene classifier alone (benchmarks/results/annotate.md).
    gene_top_genes
        Highly variable genes the gene-level classifier reads.
    refit
        The probe only: once the temperature is fitted on the held-out cells, fit the probe and the gene-level
        classifier again on every reference cell with the ``C`` each chose (as scikit-learn's ``refit`` does
        after a search); the gene classifier's variable genes are chosen again on every cell. Off by default:
        it did not raise the benchmark's query macro-F1 (benchmarks/results/annotate.md). The temperature
        and the held-out scores in ``info`` stay those of the nine-tenths fit; nothing is refitted when
        ``val_fraction`` is 0 (every cell is then a training cell already).
    """

    method: Literal["auto", "probe", "finetune"] = "auto"
    class_weight: Literal["auto", "balanced", "none"] = "auto"
    gep_weight: float = 0.0
    mask_ratio: float = 0.4
    pretrain_steps: int = 0
    val_fraction: float = 0.1
    calibrate: bool = True
    outlier_tail: float = 0.05
    min_gene_overlap: float = 0.5
    probe_folds: int = 5
    gene_weight: float = 0.5
    gene_top_genes: int = 2000
    refit: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("auto", "probe", "finetune"):
            raise ValueError(f"method must be 'auto', 'probe' or 'finetune', not {self.method!r}")
        if self.class_weight not in ("auto", "balanced", "none"):
            raise ValueError(f"class_weight must be 'auto', 'balanced' or 'none', not {self.class_weight!r}")
        if self.probe_folds < 2:
            raise ValueError(f"probe_folds={self.probe_folds} must be at least 2")
        if self.gep_weight < 0 or self.pretrain_steps < 0:
            raise ValueError("gep_weight and pretrain_steps must be >= 0")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in (0, 1)")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 0.5)")
        if not 0.0 <= self.outlier_tail < 1.0:
            raise ValueError(f"outlier_tail={self.outlier_tail} must be in [0, 1)")
        if not 0.0 <= self.gene_weight <= 1.0 or self.gene_top_genes < 1:
            raise ValueError(f"gene_weight={self.gene_weight} must be in [0, 1] and gene_top_genes >= 1")
        if not 0.0 <= self.min_gene_overlap <= 1.0:
            raise ValueError(f"min_gene_overlap={self.min_gene_overlap} must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_train_config(**changes):
    """The :class:`~scmamba2.train.config.TrainConfig` used when none is given: 1000 steps of 32 cells, lr 3e-3,
    the held-out cells scored every 50 steps, stop after 6 scores without a lower held-out cross-entropy."""
    from ..train.config import TrainConfig

    base = dict(max_steps=1000, batch_size=32, lr=3e-3, warmup_steps=50, val_every_n_steps=50,
                early_stopping_patience=6)
    return TrainConfig(**{**base, **changes})


def reference_labels(reference, label_key: str) -> tuple[list[str], np.ndarray]:
    """Sorted class names and each cell's class index (-1 for a missing label); a clear error on a bad column."""
    if label_key not in reference.obs:
        raise InputError(f"label_key {label_key!r} is not an obs column of the reference; available: "
                         f"{list(reference.obs.columns)}")
    from ..data.validate import looks_continuous

    col = reference.obs[label_key]
    missing = col.isna().to_numpy()
    values = col.astype(object).where(~missing, None).to_numpy()
    classes = sorted({str(v) for v in values[~missing]})
    if len(classes) < 2:
        raise InputError(f"obs[{label_key!r}] has {len(classes)} class(es) among the labelled cells: a classifier "
                         "needs at least two")
    n_labelled = int((~missing).sum())
    if looks_continuous(col, len(classes), n_labelled):
        raise InputError(f"obs[{label_key!r}] looks like a continuous value, not cell types: {len(classes):,} "
                         f"distinct values among {n_labelled:,} labelled cells (e.g. {', '.join(classes[:3])}). "
                         "Give --label-key (label_key=) a column of categories such as 'cell_type'; columns: "
                         f"{list(reference.obs.columns)}.")
    index = {c: i for i, c in enumerate(classes)}
    codes = np.array([-1 if m else index[str(v)] for v, m in zip(values, missing)], dtype=np.int64)
    return classes, codes


def stratified_split(codes: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) positions: ``round(val_fraction * n_c)`` cells of each class (at least one when the
    class has 2 or more cells and ``val_fraction > 0``), chosen by a seeded generator."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(codes):
        idx = np.flatnonzero(codes == c)
        n_val = int(round(val_fraction * len(idx)))
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.extend(rng.choice(idx, n_val, replace=False).tolist() if n_val else [])
    val = np.sort(np.asarray(val, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(codes)), val)
    return train, val


def fit_annotator(
    reference,
    label_key: str,
    *,
    model: ScMamba2 | str | Path | Sequence[ScMamba2 | str | Path] | None = None,
    from_scratch: bool = False,
    unlabeled=None,
    config: AnnotationConfig | None = None,
    train_config=None,
    epochs: float | None = None,
    model_config: dict | None = None,
    tokenizer_config: TokenizerConfig | None = None,
    n_top_genes: int | None = 2000,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
    out_dir: str | Path | None = None,
    device: str | None = None,
    query=None,
    query_options: dict | None = None,
) -> Annotator:
    """Learn a cell-type classifier from a labelled reference: a linear probe on a pretrained model's frozen
    embedding (the default), or fine-tuning.

    Parameters
    ----------
    reference
        Cells x genes with raw counts (or log-normalised values) in ``X``, ``layers[layer]`` or ``raw``.
    label_key
        ``obs`` column of the cell types. Cells whose label is missing (NaN) are left out of training, with
        their number logged and recorded in ``info``.
    model
        A pretrained :class:`~scmamba2.ScMamba2`, checkpoint directory or bundled model's name to start from. It
        keeps its vocabulary; the reference's genes are mapped onto it (``info["gene_overlap"]``). With the probe
        its encoder stays frozen and reads every expressed gene of a cell; fine-tuning gives it a new classifier
        head (:meth:`~scmamba2.ScMamba2.adapt`) and keeps its tokenizer. The probe also takes a list of models
        sharing one vocabulary and tokenizer, whose embeddings it reads side by side (as :func:`scmamba2.embed`
        does). None or ``"bundled"``: for the probe, the bundled default embedding (both bundled builds side by
        side, :data:`scmamba2.pretrained.DEFAULT_EMBEDDING`: a higher mean cross-validated macro-F1 over the pbmc3k
        and Kang references than the default model alone, higher on pbmc3k and level on Kang,
        benchmarks/results/annotate_pair.md); for fine-tuning, the default model ``scmamba2-pbmc-small``.
    from_scratch
        Fine-tune a small new model (``SMALL_MODEL`` updated by ``model_config``, ``tokenizer_config``) on the
        reference's ``n_top_genes`` most variable genes instead of starting from a pretrained one.
    unlabeled
        Cells used without labels by ``config.pretrain_steps`` (e.g. the query: transductive self-supervision).
    config
        :class:`AnnotationConfig` (probe or fine-tuning, class weights, GEP regulariser, pretraining, validation,
        calibration).
    train_config
        :class:`~scmamba2.train.config.TrainConfig` (steps, batch size, lr, seed, ``val_every_n_steps``,
        ``early_stopping_patience``); its loss weights are set from ``config``. Default:
        :func:`default_train_config`. The probe uses only its ``seed`` (held-out split, cross-validation folds).
    epochs
        If given, the number of fine-tuning steps is ``ceil(epochs * training cells / batch size)``.
    model_config, tokenizer_config, n_top_genes
        The new model of ``from_scratch``; tokenizer default ``TokenizerConfig(max_len=256,
        value_mode="continuous")``.
    out_dir
        Save the annotator there (:meth:`Annotator.save`) with the training logs.
    device
        Torch device for the temperature fit; training follows ``train_config.accelerator``.
    query
        The cells to be labelled afterwards, if known: their genes are checked against the model's before
        training (an :class:`~scmamba2.InputError` now rather than after the training).
    query_options
        ``layer`` / ``use_raw`` / ``gene_column`` of ``query`` and ``unlabeled`` where they differ from the
        reference's (e.g. ``{"use_raw": True}`` for a query with its counts in ``.raw``); None: the reference's.

    Raises
    ------
    InputError
        A bad label column, too small a gene overlap, or options that do not go together (``model`` with
        ``from_scratch``; ``model_config`` / ``tokenizer_config`` without it; the probe with ``from_scratch``,
        ``gep_weight``; ``pretrain_steps`` with a model without a whole-profile decoder; several models with
        fine-tuning, or side by side with another vocabulary or tokenizer).
    """
    import lightning.pytorch as pl

    from .._malloc import tune_cpu_allocator
    from ..data.prepare import prepare_cells

    tune_cpu_allocator()
    cfg = config or AnnotationConfig()
    tcfg = train_config or default_train_config()
    method = _method(cfg, model, from_scratch, model_config, tokenizer_config)
    classes, codes = reference_labels(reference, label_key)
    n_missing = int((codes < 0).sum())
    if n_missing:
        log.warning("%d of %d reference cells have no label in obs[%r] and are left out of training", n_missing,
                    len(codes), label_key)
    labelled = reference[codes >= 0] if n_missing else reference
    codes = codes[codes >= 0]
    qkw = _query_kwargs(layer, use_raw, gene_column, query_options)
    check_raw(reference, use_raw, "reference", "use_raw=True (--use-raw)")
    # The option that read the query's .raw: its own, or the reference's when query_options leave it out.
    query_raw = ("query_options={'use_raw': True} (--query-use-raw)" if "use_raw" in (query_options or {}) else
                 "use_raw=True (--use-raw, which the query follows unless query_options / --query-use-raw, "
                 "--query-no-raw say otherwise)")
    for other, what in ((query, "query"), (unlabeled, "unlabeled data")):
        if other is not None:
            check_raw(other, qkw["use_raw"], what, query_raw)

    pl.seed_everything(tcfg.seed, workers=True, verbose=False)
    bases = [] if from_scratch else _start_models(model, method)
    base = bases[0] if bases else None
    if base is None:
        net, genes = new_model(labelled, len(classes), model_config, tokenizer_config, n_top_genes, layer,
                                use_raw, gene_column)
    else:
        net, genes = adapted(base, labelled, len(classes), layer, use_raw, gene_column, cfg.min_gene_overlap,
                              probe=method == "probe")
    for other, what in ((query, "query"), (unlabeled if unlabeled is not query else None, "unlabeled data")):
        if other is not None:  # every gene check before any training
            match_genes(other, genes, **qkw, min_overlap=cfg.min_gene_overlap, what=what,
                        raw_hint="query_options={'use_raw': True} / --query-use-raw")
    side = [adapted(b, labelled, len(classes), layer, use_raw, gene_column, 0.0, probe=True)[0] for b in bases[1:]]
    if base is not None and method == "probe" and cfg.pretrain_steps:  # the adapted models keep their vocabulary
        bases = adapt_encoders(bases, labelled, unlabeled, cfg.pretrain_steps, tcfg.seed,
                               {"layer": layer, "use_raw": use_raw, "gene_column": gene_column}, qkw)
        net, genes = adapted(bases[0], labelled, len(classes), layer, use_raw, gene_column, cfg.min_gene_overlap,
                             probe=True)
        side = [adapted(b, labelled, len(classes), layer, use_raw, gene_column, 0.0, probe=True)[0]
                for b in bases[1:]]
    sub, ref_overlap = match_genes(labelled, genes, layer=layer, use_raw=use_raw, gene_column=gene_column,
                                   min_overlap=0.0, what="reference")
    tok = net.tokenizer_config
    prepared = prepare_cells(sub, net.vocab, tok, purpose="finetune", drop_empty=True, seed=tcfg.seed)
    cells, y = net.input_cells(prepared.cells), codes[prepared.obs_index]
    counts = np.bincount(y, minlength=len(classes))
    if (counts == 0).any():
        gone = [c for c, n in zip(classes, counts) if n == 0]
        raise InputError(f"no reference cell of class(es) {gone} has an expressed gene of the model: check the data")
    rare = [f"{c} ({n})" for c, n in zip(classes, counts) if n < 10]
    if rare:
        log.warning("classes with fewer than 10 reference cells: %s; expect a poor F1 for them", ", ".join(rare))

    train_idx, val_idx = stratified_split(y, cfg.val_fraction, tcfg.seed)
    info = {"n_reference_cells": int(reference.n_obs), "n_unlabeled_dropped": n_missing,
            "n_empty_dropped": int(prepared.n_empty), "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
            "class_counts": {c: int(n) for c, n in zip(classes, counts)}, "gene_overlap": ref_overlap,
            "method": method, "config": cfg.to_dict(), "from_pretrained": base is not None,
            **({"pretrain_steps": cfg.pretrain_steps, "n_models_side_by_side": len(bases)}
               if method == "probe" and base is not None else {})}
    if method == "probe":
        expr = None
        if cfg.gene_weight > 0:  # the gene-level classifier reads the same cells
            from ._annotate_genes import log_normalised

            expr = log_normalised(labelled[prepared.obs_index], layer=layer, use_raw=use_raw, gene_column=gene_column)
        probe, gene_probe, temperature, typicality, fit = fit_probes([net, *side], cells, y, train_idx, val_idx,
                                                                    len(classes), cfg, tcfg.seed, device, expr)
        ann = Annotator(model=net.eval(), classes=classes, genes=genes, label_key=label_key,
                        temperature=temperature, typicality=typicality, info={**info, **fit}, probe=probe,
                        gene_probe=gene_probe, gene_weight=cfg.gene_weight if gene_probe is not None else 0.0,
                        side_models=[m.eval() for m in side])
        if out_dir is not None:
            ann.save(out_dir)
            log.info("annotator saved to %s", out_dir)
        return ann
    if epochs is not None:
        tcfg = replace(tcfg, max_steps=max(1, math.ceil(epochs * len(train_idx) / tcfg.batch_size)))
    from ._annotate_train import class_weights, finetune_config, pretrain_unlabeled, train_classifier

    kind = "balanced" if cfg.class_weight == "auto" else cfg.class_weight
    weights = class_weights(y[train_idx], len(classes), kind)
    steps_pretrained = 0
    if cfg.pretrain_steps:
        steps_pretrained = pretrain_unlabeled(net, cells, unlabeled, genes, cfg, tcfg, qkw, out_dir)
    tcfg = finetune_config(tcfg, cfg, net)
    fit = train_classifier(net, cells, y, train_idx, val_idx, weights, cfg, tcfg, out_dir)
    temperature, typicality, val_scores = calibrate_model(net, cells, y, train_idx, val_idx, len(classes), cfg, device)
    info.update({"class_weights": None if weights is None else [round(float(w), 4) for w in weights],
                 "pretrain_steps": steps_pretrained, "train": tcfg.to_dict(), **fit, **val_scores})
    ann = Annotator(model=net.eval(), classes=classes, genes=genes, label_key=label_key, temperature=temperature,
                    typicality=typicality, info=info)
    if out_dir is not None:
        ann.save(out_dir)
        log.info("annotator saved to %s", out_dir)
    return ann


def annotate(
    reference,
    query,
    *,
    label_key: str,
    model: ScMamba2 | str | Path | Sequence[ScMamba2 | str | Path] | None = None,
    from_scratch: bool = False,
    threshold: float | None = None,
    key_added: str = "scmamba2",
    config: AnnotationConfig | None = None,
    train_config=None,
    epochs: float | None = None,
    model_config: dict | None = None,
    tokenizer_config: TokenizerConfig | None = None,
    n_top_genes: int | None = 2000,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
    out_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    copy: bool = False,
    query_options: dict | None = None,
):
    """Learn cell types from a labelled ``reference`` and label the cells of ``query``.

    :func:`fit_annotator` (with the query as ``unlabeled`` data when ``config.pretrain_steps > 0``: its
    expression, never labels) followed by :func:`~scmamba2.tasks.annotate_predict.predict`. The parameters are
    theirs; ``layer``, ``use_raw`` and ``gene_column`` apply to both data sets, ``query_options`` (e.g.
    ``{"use_raw": True}``) overrides them for the query.

    Writes
    ------
    ``query.obs[key_added + '_label']``, ``query.obs[key_added + '_confidence']``,
    ``query.obsm[key_added + '_probs']``, ``query.uns[key_added + '_annotation']``
        See :func:`~scmamba2.tasks.annotate_predict.predict`; ``uns`` also holds the training summary under
        ``training``.
    """
    cfg = config or AnnotationConfig()
    ann = fit_annotator(reference, label_key, model=model, from_scratch=from_scratch,
                        unlabeled=query if cfg.pretrain_steps else None, config=cfg, train_config=train_config,
                        epochs=epochs, model_config=model_config, tokenizer_config=tokenizer_config,
                        n_top_genes=n_top_genes, layer=layer, use_raw=use_raw, gene_column=gene_column,
                        out_dir=out_dir, device=device, query=query, query_options=query_options)
    query = query.copy() if copy else query
    predict(query, ann, threshold=threshold, key_added=key_added, min_gene_overlap=cfg.min_gene_overlap,
            **_query_kwargs(layer, use_raw, gene_column, query_options), device=device, progress=progress)
    info = {k: v for k, v in ann.info.items() if k not in ("config", "train", "class_weights", "gene_overlap")}
    query.uns[f"{key_added}_annotation"]["training"] = {k: v for k, v in info.items() if v is not None}
    return query if copy else None


# --------------------------------------------------------------------------------------------------- helpers


def _method(cfg: AnnotationConfig, model, from_scratch: bool, model_config, tokenizer_config) -> str:
    """``"probe"`` or ``"finetune"``; an :class:`InputError` for options that do not go together."""
    check_start(model, from_scratch, model_config, tokenizer_config)
    method = cfg.method if cfg.method != "auto" else ("finetune" if from_scratch else "probe")
    if method == "probe" and from_scratch:
        raise InputError("a linear probe reads a pretrained encoder; a new model (from_scratch) must be fine-tuned: "
                         "use method='finetune' or leave out from_scratch")
    if method == "probe" and cfg.gep_weight:
        raise InputError("gep_weight regularises fine-tuning; the linear probe keeps the encoder frozen: use "
                         "method='finetune' (--method finetune) with it")
    return method


def _start_models(model, method: str) -> list[ScMamba2]:
    """The pretrained models annotation starts from. The probe: the bundled default embedding's builds side by side
    (``model`` None or ``"bundled"``), each model of a list, or the one model given; they must share one vocabulary
    and tokenizer. Fine-tuning: one model (None: the bundled default model)."""
    from .embed import embedding_models, load_model

    if method != "probe":
        if isinstance(model, (list, tuple)) and len(model) != 1:
            raise InputError("fine-tuning trains one model: give one --model (model=), or use the linear probe "
                             "(method='probe') to read several side by side")
        return [load_model(model[0] if isinstance(model, (list, tuple)) else model)]
    from ._annotate_probe import whole_cell_tokenizer

    names, models = embedding_models(model)
    first = whole_cell_tokenizer(models[0])  # the probe reads every expressed gene of a cell
    for name, m in zip(names[1:], models[1:]):
        if m.vocab.tokens != models[0].vocab.tokens or whole_cell_tokenizer(m) != first:
            raise InputError(f"{name} reads cells with another vocabulary or tokenizer than {names[0]}: the probe "
                             "reads models side by side only when they share both; annotate with one of them")
    return models


def _query_kwargs(layer, use_raw: bool, gene_column, options: dict | None) -> dict:
    """``layer`` / ``use_raw`` / ``gene_column`` for the query: the reference's, updated by ``options``. The
    matrix is chosen as a whole: options that name a layer read it (not ``.raw``), ``use_raw=True`` reads ``.raw``
    (no layer), ``layer=None`` with ``use_raw`` left out reads ``X``."""
    options = dict(options or {})
    unknown = set(options) - {"layer", "use_raw", "gene_column"}
    if unknown:
        raise InputError(f"query_options takes layer, use_raw and gene_column, not {sorted(unknown)}")
    out = {"layer": layer, "use_raw": use_raw, "gene_column": gene_column}
    if "layer" in options or "use_raw" in options:  # the query's matrix is its own choice, not half the reference's
        out.update(layer=None, use_raw=False)
    out.update(options)
    return out
