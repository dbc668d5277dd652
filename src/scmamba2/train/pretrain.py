"""``scmamba2.pretrain``: masked-expression pretraining of a new model on one or more AnnData objects."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import DataLoader

from ..data.collate import Collator, LengthBucketSampler, TokenizedDataset
from ..data.files import write_json
from ..data.io import select_matrix
from ..data.panel import training_panel
from ..data.prepare import prepare_cells
from ..data.tokenize import TokenizerConfig
from ..data.vocab import GeneVocab
from .._malloc import tune_cpu_allocator
from ..model import ModelConfig, ScMamba2
from ..errors import CheckpointError, InputError
from .checkpoint import check_fits, last_checkpoint_path, read_checkpoint
from .config import TrainConfig
from .resume import (ResumableLoader, check_resume, check_weight_average, keep_metrics, loader_state,
                     restore_metrics, step_seed_callback)
from .throughput import throughput_callback

log = logging.getLogger(__name__)

# Genes in the panel of the whole-profile objective, by default (fewer when fewer qualify).
DEFAULT_PROFILE_GENES = 2000


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns."""

    model: ScMamba2
    out_dir: Path | None
    val_start: dict[str, float]  # held-out losses before training (val/gep, val/profile, ...), with the
    val_end: dict[str, float]  # per-gene-mean references (val/gep_gene_mean, val/profile_gene_mean); after
    n_train_cells: int
    n_val_cells: int

    @property
    def val_loss_start(self) -> float | None:
        """The main held-out loss before training (profile when the model has the profile decoder, else GEP)."""
        return _main_loss(self.val_start)

    @property
    def val_loss_end(self) -> float | None:
        """... and after training."""
        return _main_loss(self.val_end)


def _main_loss(losses: dict[str, float]) -> float | None:
    for k in ("val/profile", "val/gep"):
        if k in losses:
            return float(losses[k])
    return None


def _load_init(init_model, model_config, tokenizer_config, vocab):
    """The model a fine-tune starts from (None for a new model); refuses settings that would contradict it."""
    if init_model is None:
        return None
    given = [k for k, v in (("model_config", model_config), ("tokenizer_config", tokenizer_config),
                            ("vocab", vocab)) if v is not None]
    if given:
        raise InputError(f"A fine-tune keeps the architecture, tokenizer and vocabulary of the model it starts "
                         f"from: leave out {', '.join(given)} (or drop init_model to pretrain a new model).")
    from ..tasks.embed import load_model

    init = load_model(init_model)  # a model, a checkpoint directory or "bundled"
    if init.vocab is None or init.tokenizer_config is None:
        raise CheckpointError("the model to fine-tune has no vocabulary or tokenizer config attached; load it with "
                              "ScMamba2.from_pretrained")
    return init


def check_order(tok: TokenizerConfig, tcfg: TrainConfig) -> None:
    """Refuse expression-sorted tokens with a masked-value loss: the order tells the model the hidden value."""
    if tok.gene_order == "expression" and (tcfg.gep_weight > 0 or tcfg.mvc_weight > 0):
        raise InputError(
            "gene_order='expression' sorts each cell's genes by value, so a masked value can be read off its "
            "neighbours (held-out GEP loss 68 -> 1.7 on pbmc3k without learning anything about the cell). Use "
            "gene_order='vocab' or 'random' with the masked-value losses, or set gep_weight=0 and mvc_weight=0 "
            "(the whole-profile objective does not read token values at masked positions)."
        )


def gene_value_means(cells, vocab_size: int):
    """``(vocab_size,)`` mean stored value of each gene over ``cells`` (0 for genes without tokens)."""
    import torch

    total = np.bincount(cells.gene_ids, weights=cells.values, minlength=vocab_size)
    count = np.bincount(cells.gene_ids, minlength=vocab_size)
    return torch.from_numpy((total / np.maximum(count, 1)).astype(np.float32))


def report_losses(start: dict[str, float], end: dict[str, float]) -> None:
    """Log each held-out expression loss before and after training next to its per-gene-mean reference."""
    for name, ref in (("profile", "profile_gene_mean"), ("gep", "gep_gene_mean"), ("mvc", "gep_gene_mean")):
        if f"val/{name}" in end:
            log.info("held-out %s loss: %.4f before training, %.4f after; predicting per-gene means scores %s",
                     name, start.get(f"val/{name}", float("nan")), end[f"val/{name}"],
                     f"{end[f'val/{ref}']:.4f}" if f"val/{ref}" in end else "n/a")


