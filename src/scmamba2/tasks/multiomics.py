"""``scmamba2.multiomics``: a joint cell embedding of paired modalities (RNA + protein, RNA + ATAC), and
prediction of a modality from RNA alone.

One sequence per cell: ``<cls>``, the RNA tokens, then every protein / peak of the model's panels (their own
vocabulary entries, ``prot:CD3``, ``atac:chr1-100-200``), each token with a modality embedding. The model is
trained on masked-value prediction across all modalities (:class:`~scmamba2.train.plan.TrainingPlan`'s GEP and
MVC losses) where some cells have every non-RNA token hidden at once (so that it learns to predict them from
RNA), optionally with the adversarial batch discriminator (DAB). The cell embedding (``cell_pooling``: the mean
over the cell's tokens in ``SMALL_MODEL``, or the ``<cls>`` output) is the joint embedding. :func:`predict_modality`
reads a cell's RNA tokens plus the target modality's tokens with their values masked and returns the prediction
of an expression head there (``MultiomicsConfig.predict_head``; see :mod:`scmamba2.tasks.multiomics_predict`).

The trained model is saved with :meth:`~scmamba2.ScMamba2.save_pretrained` (the feature tokens are in its
``vocab.json``) plus ``multiomics.json``: the modalities, their features, value transforms, which vocabulary ids
belong to which modality (checked on loading), the batches and the settings.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from ..data.multiomics import (ATAC, ATAC_VALUES, PROT, RNA, ModalitySpec, MultiomicCollator, MultiomicData,
                               modality_values, read_multiomics, top_variable_peaks)
from ..data.tokenize import TokenizedCells, TokenizerConfig
from ..data.files import read_json, write_json
from ..errors import CheckpointError, InputError
from ..model import ModelConfig, ScMamba2
from .multiomics_predict import model_cells, predict_modality, run_model

log = logging.getLogger(__name__)

__all__ = ["MultiomicsConfig", "MultiomicModel", "multiomics", "predict_modality", "META_FILE"]

META_FILE = "multiomics.json"
SMALL_MODEL = dict(d_model=64, n_layers=2, headdim=16, d_state=32, chunk_size=64, dropout=0.0, cell_pooling="mean")
_VALUE_NAMES = {(PROT, "continuous"): "clr", (PROT, "binned"): "clr_bins", (ATAC, "binary"): "binary",
                (ATAC, "binned"): "bins"}


@dataclass
class MultiomicsConfig:
    """Features, sequence and training objective of a multi-omics model.

    ``cross_modal_prob`` of the cells in each batch have every non-RNA token hidden (and all RNA tokens
    visible), the others ``mask_ratio`` of their tokens hidden at random across modalities; the masked values
    are the GEP / MVC targets, except that only ``rna_target_fraction`` of the hidden RNA tokens count (the
    rest stay hidden as input noise): a cell has ~10x more RNA than protein tokens. The defaults (0.8, 0.15)
    come from a development split of the CITE-seq training cells (never the benchmark's held-out cells): RNA
    targets slowed the protein prediction down (300 steps, held-out mean r: 0.49 with cross_modal_prob 0.8 and
    every RNA target, 0.53 with 0.15 of them, 0.61 with cross_modal_prob 1, which never shows the model a
    protein value and so gives no joint embedding). With a ``batch_key``: DAB (weight ``dab_weight``) when ``dab``, and
    with ``batch_decoder`` a learned batch vector added to the expression heads' inputs (as in
    :class:`~scmamba2.tasks.integrate.IntegrationConfig`), so that the joint embedding need not carry the batch.

    ``predict_head`` is the head :func:`predict_modality` reads: ``"mvc"``, the cell-conditioned expression
    head (each feature's value from the cell embedding and the feature's token), or ``"gep"``, the per-token
    expression head. ``"mvc"`` is the default because with a mean-pooled cell embedding (``SMALL_MODEL``) it
    learned RNA -> protein in a few hundred steps where the per-token head barely had (a new bidirectional
    Mamba2 mixes tokens far apart only weakly at initialisation; on a development split of the CITE-seq
    training cells, 300 steps: held-out mean r 0.61 vs 0.50, and on the synthetic test data 0.60 vs 0.0).
    """

    n_top_genes: int | None = 2000
    n_top_peaks: int = 1000
    rna_max_len: int = 256
    mask_ratio: float = 0.4
    cross_modal_prob: float = 0.8
    rna_target_fraction: float = 0.15
    atac_values: str = "binary"
    mvc: bool = True
    predict_head: str = "mvc"
    dab: bool = True
    dab_weight: float = 1.0
    dab_alpha: float = 1.0
    batch_decoder: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in (0, 1)")
        for k in ("cross_modal_prob", "rna_target_fraction"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"{k}={getattr(self, k)} must be in [0, 1]")
        if self.atac_values not in ATAC_VALUES:
            raise ValueError(f"atac_values must be one of {ATAC_VALUES}, not {self.atac_values!r}")
        if self.predict_head not in ("mvc", "gep"):
            raise ValueError(f"predict_head must be 'mvc' or 'gep', not {self.predict_head!r}")
        if self.predict_head == "mvc" and not self.mvc:
            raise ValueError("predict_head='mvc' needs the MVC head (mvc=True); or use predict_head='gep'")
        if self.rna_max_len < 1 or self.n_top_peaks < 1 or (self.n_top_genes is not None and self.n_top_genes < 1):
            raise ValueError("rna_max_len, n_top_peaks and n_top_genes must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MultiomicModel:
    """A trained :class:`~scmamba2.ScMamba2` with its :class:`~scmamba2.data.multiomics.ModalitySpec`.

    ``info`` holds the batch key and names (model order), the :class:`MultiomicsConfig` and the training config.
    """

    def __init__(self, model: ScMamba2, spec: ModalitySpec, info: dict[str, Any]):
        spec.check(model.vocab, model.config.n_modalities, source="the model")
        self.model, self.spec, self.info = model, spec, dict(info)

    @property
    def config(self) -> MultiomicsConfig:
        return MultiomicsConfig(**self.info["config"])

    @property
    def rna_genes(self) -> list[str]:
        """The model's RNA genes (vocabulary genes that are no modality feature)."""
        features = {t for m in self.spec.others for t in self.spec.tokens(m)}
        return [g for g in self.model.vocab.genes if g not in features]

    def save(self, directory: str | Path) -> Path:
        """:meth:`~scmamba2.ScMamba2.save_pretrained` plus ``multiomics.json``."""
        out = self.model.save_pretrained(directory)
        vocab = self.model.vocab
        meta = {"spec": self.spec.to_dict(), **self.info,
                "token_ids": {m: self.spec.token_ids(vocab, m).tolist() for m in self.spec.others}}
        write_json(out / META_FILE, meta, indent=1)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "MultiomicModel":
        """Load what :meth:`save` wrote; the vocabulary must hold every feature at the recorded ids."""
        src = Path(directory)
        if not (src / META_FILE).is_file():
            raise CheckpointError(f"{src} is not a multi-omics model: {META_FILE} is missing (train one with "
                                  "`scmamba2 multiomics train DATA --out OUT.h5mu --model-out DIR`)")
        model = ScMamba2.from_pretrained(src)
        meta = read_json(src / META_FILE, fix="Train the model again (`scmamba2 multiomics train DATA --out OUT.h5mu --model-out DIR`).")
        spec = ModalitySpec.from_dict(meta.pop("spec"))
        spec.check(model.vocab, model.config.n_modalities, source=str(src))
        recorded = meta.pop("token_ids")
        for m in spec.others:
            if spec.token_ids(model.vocab, m).tolist() != recorded.get(m):
                raise CheckpointError(f"{src}: the {m} tokens of vocab.json are not at the ids {META_FILE} records; "
                                      "the files come from different models")
        return cls(model, spec, meta)


