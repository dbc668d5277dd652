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
from ..data.prepare import prepare_cells
from ..data.tokenize import TokenizerConfig
from ..data.vocab import GeneVocab
from .._malloc import tune_cpu_allocator
from ..model import ModelConfig, ScMamba2
from ..errors import CheckpointError, InputError
from .checkpoint import check_fits, last_checkpoint_path, read_checkpoint
from .config import TrainConfig
from .resume import ResumableLoader, keep_metrics, restore_metrics, step_seed_callback
from .throughput import throughput_callback

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns."""

    model: ScMamba2
    out_dir: Path | None
    val_loss_start: float | None  # masked-expression (GEP) loss on held-out cells before training
    val_loss_end: float | None  # ... and after
    n_train_cells: int
    n_val_cells: int


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
) -> PretrainResult:
    """Pretrain an SC-MAMBA2 model with masked expression (GEP) and cell-conditioned expression (MVC).

    Parameters
    ----------
    adata
        An AnnData (or a list of them) with raw counts (log-normalised values are accepted: the value bins
        depend only on per-cell ranks), or a :class:`~scmamba2.data.corpus.Corpus` (h5ad shards, TileDB-SOMA
        experiments: :func:`~scmamba2.data.corpus.open_corpus`), which is streamed and never loaded whole
        (:mod:`scmamba2.train.pretrain_corpus`; the vocabulary then comes from the shards' gene tables).
    out_dir
        Where the checkpoint goes (``config.json``, ``model.safetensors``, ``vocab.json``), with
        ``train_config.json``, ``metrics.csv`` (one row per logging step) and Lightning checkpoints.
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
    """
    import lightning.pytorch as pl

    from ..data.corpus import Corpus
    from .plan import TrainingPlan
    from .trainer import make_trainer

    if isinstance(adata, Corpus):  # streamed from shards / TileDB-SOMA, never loaded whole
        from .pretrain_corpus import pretrain_corpus

        if layer is not None or use_raw or gene_column is not None or n_top_genes is not None:
            raise InputError("layer, use_raw, gene_column and n_top_genes apply to AnnData input; for a corpus set "
                             "them when opening it (scmamba2.data.corpus.open_corpus / the YAML data section). A streamed corpus keeps "
                             "every gene (no n_top_genes); to select HVGs of a few files, set data.stream: false.")
        return pretrain_corpus(adata, out_dir=out_dir, model_config=model_config, tokenizer_config=tokenizer_config,
                               train_config=train_config, vocab=vocab, resume=resume, data_config=data_config)
    tune_cpu_allocator()
    tcfg = train_config or TrainConfig()
    tok = tokenizer_config or TokenizerConfig()
    adatas = list(adata) if isinstance(adata, (list, tuple)) else [adata]
    data = _concat(adatas)
    if n_top_genes is not None:
        from ..data.preprocess import select_hvg

        data = select_hvg(select_matrix(data, layer=layer, use_raw=use_raw, gene_column=gene_column), n_top_genes,
                          flavor="seurat")
        layer, use_raw, gene_column = None, False, None
    if vocab is None:
        names = select_matrix(data, layer=layer, use_raw=use_raw, gene_column=gene_column).var_names
        vocab = GeneVocab(list(dict.fromkeys(map(str, names))))
    prepared = prepare_cells(data, vocab, tok, layer=layer, use_raw=use_raw, gene_column=gene_column,
                             purpose="pretrain", drop_empty=True, seed=tcfg.seed)
    cells = prepared.cells

    mcfg = model_config if isinstance(model_config, ModelConfig) else ModelConfig(
        vocab_size=len(vocab), **(model_config or {})
    )
    mcfg = replace(mcfg, vocab_size=len(vocab), n_bins=tok.n_bins, max_len=tok.max_len, value_mode=tok.value_mode)

    pl.seed_everything(tcfg.seed, workers=True, verbose=False)
    model = ScMamba2(mcfg, vocab=vocab, tokenizer_config=tok)

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

    train_ds = TokenizedDataset(cells.subset(train_idx), resample=True, seed=tcfg.seed)
    lengths = np.minimum(np.asarray(cells.lengths)[train_idx], tok.max_len)
    sampler = LengthBucketSampler(lengths, batch_size=tcfg.batch_size, shuffle=True, seed=tcfg.seed)
    collate = Collator(pad_id=vocab.pad_id, mask_ratio=tcfg.mask_ratio, seed=tcfg.seed)
    # Data order, resampling and masks are functions of (seed, epoch, batch): a resumed run continues exactly.
    train_loader = ResumableLoader(train_ds, sampler, collate, seed=tcfg.seed, num_workers=tcfg.num_workers)

    val_batches = None
    if n_val:
        # Masks of the held-out cells are drawn once, so every validation sees the same task.
        val_ds = TokenizedDataset(cells.subset(val_idx), seed=tcfg.seed)
        val_collate = Collator(pad_id=vocab.pad_id, mask_ratio=tcfg.mask_ratio, seed=tcfg.seed + 1)
        val_batches = DataLoader(
            [val_collate([val_ds[i] for i in range(s, min(s + tcfg.batch_size, n_val))])
             for s in range(0, n_val, tcfg.batch_size)],
            batch_size=None,  # the items are whole batches already
        )

    out = Path(out_dir) if out_dir is not None else None
    ckpt_path, kept_metrics, resume_step = None, [], 0
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
    trainer = make_trainer(tcfg, out, validate=bool(n_val), tensorboard=True,
                           callbacks=[step_seed_callback(tcfg.seed), throughput_callback()])
    plan = TrainingPlan(model, tcfg)
    if ckpt_path is not None:
        check_fits(ckpt, plan, ckpt_path)
        del ckpt
        log.info("resuming from %s (step %d)", ckpt_path, resume_step)
    val_start = val_end = None
    if val_batches is not None:
        val_start = trainer.validate(plan, val_batches, verbose=False)[0]["val/gep"]
    trainer.fit(plan, train_dataloaders=train_loader, val_dataloaders=val_batches,
                ckpt_path=None if ckpt_path is None else str(ckpt_path))
    if val_batches is not None:
        val_end = trainer.validate(plan, val_batches, verbose=False)[0]["val/gep"]
    if ckpt_path is not None and trainer.is_global_zero:
        restore_metrics(out, kept_metrics, resume_step)  # the CSV logger started a new file
    model.eval()

    if out is not None and trainer.is_global_zero:
        model.save_pretrained(out)
        write_json(out / "train_config.json", tcfg.to_dict(), indent=2)
        summary = {"val_gep_start": val_start, "val_gep_end": val_end, "n_train_cells": int(len(train_idx)),
                   "n_val_cells": int(n_val), "n_empty_cells_dropped": prepared.n_empty}
        write_json(out / "train_summary.json", summary, indent=2)
        log.info("model saved to %s", out)
    return PretrainResult(model=model, out_dir=out, val_loss_start=val_start, val_loss_end=val_end,
                          n_train_cells=int(len(train_idx)), n_val_cells=int(n_val))