def fit_resumable(plan, tcfg: TrainConfig, out: Path | None, *, resume: bool, train_loader, val_batches):
    """Train ``plan`` (a :class:`~scmamba2.train.plan.TrainingPlan`) with validation before and after.

    ``resume`` continues the run whose last checkpoint is in ``out`` (checked against the plan first, a clear
    :class:`CheckpointError` when it is missing or does not fit); its logged metrics up to that step are kept.
    Returns ``(trainer, val_start, val_end)``; both validations are None without ``val_batches``. The model is
    left in eval mode.
    """
    from .trainer import fit, make_trainer, stopped_by_sigterm

    ckpt_path, kept_metrics, resume_step, ckpt = None, [], 0, None
    if resume:
        if out is None:
            raise CheckpointError("resume=True needs the out_dir of the run to continue")
        ckpt_path = last_checkpoint_path(out)
        ckpt = read_checkpoint(ckpt_path)  # a clear CheckpointError when missing, truncated or corrupt
        resume_step = int(ckpt["global_step"])
        kept_metrics = keep_metrics(out, resume_step)
    elif out is not None and last_checkpoint_path(out).is_file():
        log.warning("%s holds the checkpoint of an earlier run; this new run replaces it (resume=True continues "
                    "it instead)", last_checkpoint_path(out))
    if ckpt is not None:  # every check before the trainer exists: its logger would empty the run's metrics.csv
        check_fits(ckpt, plan, ckpt_path)
        check_weight_average(ckpt, tcfg, ckpt_path)
        state = loader_state(ckpt)
        one_process = str(tcfg.devices) == "1" and int(tcfg.num_nodes) == 1  # a loader's layout counts the processes
        if state and one_process and hasattr(train_loader, "load_state_dict"):
            train_loader.load_state_dict(state)  # the data order's check (Lightning restores it again)
        del ckpt
        log.info("resuming from %s (step %d)", ckpt_path, resume_step)
    from ._lightning_parts import LastValidation

    last_val = LastValidation()
    trainer = make_trainer(tcfg, out, validate=val_batches is not None, tensorboard=True,
                           callbacks=[step_seed_callback(tcfg.seed), throughput_callback(), last_val])

    def hint() -> str | None:
        if out is None:
            return None
        if last_checkpoint_path(out).is_file():
            return f"its last checkpoint is in {out}: continue the run with --resume (resume=True)"
        return "no checkpoint was written yet, so the run cannot be resumed: start it again (--overwrite)"

    val_start = val_end = None
    if val_batches is not None:
        with stopped_by_sigterm(trainer, hint):
            val_start = trainer.validate(plan, val_batches, verbose=False)[0]
    fit(trainer, plan, resume_hint=hint, train_dataloaders=train_loader, val_dataloaders=val_batches,
        ckpt_path=None if ckpt_path is None else str(ckpt_path))
    if val_batches is not None:
        if last_val.step == trainer.global_step and last_val.metrics:  # fit's last step was validated (and logged)
            val_end = last_val.metrics
        else:
            with stopped_by_sigterm(trainer, hint):
                val_end = trainer.validate(plan, val_batches, verbose=False)[0]
        report_losses(val_start, val_end)
    if ckpt_path is not None and trainer.is_global_zero:
        restore_metrics(out, kept_metrics, resume_step)  # the CSV logger started a new file
    plan.model.eval()
    return trainer, val_start, val_end


def _concat(adatas: Sequence):
    import anndata as ad

    if len(adatas) == 1:
        return adatas[0]
    # An outer join fills unmeasured genes with zeros; zeros are not tokenised by default, so nothing is invented.
    return ad.concat(list(adatas), join="outer", fill_value=0, index_unique="-")