def multiomics(
    data,
    *,
    batch_key: str | None = None,
    label_key: str | None = None,
    model: ScMamba2 | str | Path | None = None,
    from_scratch: bool = False,
    key_added: str = "X_scmamba2",
    config: MultiomicsConfig | None = None,
    train_config=None,
    model_config: dict | None = None,
    tokenizer_config: TokenizerConfig | None = None,
    protein_key: str | None = None,
    out_dir: str | Path | None = None,
    device: str | None = None,
) -> MultiomicModel:
    """Train a joint model of paired modalities and write each cell's joint embedding.

    Parameters
    ----------
    data
        A MuData (modalities ``rna`` and ``prot``/``adt`` and/or ``atac``), an AnnData of RNA counts with protein
        counts in ``obsm`` (``protein_expression`` + ``uns['protein_names']``, or a DataFrame), or a path to
        either (see :func:`~scmamba2.data.multiomics.read_multiomics`), or what that function returned. Raw counts
        in every modality. The embedding is written into the object given (read a path first to keep it).
    batch_key
        ``obs`` column of each cell's batch: the batch discriminator (DAB) learns to hide it.
    label_key
        ``obs`` column of cell types, for evaluation only (silhouettes in ``uns``); never used in training.
    model
        A pretrained RNA :class:`~scmamba2.ScMamba2` or checkpoint directory to start from (its vocabulary
        gets the feature tokens appended, :meth:`~scmamba2.ScMamba2.adapt` adds the modality embedding; the RNA
        tokens are the data's genes in its vocabulary). Default: the bundled pretrained model.
    from_scratch
        Train a small new model instead (``SMALL_MODEL`` updated by ``model_config``) on the ``n_top_genes`` most
        variable genes. Starting from the bundled model predicted proteins better on pbmc 5k + 10k (level on
        ECCITE) and mixed the batches of the joint embedding far better (``benchmarks/results/multiomics.md``).
    key_added
        ``obsm`` key of the embedding.
    config
        :class:`MultiomicsConfig` (features, masking, DAB).
    train_config
        :class:`~scmamba2.train.config.TrainConfig` (steps, batch size, learning rate, seed); its mask ratio
        and DAB weight are set from ``config``. Default: 1000 steps of 32 cells.
    tokenizer_config
        RNA tokenisation of a new model (default ``TokenizerConfig(value_mode="continuous")``: log1p-normalised
        RNA and CLR protein values; ``"binned"`` gives per-cell bins in every modality).
    protein_key
        ``obsm`` key of the protein counts of an AnnData input.
    out_dir
        Save the model there (checkpoint + ``multiomics.json``) with the training logs.

    Returns
    -------
    MultiomicModel
        The trained model (``.save(dir)``, :func:`predict_modality`).

    Writes
    ------
    ``obsm[key_added]`` (of the MuData or AnnData given)
        ``(n_cells, d_model)`` float32 joint embedding; NaN for cells of a MuData not measured in every modality.
    ``uns['scmamba2'][key_added]``
        The modalities and feature counts, the batch key and names, the settings, the final losses and, with
        ``label_key``, ``asw_label`` (and with ``batch_key`` also ``asw_batch``).
    """
    import lightning.pytorch as pl

    from ..train.config import TrainConfig
    from .embed import _without_none, check_start, load_model
    from .integrate import _silhouettes, batch_categories

    cfg = config or MultiomicsConfig()
    md = read_multiomics(data, protein_key=protein_key)
    tcfg = train_config or TrainConfig(max_steps=1000, batch_size=32, lr=1e-3, warmup_steps=100)
    cats, codes = None, None
    if batch_key is not None:
        obs = pd.DataFrame({batch_key: md.obs_column(batch_key).to_numpy()})
        cats, codes = batch_categories(SimpleNamespace(obs=obs), batch_key)
    use_dab = cats is not None and cfg.dab
    tcfg = TrainConfig(**{**tcfg.to_dict(), "mask_ratio": cfg.mask_ratio, "dab_weight": cfg.dab_weight if use_dab
                          else 0.0, "mvc_weight": tcfg.mvc_weight if cfg.mvc else 0.0, "cls_weight": 0.0})
    labels = md.obs_column(label_key) if label_key is not None else None
    pl.seed_everything(tcfg.seed, workers=True, verbose=False)

    check_start(model, from_scratch, model_config, tokenizer_config)
    base = None if from_scratch else load_model(model)  # None: the bundled model
    tok = (base.tokenizer_config if base is not None else None) or tokenizer_config or \
        TokenizerConfig(max_len=cfg.rna_max_len + 1, value_mode="continuous")
    spec, others = _features(md, cfg, tok)
    changes = {"n_modalities": len(spec.modalities), "n_classes": 0, "n_batches": len(cats) if cats else 0,
               "dab": use_dab, "dab_alpha": cfg.dab_alpha, "batch_embedding": cats is not None and cfg.batch_decoder,
               "dsbn": False}
    if base is None:
        vocab = spec.extend(_new_vocab(md, cfg))
        mcfg = ModelConfig(vocab_size=len(vocab), **{**SMALL_MODEL, **(model_config or {}), **changes,
                                                     "mvc": cfg.mvc})
        net = ScMamba2(replace(mcfg, n_bins=tok.n_bins, value_mode=tok.value_mode), vocab=vocab,
                       tokenizer_config=tok)
    else:
        if base.vocab is None:
            raise InputError("the pretrained model has no vocabulary: load it with ScMamba2.from_pretrained")
        net = base.adapt(vocab=spec.extend(base.vocab), **changes)
    info = {"batch_key": batch_key, "batch_categories": cats, "config": cfg.to_dict(), "train": tcfg.to_dict()}
    mm = MultiomicModel(net, spec, info)
    cells = model_cells(mm, md.mods[RNA], others)
    net.config = replace(net.config, max_len=cells.config.max_len)
    losses = _fit(mm, cells, codes, tcfg, out_dir)

    emb, _ = run_model(mm, cells, batch_codes=codes, device=device)
    emb_full = np.full((md.container.n_obs, emb.shape[1]), np.nan, dtype=np.float32)
    emb_full[md.rows] = emb
    md.container.obsm[key_added] = emb_full
    summary: dict[str, Any] = {"modalities": spec.modalities, "n_features": {m: len(f) for m, f in spec.features.items()},
                               "n_paired_cells": md.n_obs, **info, "final_losses": losses}
    if labels is not None:
        summary.update(_silhouettes(emb, labels, None if batch_key is None else md.obs_column(batch_key)))
    md.container.uns.setdefault("scmamba2", {})[key_added] = _without_none(summary)
    if out_dir is not None:
        mm.save(out_dir)
    return mm


