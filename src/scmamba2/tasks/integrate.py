"""``scmamba2.integrate``: batch integration by fine-tuning with domain adaptation, written into ``obsm``.

The model (by default the bundled pretrained one, adapted; or a small new one, ``from_scratch``) is trained
without labels on

- ``profile``: the whole-profile objective the bundled model was pretrained with (its decoder reconstructs a
  panel of genes from the cell embedding), when the model has that decoder;
- ``gep``: masked expression (values of a random 40% of each cell's genes hidden and predicted),
- ``mvc``: the same values predicted from the cell embedding alone,
- ``ecs``: elastic cell similarity (pairs of cells pushed away from a cosine threshold: tighter clusters),
- ``dab``: a batch discriminator on the cell embedding behind gradient reversal (the encoder learns to hide
  the batch),
- ``batch_decoder``: a learned batch vector added to the inputs of the expression heads (GEP, MVC), as scGPT gives the batch
  labels to its decoders: expression that depends on the batch is explained there, so the cell embedding
  need not carry the batch (the profile decoder reads it too);
- ``dsbn``: one batch norm of the token embeddings per batch.

Each part is switched in :class:`IntegrationConfig`. Cell-type labels are never used in training.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..data.tokenize import TokenizerConfig
from ..data.files import write_json
from ..data.validate import looks_continuous
from ..errors import InputError
from ..model import ModelConfig, ScMamba2

log = logging.getLogger(__name__)

__all__ = ["IntegrationConfig", "integrate", "META_FILE"]

META_FILE = "integration.json"
SMALL_MODEL = dict(d_model=64, n_layers=2, headdim=16, d_state=32, chunk_size=64, dropout=0.1,
                   cell_pooling="cls")  # what the integration benchmark measured; mean pooling mixed batches worse in the batch-shift test


@dataclass
class IntegrationConfig:
    """Which losses and batch parts the integration uses, and their weights.

    The default is the model's own objective with the batch-conditioned decoders + DAB at weight 1: the
    whole-profile loss for a model with a profile decoder (the bundled one; ``profile``), GEP + MVC for one
    without (a new small model). ``gep`` / ``mvc`` None: on exactly when the model has no profile decoder. ``ecs_weight``,
    ``ecs_threshold``, ``mask_ratio`` and ``dab_weight`` are scGPT's values (10, 0.8, 0.4, 1). On our synthetic
    batch-shift test (tests/tasks/test_integrate.py; batch ASW / label ASW, unintegrated PCA 0.46 / 0.68) the
    batch decoder is what integrates: 0.69 / 0.95 with it, 0.30 / 0.68 without it (DAB alone; with DAB at
    weight 10 the game oscillates and batches separate, 0.13 / 0.50). ECS and DSBN are off by default: ECS
    lowered the label silhouette there, and DSBN cannot remove a batch effect that changes which genes are
    expressed (the test's, and a common one). ``dsbn`` and ``batch_decoder`` may both be on.
    """

    gep: bool | None = None
    mvc: bool | None = None
    profile: bool = True
    ecs: bool = False
    dab: bool = True
    dsbn: bool = False
    batch_decoder: bool = True
    mask_ratio: float = 0.4
    ecs_weight: float = 10.0
    ecs_threshold: float = 0.8
    dab_weight: float = 1.0
    dab_alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.gep is False and self.mvc is False and not (self.profile or self.ecs or self.dab):
            raise ValueError("every loss is off (gep, mvc, profile, ecs, dab): switch at least one on")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in (0, 1)")
        if not -1.0 <= self.ecs_threshold <= 1.0:
            raise ValueError(f"ecs_threshold={self.ecs_threshold} is a cosine similarity: it must be in [-1, 1]")
        for k in ("ecs_weight", "dab_weight", "dab_alpha"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}={getattr(self, k)} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved(self, has_profile: bool) -> "IntegrationConfig":
        """The switches for a model with (or without) a whole-profile decoder: ``profile`` is off where there is no
        decoder to train, and ``gep`` / ``mvc`` None become off when the profile loss is on, on otherwise."""
        profile = self.profile and has_profile
        gep = (not profile) if self.gep is None else self.gep
        mvc = (not profile) if self.mvc is None else self.mvc
        if not (gep or mvc or profile or self.ecs or self.dab):
            why = "profile, gep, mvc" if has_profile else "it has no profile decoder, and gep, mvc"
            raise InputError(f"every loss of the integration is off for this model ({why}, ecs and dab are off): "
                             "switch one on")
        return replace(self, gep=gep, mvc=mvc, profile=profile)

    def train_weights(self) -> dict[str, float]:
        """The :class:`~scmamba2.train.config.TrainConfig` loss fields these switches give (call on a
        :meth:`resolved` config)."""
        return {"gep_weight": 1.0 if self.gep else 0.0, "mvc_weight": 1.0 if self.mvc else 0.0,
                "profile_weight": 1.0 if self.profile else 0.0,
                "ecs_weight": self.ecs_weight if self.ecs else 0.0, "ecs_threshold": self.ecs_threshold,
                "dab_weight": self.dab_weight if self.dab else 0.0, "mask_ratio": self.mask_ratio,
                "cls_weight": 0.0}

    def model_changes(self, n_batches: int) -> dict[str, Any]:
        """The :class:`~scmamba2.ModelConfig` fields these switches give."""
        return {"n_batches": n_batches, "dsbn": self.dsbn, "batch_embedding": self.batch_decoder,
                "dab": self.dab, "dab_alpha": self.dab_alpha, "n_classes": 0}


def batch_categories(adata, batch_key: str) -> tuple[list[str], np.ndarray]:
    """The batch names (sorted) and each cell's index among them; a clear error on a bad column."""
    if batch_key not in adata.obs:
        raise InputError(f"batch_key {batch_key!r} is not an obs column; available: {list(adata.obs.columns)}")
    col = adata.obs[batch_key]
    if col.isna().any():
        raise InputError(f"obs[{batch_key!r}] has {int(col.isna().sum())} missing values: give every cell a batch "
                         "(or drop those cells)")
    values = col.astype(str).to_numpy()
    cats = sorted(set(values))
    if len(cats) < 2:
        raise InputError(f"obs[{batch_key!r}] has a single batch ({cats[0]!r}): integration needs at least two")
    if looks_continuous(col, len(cats), len(values)):
        raise InputError(f"obs[{batch_key!r}] looks like a continuous value, not batches: {len(cats):,} distinct "
                         f"values among {len(values):,} cells (e.g. {', '.join(cats[:3])}). Give --batch-key "
                         "(batch_key=) a column of categories such as 'donor', 'sample' or 'batch'; columns: "
                         f"{list(adata.obs.columns)}.")
    index = {c: i for i, c in enumerate(cats)}
    return cats, np.array([index[v] for v in values], dtype=np.int64)


def integrate(
    adata,
    batch_key: str,
    *,
    model: ScMamba2 | str | Path | None = None,
    from_scratch: bool = False,
    label_key: str | None = None,
    key_added: str = "X_scmamba2",
    config: IntegrationConfig | None = None,
    train_config=None,
    model_config: dict | None = None,
    tokenizer_config: TokenizerConfig | None = None,
    n_top_genes: int | None = 2000,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
    out_dir: str | Path | None = None,
    device: str | None = None,
    copy: bool = False,
):
    """Fine-tune a model to remove batch effects and embed every cell into ``obsm[key_added]``.

    Parameters
    ----------
    adata
        Cells x genes, raw counts (or log-normalised values) in ``X``, ``layers[layer]`` or ``raw``.
    batch_key
        ``obs`` column of each cell's batch (donor, run, technology, condition).
    model
        A pretrained :class:`~scmamba2.ScMamba2` or checkpoint directory to start from (its vocabulary is
        kept; heads for the batches are added with :meth:`~scmamba2.ScMamba2.adapt`). Default: the bundled
        pretrained model.
    from_scratch
        Train a small new model instead (``SMALL_MODEL``, updated by ``model_config``) on the ``n_top_genes``
        most variable genes.
    label_key
        ``obs`` column of cell types, used for evaluation only (label and batch silhouettes in ``uns``);
        never for training.
    key_added
        ``obsm`` key of the embedding.
    config
        The losses and batch parts (:class:`IntegrationConfig`; default the model's own objective, the
        batch-conditioned decoders and DAB).
    train_config
        :class:`~scmamba2.train.config.TrainConfig` for steps, batch size, learning rate and seed; its loss
        weights are set from ``config``. Default: 1000 steps of 32 cells.
    model_config, tokenizer_config
        For a new model (``from_scratch``; tokenizer default: ``TokenizerConfig(max_len=256, value_mode="continuous")``: log1p-normalised
        values, which a small model learns from much faster than 51 rank bins); a pretrained model keeps its own.
    n_top_genes
        Genes of a new model (``from_scratch``): this many highly variable genes (``None``: all).
    out_dir
        Save the fine-tuned model there, with ``integration.json`` (batch key and names) and training logs.

    Writes
    ------
    ``obsm[key_added]``
        ``(n_cells, d_model)`` float32 integrated cell embeddings.
    ``uns['scmamba2'][key_added]``
        The settings (model and tokenizer config, genes matched), and under ``integration``: the batch key,
        the batch names in model order, the :class:`IntegrationConfig`, the training config, the final losses
        and, with ``label_key``, ``asw_label`` and ``asw_batch`` (scib-metrics' silhouettes).
    """
    import lightning.pytorch as pl

    from ..train.config import TrainConfig
    from .embed import check_start, embed, load_model

    check_start(model, from_scratch, model_config, tokenizer_config)
    if label_key is not None and label_key not in adata.obs:
        raise InputError(f"label_key {label_key!r} is not an obs column; available: {list(adata.obs.columns)}")
    cats, codes = batch_categories(adata, batch_key)
    base = None if from_scratch else load_model(model)  # None model: the bundled one
    if base is not None and base.vocab is None:
        raise InputError("the pretrained model has no vocabulary: load it with ScMamba2.from_pretrained")
    cfg = (config or IntegrationConfig()).resolved(has_profile=base is not None and base.profile_head is not None)
    tcfg = train_config or TrainConfig(max_steps=1000, batch_size=32, lr=1e-3, warmup_steps=100)
    tcfg = TrainConfig(**{**tcfg.to_dict(), **cfg.train_weights()})
    adata = adata.copy() if copy else adata

    pl.seed_everything(tcfg.seed, workers=True, verbose=False)
    if base is None:
        net = _new_model(adata, cfg, len(cats), model_config, tokenizer_config, n_top_genes, layer, use_raw,
                         gene_column)
    else:
        net = base.adapt(**cfg.model_changes(len(cats)))
    try:
        losses = _fit(net, adata, codes, tcfg, layer, use_raw, gene_column, out_dir)
    except InputError as e:
        if base is None or "vocabulary" not in str(e):
            raise
        raise InputError(f"{e} Or train a small new model on this data's own genes: from_scratch=True "
                         "(--from-scratch).") from None

    net.eval()
    embed(adata, net, key_added=key_added, layer=layer, use_raw=use_raw, gene_column=gene_column, device=device,
          progress=False, batch_key=batch_key, batch_categories=cats)
    info: dict[str, Any] = {"batch_key": batch_key, "batch_categories": cats, "config": cfg.to_dict(),
                            "train": tcfg.to_dict(), "final_losses": losses}
    if label_key is not None:
        info.update(_silhouettes(adata.obsm[key_added], adata.obs[label_key], adata.obs[batch_key]))
    adata.uns["scmamba2"][key_added]["integration"] = info
    if out_dir is not None:
        net.save_pretrained(out_dir)
        meta = {"batch_key": batch_key, "batch_categories": cats, "config": cfg.to_dict(), "train": tcfg.to_dict()}
        write_json(Path(out_dir) / META_FILE, meta, indent=2)
    return adata if copy else None


def _new_model(adata, cfg: IntegrationConfig, n_batches: int, model_config, tokenizer_config, n_top_genes,
               layer, use_raw, gene_column) -> ScMamba2:
    from ..data.io import select_matrix
    from ..data.vocab import GeneVocab

    a = select_matrix(adata, layer=layer, use_raw=use_raw, gene_column=gene_column)
    genes = list(map(str, a.var_names))
    if n_top_genes is not None and n_top_genes < a.n_vars:
        from ..data.preprocess import select_hvg

        genes = list(map(str, select_hvg(a, n_top_genes, flavor="seurat").var_names))
    vocab = GeneVocab(list(dict.fromkeys(genes)))
    tok = tokenizer_config or TokenizerConfig(max_len=256, value_mode="continuous")
    mc = {**SMALL_MODEL, **(model_config or {}), **cfg.model_changes(n_batches), "mvc": cfg.mvc}
    mcfg = ModelConfig(vocab_size=len(vocab), **mc)
    mcfg = replace(mcfg, n_bins=tok.n_bins, max_len=tok.max_len, value_mode=tok.value_mode)
    return ScMamba2(mcfg, vocab=vocab, tokenizer_config=tok)


def _fit(net: ScMamba2, adata, codes: np.ndarray, tcfg, layer, use_raw, gene_column, out_dir) -> dict[str, float]:
    """Train ``net`` on every cell of ``adata``; returns the last logged value of each loss."""
    from ..data.collate import Collator, LengthBucketSampler, TokenizedDataset
    from ..data.prepare import prepare_cells
    from ..train.plan import TrainingPlan
    from ..train.resume import ResumableLoader, step_seed_callback
    from ..train.throughput import throughput_callback
    from ..train.trainer import fit, make_trainer

    tok = net.tokenizer_config or TokenizerConfig(n_bins=net.config.n_bins, value_mode=net.config.value_mode)
    prepared = prepare_cells(adata, net.vocab, tok, layer=layer, use_raw=use_raw, gene_column=gene_column,
                             purpose="finetune", drop_empty=True, seed=tcfg.seed)
    cells = net.input_cells(prepared.cells)
    targets = _profile_targets(net, cells, adata, layer, use_raw, gene_column) if tcfg.profile_weight > 0 else {}
    ds = TokenizedDataset(cells, batch=codes[prepared.obs_index], resample=True, seed=tcfg.seed, **targets)
    lengths = np.minimum(np.asarray(cells.lengths), tok.max_len)
    sampler = LengthBucketSampler(lengths, batch_size=tcfg.batch_size, shuffle=True, seed=tcfg.seed,
                                  drop_last=len(cells) > tcfg.batch_size)
    # Values hidden from the encoder: the targets of GEP / MVC, and a denoising input for the profile objective
    # (as the bundled model was pretrained).
    mask_ratio = tcfg.mask_ratio if max(tcfg.gep_weight, tcfg.mvc_weight, tcfg.profile_weight) > 0 else 0.0
    collate = Collator(pad_id=net.vocab.pad_id, mask_ratio=mask_ratio, seed=tcfg.seed)
    loader = ResumableLoader(ds, sampler, collate, seed=tcfg.seed, num_workers=tcfg.num_workers)
    plan = TrainingPlan(net, tcfg)
    trainer = make_trainer(tcfg, out_dir, callbacks=[step_seed_callback(tcfg.seed), throughput_callback()])
    log.info("integration: %d cells, %d batches, %d steps", len(cells), net.config.n_batches, tcfg.max_steps)
    fit(trainer, plan, train_dataloaders=loader)
    return {k.removeprefix("train/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}


def _profile_targets(net: ScMamba2, cells, adata, layer, use_raw, gene_column) -> dict[str, Any]:
    """The whole-profile targets of ``cells`` (``TokenizedDataset`` keywords): the model's panel, its
    statistics refitted on these cells (set in ``net``), panel genes the data did not measure left out."""
    from ..data.io import select_matrix
    from ..data.panel import training_panel

    names = set(map(str, select_matrix(adata, layer=layer, use_raw=use_raw, gene_column=gene_column).var_names))
    source = np.zeros(len(cells), dtype=np.int64)  # one source: the panel genes it measured
    panel, measured = training_panel(cells, source, net.vocab, net.config.profile_genes, [names], net,
                                     few_fix="Use more cells, or from_scratch=True (--from-scratch) for a new model.")
    net.profile_head.set_panel(panel.ids, panel.mean, panel.std)
    log.info("integration: profile targets, %d of the model's %d panel genes measured here",
             int(measured.sum()), len(panel.ids))
    return {"panel": panel, "source": source, "measured": measured}


def _silhouettes(emb: np.ndarray, labels, batch=None) -> dict[str, float]:
    """scib-metrics' label ASW (higher: cell types apart) and, with ``batch``, batch ASW (higher: batches
    mixed). Empty, with a logged warning, when scib-metrics is not installed (they are an evaluation only)."""
    try:
        import scib_metrics
    except ImportError:
        log.warning("label_key given but scib-metrics is not installed, so no silhouettes are computed: "
                    "pip install 'scmamba2[bench]'")
        return {}
    emb = np.asarray(emb, dtype=np.float32)
    labels = np.asarray(labels).astype(str)
    out = {"asw_label": float(scib_metrics.silhouette_label(emb, labels))}
    if batch is not None:
        out["asw_batch"] = float(scib_metrics.silhouette_batch(emb, labels, np.asarray(batch).astype(str)))
    return out