def pretrain(
    adata,
    *,
    out_dir: str | Path | None = None,
    model_config: ModelConfig | dict | None = None,
    tokenizer_config: TokenizerConfig | None = None,
    train_config: TrainConfig | None = None,
    vocab: GeneVocab | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
    n_top_genes: int | None = None,
    resume: bool = False,
    data_config=None,
    init_model=None,
) -> PretrainResult:
    """Pretrain an SC-MAMBA2 model (or fine-tune one self-supervised, with ``init_model``).

    The default recipe: continuous values (``log1p`` of normalised counts), the mean-pooled cell embedding, and
    the whole-profile objective: a decoder reconstructs, from the cell embedding alone, the standardised
    expression of the ``DEFAULT_PROFILE_GENES`` most variable genes, zeros included (:mod:`scmamba2.data.panel`).
    Without ``train_config`` the masked-value losses (GEP, MVC) are off with the profile decoder (they cost
    kNN accuracy: ``benchmarks/results/representation.md``); a given ``TrainConfig`` is used as it is (its
    ``gep_weight``/``mvc_weight`` default to 1). A binned tokenizer keeps the masked-value recipe (GEP + MVC)
    without the profile decoder.

    Parameters
    ----------
    adata
        An AnnData (or a list of them) with raw counts (log-normalised values are accepted: the value bins
        depend only on per-cell ranks), or a :class:`~scmamba2.data.corpus.Corpus` (h5ad shards, TileDB-SOMA
        experiments: :func:`~scmamba2.data.corpus.open_corpus`), which is streamed and never loaded whole
        (:mod:`scmamba2.train.pretrain_corpus`; the vocabulary then comes from the shards' gene tables).
    out_dir
        Where the checkpoint goes (``config.json``, ``model.safetensors``, ``vocab.json``), with
        ``train_config.json``, ``logs/metrics.csv`` (one row per logging step) and Lightning checkpoints.
    model_config
        A :class:`~scmamba2.ModelConfig`, or a dict of its fields (``vocab_size`` and the tokenizer-derived
        fields are filled in).
    tokenizer_config, train_config
        Defaults: ``TokenizerConfig()`` and ``TrainConfig()``.
    vocab
        The gene vocabulary; by default built from the genes of ``adata``.
    layer, use_raw
        Take the matrix from ``adata.layers[layer]`` or ``adata.raw`` instead of ``X``.
    gene_column
        Name genes by this ``var`` column instead of ``var_names``.
    n_top_genes
        Keep only this many highly variable genes (scanpy's ``seurat`` flavour on normalised counts).
    resume
        Continue the interrupted run in ``out_dir`` from ``out_dir/checkpoints/last.ckpt`` (weights, optimiser,
        schedule, step, data position). Call it with the same data and settings: the result is then the same
        as an uninterrupted run (see :mod:`scmamba2.train.resume`). A missing, truncated or mismatched
        checkpoint raises :class:`~scmamba2.CheckpointError`.
    data_config
        For a corpus: a :class:`~scmamba2.data.corpus.CorpusConfig` (block and buffer sizes, held-out cells).
    init_model
        Fine-tune instead: start from this :class:`~scmamba2.ScMamba2` (or checkpoint directory, or ``"bundled"``
        for the bundled pretrained model), keeping its architecture, vocabulary, tokenizer and gene panel (whose
        per-gene statistics are recomputed on ``adata``; panel genes ``adata`` does not measure are skipped by the
        loss; ``TrainConfig(finetune_panel="data")`` chooses a new panel on ``adata`` instead, starting its decoder
        from the old one's rows of the genes both hold). ``model_config``, ``tokenizer_config`` and ``vocab``
        must then be None. The given model is not modified.
    """
    import lightning.pytorch as pl

    from ..data.corpus import Corpus
    from .plan import TrainingPlan

    if resume:  # before the data are read and tokenised
        check_resume(out_dir, train_config or TrainConfig(), model_config, tokenizer_config)
    if isinstance(adata, Corpus):  # streamed from shards / TileDB-SOMA, never loaded whole
        from .pretrain_corpus import pretrain_corpus

        if layer is not None or use_raw or gene_column is not None or n_top_genes is not None:
            raise InputError("layer, use_raw, gene_column and n_top_genes apply to AnnData input; for a corpus set "
                             "them when opening it (scmamba2.data.corpus.open_corpus / the YAML data section). A streamed corpus keeps "
                             "every gene (no n_top_genes); to select HVGs of a few files, set data.stream: false.")
        return pretrain_corpus(adata, out_dir=out_dir, model_config=model_config, tokenizer_config=tokenizer_config,
                               train_config=train_config, vocab=vocab, resume=resume, data_config=data_config)
    tune_cpu_allocator()
    tcfg = train_config or TrainConfig()  # the loss weights are settled below, once the objective is known
    init = _load_init(init_model, model_config, tokenizer_config, vocab)
    if init is not None:
        vocab, tokenizer_config = init.vocab, init.tokenizer_config
    tok = tokenizer_config or TokenizerConfig(value_mode="continuous")
    check_order(tok, tcfg)
    adatas = list(adata) if isinstance(adata, (list, tuple)) else [adata]
    # Which genes each source measured: pooled sources, or a fine-tune whose panel may reach unmeasured genes.
    several = len(adatas) > 1 or (init is not None and init.profile_head is not None)
    source = np.repeat(np.arange(len(adatas)), [a.n_obs for a in adatas]) if several else None
    measured_names = ([set(map(str, select_matrix(a, layer=layer, use_raw=use_raw, gene_column=gene_column).var_names))
                       for a in adatas] if source is not None else None)
    data = _concat(adatas)
    if n_top_genes is not None:
        from ..data.preprocess import select_hvg

        data = select_hvg(select_matrix(data, layer=layer, use_raw=use_raw, gene_column=gene_column), n_top_genes,
                          flavor="seurat")
        layer, use_raw, gene_column = None, False, None
        if measured_names is not None:  # genes left out are not measured as far as training goes
            kept = set(map(str, data.var_names))
            measured_names = [names & kept for names in measured_names]
    if vocab is None:
        names = select_matrix(data, layer=layer, use_raw=use_raw, gene_column=gene_column).var_names
        vocab = GeneVocab(list(dict.fromkeys(map(str, names))))
    prepared = prepare_cells(data, vocab, tok, layer=layer, use_raw=use_raw, gene_column=gene_column,
                             purpose="pretrain", drop_empty=True, seed=tcfg.seed)
    cells = prepared.cells
    if source is not None:
        source = source[prepared.obs_index]

    # The whole-profile objective reads log-normalised values: it is the default with continuous values; a
    # binned tokenizer keeps the masked-value recipe unless profile_genes is asked for (then a clear error).
    default_profile = DEFAULT_PROFILE_GENES if tok.value_mode == "continuous" else 0
    if init is not None:
        mcfg = init.config
    elif isinstance(model_config, ModelConfig):
        mcfg = model_config
    else:
        mcfg = ModelConfig(vocab_size=len(vocab), **{"profile_genes": default_profile, **(model_config or {})})
    mcfg = replace(mcfg, vocab_size=len(vocab), n_bins=tok.n_bins, max_len=tok.max_len, value_mode=tok.value_mode)

    if train_config is None and mcfg.profile_genes:
        tcfg = replace(tcfg, gep_weight=0.0, mvc_weight=0.0)
    if mcfg.profile_genes and mcfg.profile_likelihood == "nb" and cells.library is None:
        raise InputError("profile_likelihood='nb' models raw counts with each cell's library size, but the data are "
                         "log-normalised: give raw counts (e.g. --layer counts or --use-raw), or keep "
                         "profile_likelihood='mse'.")
    log.info("losses: %s", ", ".join(f"{k} x {w:g}" for k, w in (("profile", tcfg.profile_weight if mcfg.profile_genes
             else 0.0), ("GEP", tcfg.gep_weight), ("MVC", tcfg.mvc_weight if mcfg.mvc else 0.0)) if w > 0) or "none")

    # Held-out cells, chosen by a seeded generator.
    rng = np.random.default_rng(tcfg.seed)
    n = len(cells)
    perm = rng.permutation(n)
    n_val = int(round(tcfg.val_fraction * n)) if tcfg.val_fraction > 0 else 0
    if tcfg.val_fraction > 0 and n >= 10:
        n_val = max(n_val, 1)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if len(train_idx) == 0:
        raise ValueError(f"no training cells left ({n} cells, val_fraction={tcfg.val_fraction})")

    panel = measured = None
    new_panel = init is not None and bool(mcfg.profile_genes) and tcfg.finetune_panel == "data"
    if mcfg.profile_genes:
        panel, measured = training_panel(cells.subset(train_idx), None if source is None else source[train_idx],
                                         vocab, mcfg.profile_genes, measured_names, None if new_panel else init,
                                         tcfg.profile_min_measured, tcfg.profile_panel_rule)
        if new_panel:
            mcfg = replace(mcfg, profile_genes=len(panel))
        elif len(panel) < mcfg.profile_genes:
            log.info("gene panel of the profile objective: %d of the %d genes read qualify (expressed in enough "
                     "cells), so the panel holds %d genes instead of its usual %d", len(panel),
                     np.unique(cells.gene_ids).size, len(panel), mcfg.profile_genes)
            mcfg = replace(mcfg, profile_genes=len(panel))

    pl.seed_everything(tcfg.seed, workers=True, verbose=False)
    model = ScMamba2(mcfg, vocab=vocab, tokenizer_config=tok)
    if init is not None:
        state = init.state_dict()
        if new_panel:  # the decoder of a new panel: its own shapes, rows of shared genes copied below
            state = {**{k: v for k, v in state.items() if not k.startswith("profile_head.")},
                     **{k: v for k, v in model.state_dict().items() if k.startswith("profile_head.")}}
        model.load_weights(state, source="the model to fine-tune")
    if panel is not None:
        model.profile_head.set_panel(panel.ids, panel.mean, panel.std)
    if new_panel:
        shared = model.profile_head.copy_genes_from(init.profile_head)
        log.info("fine-tuning on a new gene panel of %d genes chosen on these cells (%d of them in the model's "
                 "panel)", len(panel), shared)

    if mcfg.input_genes == "panel":  # the encoder reads the panel genes only; the targets come from them anyway
        cells = cells.keep_genes(panel.ids)

    def with_source(idx):  # the profile targets of the cells idx
        if panel is None:
            return {}
        return {"panel": panel, **({} if source is None else {"source": source[idx], "measured": measured})}

    if tcfg.panel_view_fraction > 0 and panel is None:
        raise InputError("panel_view_fraction reads cells through the genes of the profile panel, but this model has "
                         "no profile decoder: set profile_genes > 0 or panel_view_fraction=0.")
    if tcfg.depth_thinning > 0 and (cells.library is None or tok.value_mode != "continuous"
                                    or tok.include_zeros != "none"):
        raise InputError("depth_thinning reads cells as if sequenced less deeply, which needs raw counts with "
                         "continuous values of the expressed genes: pass raw counts (layer= or use_raw= if X is "
                         "normalised), value_mode='continuous' and include_zeros='none', or set depth_thinning=0.")
    train_ds = TokenizedDataset(cells.subset(train_idx), resample=True, seed=tcfg.seed,
                                panel_view_fraction=tcfg.panel_view_fraction, depth_thinning=tcfg.depth_thinning,
                                **with_source(train_idx))
    weights = None
    if tcfg.cluster_balance > 0:
        if panel is None:
            raise InputError("cluster_balance clusters cells by their profile panel, but this model has no profile "
                             "decoder: set profile_genes > 0 or cluster_balance=0.")
        from ..data.balance import cluster_weights

        weights = cluster_weights(train_ds.cells, panel, exponent=tcfg.cluster_balance, measured=measured,
                                  source=None if source is None else source[train_idx], seed=tcfg.seed)
    lengths = np.minimum(np.asarray(cells.lengths)[train_idx], tok.max_len)
    sampler = LengthBucketSampler(lengths, batch_size=tcfg.batch_size, shuffle=True, seed=tcfg.seed, weights=weights)
    collate = Collator(pad_id=vocab.pad_id, mask_ratio=tcfg.mask_ratio, seed=tcfg.seed)
    # Data order, resampling and masks are functions of (seed, epoch, batch): a resumed run continues exactly.
    train_loader = ResumableLoader(train_ds, sampler, collate, seed=tcfg.seed, num_workers=tcfg.num_workers)

    val_batches = None
    if n_val:
        # Masks of the held-out cells are drawn once, so every validation sees the same task.
        val_ds = TokenizedDataset(cells.subset(val_idx), seed=tcfg.seed, **with_source(val_idx))
        val_collate = Collator(pad_id=vocab.pad_id, mask_ratio=tcfg.mask_ratio, seed=tcfg.seed + 1)
        val_batches = DataLoader(
            [val_collate([val_ds[i] for i in range(s, min(s + tcfg.batch_size, n_val))])
             for s in range(0, n_val, tcfg.batch_size)],
            batch_size=None,  # the items are whole batches already
        )

    out = Path(out_dir) if out_dir is not None else None
    plan = TrainingPlan(model, tcfg, gene_means=gene_value_means(train_ds.cells, len(vocab)))
    trainer, val_start, val_end = fit_resumable(plan, tcfg, out, resume=resume, train_loader=train_loader,
                                                val_batches=val_batches)

    if out is not None and trainer.is_global_zero:
        model.save_pretrained(out)
        write_json(out / "train_config.json", tcfg.to_dict(), indent=2)
        summary = {"val_start": val_start, "val_end": val_end, "n_train_cells": int(len(train_idx)),
                   "n_val_cells": int(n_val), "n_empty_cells_dropped": prepared.n_empty,
                   "profile_genes": mcfg.profile_genes}
        write_json(out / "train_summary.json", summary, indent=2)
        log.info("model saved to %s", out)
    return PretrainResult(model=model, out_dir=out, val_start=val_start or {}, val_end=val_end or {},
                          n_train_cells=int(len(train_idx)), n_val_cells=int(n_val))