def _new_vocab(md: MultiomicData, cfg: MultiomicsConfig):
    from ..data.vocab import GeneVocab

    rna = md.mods[RNA]
    genes = list(map(str, rna.var_names))
    if cfg.n_top_genes is not None and cfg.n_top_genes < rna.n_vars:
        from ..data.preprocess import select_hvg

        genes = list(map(str, select_hvg(rna, cfg.n_top_genes, flavor="seurat").var_names))
    return GeneVocab(list(dict.fromkeys(genes)))


def _features(md: MultiomicData, cfg: MultiomicsConfig, tok: TokenizerConfig) -> tuple[ModalitySpec, dict]:
    """The spec (protein panel, top variable peaks) and each non-RNA modality's value matrix."""
    features, values, others = {}, {}, {}
    for m, a in md.mods.items():
        if m == RNA:
            continue
        X = a.X
        names = list(map(str, a.var_names))
        if m == ATAC and cfg.n_top_peaks < a.n_vars:
            keep = top_variable_peaks(X, cfg.n_top_peaks)
            X, names = X[:, keep], [names[i] for i in keep]
            log.info("ATAC: kept the %d most variable of %d peaks", len(keep), a.n_vars)
        if len(set(names)) != len(names):
            raise InputError(f"the {m} feature names are not unique; make them unique (var_names_make_unique())")
        features[m] = names
        values[m] = _VALUE_NAMES[(m, tok.value_mode if m == PROT else cfg.atac_values)]
        others[m] = modality_values(m, X, tok, cfg.atac_values)
    return ModalitySpec(modalities=list(md.mods), features=features, values=values), others


def _fit(mm: MultiomicModel, cells: TokenizedCells, codes, tcfg, out_dir) -> dict[str, float]:
    from ..data.collate import LengthBucketSampler, TokenizedDataset
    from ..train.plan import TrainingPlan
    from ..train.resume import ResumableLoader, step_seed_callback
    from ..train.throughput import throughput_callback
    from ..train.trainer import fit, make_trainer

    net, cfg = mm.model, mm.config
    ds = TokenizedDataset(cells, batch=codes, seed=tcfg.seed)
    sampler = LengthBucketSampler(np.asarray(cells.lengths), batch_size=tcfg.batch_size, shuffle=True,
                                  seed=tcfg.seed, drop_last=len(cells) > tcfg.batch_size)
    collate = MultiomicCollator(net.vocab.pad_id, mm.spec.modality_of(net.vocab), mask_ratio=cfg.mask_ratio,
                                cross_modal_prob=cfg.cross_modal_prob, source_target_fraction=cfg.rna_target_fraction,
                                seed=tcfg.seed)
    loader = ResumableLoader(ds, sampler, collate, seed=tcfg.seed, num_workers=tcfg.num_workers)
    trainer = make_trainer(tcfg, out_dir, callbacks=[step_seed_callback(tcfg.seed), throughput_callback()])
    log.info("multiomics: %d cells, modalities %s, %d steps", len(cells), mm.spec.modalities, tcfg.max_steps)
    fit(trainer, TrainingPlan(net, tcfg), train_dataloaders=loader)
    net.eval()
    return {k.removeprefix("train/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
