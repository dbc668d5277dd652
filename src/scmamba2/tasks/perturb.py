"""Perturbation response (predict a perturbation's expression profile) and reverse perturbation (rank the
perturbations most likely to lead to an observed or desired profile).

The model reads a control cell (every gene of a fixed panel, log1p-normalised, zeros included) with a flag on
each perturbed gene (a target outside the panel gets its own token from the vocabulary, value unmeasured)
or a condition index (drug, cytokine), and is trained to output a perturbed cell's expression over the panel
(expression loss on every panel gene). A perturbation's predicted profile is the mean output over many
control cells. The trained model is saved with :meth:`~scmamba2.ScMamba2.save_pretrained` plus
``perturb.json`` (panel, perturbations, conditions, control mean) and ``perturb_controls.npz`` (a seeded
sample of control cells to predict from).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data.perturb import (PairCollator, PairDataset, control_pools, parse_condition, parse_perturbations,
                            perturbation_name, same_pools, split_perturbations)
from ..data.vocab import GeneVocab
from ..data.files import atomic_path, read_json, write_json
from ..errors import CheckpointError, InputError
from ..model import ModelConfig, ScMamba2

log = logging.getLogger(__name__)

__all__ = ["PerturbationModel", "train_perturbation", "predict_perturbation", "reverse_perturbation",
           "panel_matrix"]

META_FILE, CONTROLS_FILE = "perturb.json", "perturb_controls.npz"
SMALL_MODEL = dict(d_model=64, n_layers=2, headdim=16, d_state=32, chunk_size=64, dropout=0.0)


@dataclass
class PerturbMeta:
    """What a perturbation model needs besides its weights (``perturb.json``)."""

    key: str
    control: str
    kind: str
    genes: list[str]  # the panel, in token order
    perturbations: list[str]  # every perturbation of the training data (held-out ones included)
    train_perturbations: list[str]
    targets: dict[str, list[str]] = field(default_factory=dict)  # genetic: name -> target genes
    conditions: list[str] = field(default_factory=list)  # kind "condition": index -> name, 0 = control
    control_mean: list[float] = field(default_factory=list)
    target_sum: float = 1e4
    match_key: str | None = None
    split: dict[str, str] = field(default_factory=dict)
    flagged_genes: list[str] = field(default_factory=list)  # genes perturbed in some training perturbation
    untrained_genes: list[str] = field(default_factory=list)  # a new model's tokens never trained (see tokens())


class PerturbationModel:
    """A trained :class:`~scmamba2.ScMamba2` with its perturbation metadata and stored control cells."""

    def __init__(self, model: ScMamba2, meta: PerturbMeta, controls: np.ndarray,
                 control_groups: np.ndarray | None = None):
        self.model, self.meta = model, meta
        self.controls = np.asarray(controls, dtype=np.float32)
        self.control_groups = control_groups

    @property
    def control_mean(self) -> np.ndarray:
        return np.asarray(self.meta.control_mean, dtype=np.float32)

    def save(self, directory: str | Path) -> Path:
        out = self.model.save_pretrained(directory)
        write_json(out / META_FILE, asdict(self.meta), indent=1)
        groups = self.control_groups if self.control_groups is not None else np.array([], dtype=str)
        with atomic_path(out / CONTROLS_FILE) as tmp:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a path
                np.savez_compressed(fh, X=self.controls, groups=np.asarray(groups, dtype=str))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "PerturbationModel":
        src = Path(directory)
        if not (src / META_FILE).is_file() or not (src / CONTROLS_FILE).is_file():
            raise CheckpointError(f"{src} is not a perturbation model: {META_FILE} or {CONTROLS_FILE} is missing "
                                  "(train one with `scmamba2 perturb train`)")
        model = ScMamba2.from_pretrained(src)
        try:
            meta = PerturbMeta(**read_json(src / META_FILE, fix="Train the model again (`scmamba2 perturb train`)."))
            z = np.load(src / CONTROLS_FILE)
        except (TypeError, ValueError, OSError) as exc:
            raise CheckpointError(f"{src} holds a damaged perturbation model ({exc}); train it again with "
                                  "`scmamba2 perturb train`") from None
        groups = z["groups"] if len(z["groups"]) else None
        return cls(model, meta, z["X"], groups)

    # ------------------------------------------------------------------------------------------ encoding
    def canonical(self, name: str) -> str:
        """Canonical name of a perturbation (``B+A`` -> ``A+B``; the control's label stays)."""
        if self.meta.kind == "condition":
            return str(name)
        return perturbation_name(parse_condition(name, self.meta.control), self.meta.control)

    def tokens(self, name: str, generic_unseen: bool = False) -> tuple[np.ndarray, np.ndarray, int | None]:
        """``(flag positions in the panel, vocabulary ids of targets outside it, condition index)``.

        A target whose token was never trained (a new model's token for a gene neither measured nor perturbed
        in training) enters as a flagged ``<mask>`` token: the generic perturbation the model learned from
        anonymised training pairs. With ``generic_unseen`` so does every target never perturbed in training.

        Raises
        ------
        InputError
            A target gene unknown to the vocabulary, or a condition the model was not trained with.
        """
        m = self.meta
        empty = np.zeros(0, dtype=np.int64)
        if m.kind == "condition":
            if name not in m.conditions:
                raise InputError(f"condition {name!r} is unknown to this model; it knows {m.conditions} (a "
                                 "condition model cannot predict a drug or cytokine it never saw)")
            return empty, empty, m.conditions.index(name)
        generic = set(m.untrained_genes)
        targets = parse_condition(name, m.control)
        if generic_unseen:
            generic |= set(targets) - set(m.flagged_genes)
        return (*target_tokens(targets, m.genes, self.model.vocab, generic), None)


def target_tokens(targets: Sequence[str], genes: Sequence[str], vocab: GeneVocab,
                  generic: set[str] | frozenset = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """Panel positions of the targets in the panel, vocabulary ids of the others (a clear error if unknown);
    targets in ``generic`` become ``<mask>`` tokens."""
    pos = {g: i for i, g in enumerate(genes)}
    unknown = [t for t in targets if t not in pos and t not in vocab]
    if unknown:
        raise InputError(f"target gene(s) {unknown} are not in the model's vocabulary ({len(vocab.genes)} genes), "
                         "so the model has no token for them; check the spelling (symbols vs Ensembl ids) or use "
                         "a model whose vocabulary has them")
    in_panel = np.array([pos[t] for t in targets if t in pos and t not in generic], dtype=np.int64)
    extra = np.array([vocab.mask_id if t in generic else vocab[t] for t in targets if t not in pos or t in generic],
                     dtype=np.int64)
    return in_panel, extra


# ------------------------------------------------------------------------------------------------ matrix
def panel_matrix(adata, genes: Sequence[str] | None = None, *, layer: str | None = None, use_raw: bool = False,
                 gene_column: str | None = None, target_sum: float = 1e4) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Dense log1p-normalised expression over ``genes`` (default: all genes of ``adata``).

    Raw counts are normalised to ``target_sum`` per cell and log1p-transformed; log-normalised input is taken
    as is. Returns ``(X, genes, present)``; genes absent from ``adata`` are zero with ``present`` False.
    """
    from ..data.io import select_matrix
    from ..data.preprocess import normalize_log1p
    from ..data.validate import validate

    a = select_matrix(adata, layer=layer, use_raw=use_raw, gene_column=gene_column)
    rep = validate(a, purpose="perturb")
    X = a.X
    if rep.value_kind in ("raw_counts", "normalized"):
        X = normalize_log1p(X, target_sum)
    names = pd.Index(a.var_names.astype(str))
    if names.has_duplicates:
        raise InputError(f"{int(names.duplicated().sum())} gene names are duplicated; make them unique "
                         "(adata.var_names_make_unique()) or pass a gene column of unique ids")
    genes = list(names) if genes is None else list(genes)
    idx = names.get_indexer(genes)
    present = idx >= 0
    import scipy.sparse as sp

    X = X.tocsc() if sp.issparse(X) else np.asarray(X)
    out = np.zeros((a.n_obs, len(genes)), dtype=np.float32)
    sub = X[:, idx[present]]
    out[:, present] = sub.toarray() if sp.issparse(sub) else sub
    return out, genes, present


# ------------------------------------------------------------------------------------------------- train
def train_perturbation(
    adata,
    *,
    perturbation_key: str,
    control: str = "ctrl",
    kind: str = "genetic",
    holdout: Sequence[str] | None = None,
    test_fraction: float = 0.0,
    match_key: str | None = None,
    model: ScMamba2 | str | Path | None = None,
    model_config: dict | None = None,
    train_config=None,
    n_top_genes: int | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
    n_stored_controls: int = 512,
    anonymise: float = 0.2,
    target_cells: int = 8,
    extra_targets: Sequence[str] = (),
    out_dir: str | Path | None = None,
) -> PerturbationModel:
    """Train a perturbation-response model on control and perturbed cells.

    Parameters
    ----------
    adata
        Cells x genes, raw counts or log-normalised, with the perturbation of each cell in ``obs``.
    perturbation_key, control, kind
        See :func:`~scmamba2.data.perturb.parse_perturbations` (GEARS: ``condition``, ``ctrl``).
    holdout, test_fraction
        Perturbations left out of training: exactly ``holdout``, or a seeded ``test_fraction`` of them (see
        :func:`~scmamba2.data.perturb.split_perturbations`); their cells are never trained on.
    match_key
        ``obs`` column for control matching: a perturbed cell is paired with controls of its own group
        (cell type, replicate).
    model
        A pretrained model (object or checkpoint directory) to start from; every target gene must be in its
        vocabulary. Default: a small new model (vocabulary = panel + target genes).
    model_config
        :class:`~scmamba2.ModelConfig` fields for a new model (default ``SMALL_MODEL``).
    train_config
        :class:`~scmamba2.train.config.TrainConfig` (steps, batch size, learning rate, seed).
    extra_targets
        Genes to give a token in a new model's vocabulary besides the panel and the data's targets (the
        targets of perturbations you will predict later; with a pretrained model they must be in its vocabulary).
    anonymise
        Fraction of training pairs whose targets enter as flagged ``<mask>`` tokens (no gene identity), so
        the model learns a generic perturbation for targets whose token it never trained.
    target_cells
        Training target = the mean of this many cells of the same perturbation (and group): the same expected
        value as one cell, less noise (1 = single perturbed cells).
    n_top_genes
        Panel = this many highly variable genes of the training cells (default here: every gene; the CLI's
        default is 2,000, as the other tasks). Targets outside the panel keep their vocabulary token.
    out_dir
        Save the model there.
    """
    import lightning.pytorch as pl

    from ..train.config import TrainConfig
    from ..train.plan import TrainingPlan
    from ..train.trainer import make_trainer
    from .embed import load_model

    tcfg = train_config or TrainConfig(max_steps=600, batch_size=32, lr=1e-3, warmup_steps=50)
    labels = parse_perturbations(adata, perturbation_key, control, kind=kind)
    split = split_perturbations(labels, test_fraction=test_fraction, holdout=holdout, seed=tcfg.seed)
    train_perts = split.index[split["split"] == "train"].tolist()
    keep = labels.is_control | np.isin(labels.names, train_perts)
    if match_key is not None and match_key not in adata.obs.columns:
        raise InputError(f"match_key {match_key!r} is not an obs column; obs has: {list(adata.obs.columns)}")
    log.info("%d perturbations in training, %d held out; %d of %d cells used", len(train_perts),
             len(split) - len(train_perts), int(keep.sum()), adata.n_obs)

    data = adata[keep]
    genes = None
    if n_top_genes is not None:
        from ..data.io import select_matrix
        from ..data.preprocess import select_hvg

        genes = list(select_hvg(select_matrix(data, layer=layer, use_raw=use_raw, gene_column=gene_column),
                                n_top_genes, flavor="seurat").var_names)
    X, genes, _ = panel_matrix(data, genes, layer=layer, use_raw=use_raw, gene_column=gene_column)
    log.info("gene panel: %s (%d genes)", "every gene" if n_top_genes is None else
             f"the {n_top_genes} most variable genes (n_top_genes / --n-top-genes; 0 on the CLI = every gene)",
             len(genes))
    if len(genes) > 2000:
        log.warning("the gene panel has %d genes: every cell becomes a sequence that long (slow); consider "
                    "n_top_genes (--n-top-genes) of 500-2000", len(genes))
    names = labels.names[keep]
    is_ctrl = names == control

    targets = {p: list(labels.targets(p)) for p in labels.perturbations} if kind == "genetic" else {}
    all_targets = sorted({g for t in targets.values() for g in t} | set(map(str, extra_targets)))
    base = load_model(model) if model is not None else None
    vocab = _vocab(genes, all_targets, base)
    conditions = [control] + labels.perturbations if kind == "condition" else []
    changes = dict(value_mode="continuous", mvc=False, batch_embedding=False, dsbn=False, dab=False, n_pert_flags=2 if kind == "genetic" else 0,
                   n_conditions=len(conditions), max_len=len(genes) + 1 + max([len(t) for t in targets.values()] + [0]))
    pl.seed_everything(tcfg.seed, workers=True, verbose=False)
    if base is None:
        cfg = ModelConfig(vocab_size=len(vocab), **{**SMALL_MODEL, **(model_config or {}), **changes})
        net = ScMamba2(cfg, vocab=vocab)
    else:
        net = base.adapt(vocab=vocab, **changes)

    meta = PerturbMeta(key=perturbation_key, control=control, kind=kind, genes=genes,
                       perturbations=labels.perturbations, train_perturbations=train_perts, targets=targets,
                       conditions=conditions, control_mean=X[is_ctrl].mean(0).tolist(),
                       match_key=match_key, split=split["split"].to_dict())
    meta.flagged_genes = sorted({g for p in train_perts for g in targets.get(p, [])})
    if base is None:
        meta.untrained_genes = sorted(set(all_targets) - set(genes) - set(meta.flagged_genes))
    groups = None if match_key is None else data.obs[match_key].astype(str).to_numpy()
    rng = np.random.default_rng(tcfg.seed)
    ctrl_rows = np.flatnonzero(is_ctrl)
    stored = np.sort(rng.choice(ctrl_rows, min(n_stored_controls, len(ctrl_rows)), replace=False))
    pm = PerturbationModel(net, meta, X[stored], None if groups is None else groups[stored])

    order = [control] + train_perts
    tokens = [pm.tokens(p)[:2] if kind == "genetic" else (np.zeros(0, np.int64),) * 2 for p in order]
    pert_index = pd.Index(order).get_indexer(names)
    condition = pd.Index(conditions).get_indexer(names) if kind == "condition" else None
    ds = PairDataset(X, pert_index, tokens, control_pools(is_ctrl, groups), vocab.lookup(genes), vocab.cls_id,
                     condition=condition, seed=tcfg.seed, anonymise=anonymise if kind == "genetic" else 0.0,
                     mask_id=vocab.mask_id, target_cells=target_cells,
                     target_pool=same_pools(names if groups is None else np.char.add(names.astype(str), "|" + groups)))
    loader = torch.utils.data.DataLoader(ds, batch_size=tcfg.batch_size, shuffle=True,
                                         drop_last=len(ds) > tcfg.batch_size,
                                         collate_fn=PairCollator(vocab.pad_id),
                                         generator=torch.Generator().manual_seed(tcfg.seed))
    plan = TrainingPlan(net, TrainConfig(**{**tcfg.to_dict(), "mvc_weight": 0.0}))
    make_trainer(tcfg).fit(plan, train_dataloaders=loader)
    net.eval()
    if out_dir is not None:
        pm.save(out_dir)
    return pm


def _vocab(genes: list[str], targets: list[str], base: ScMamba2 | None) -> GeneVocab:
    if base is None:
        return GeneVocab(list(dict.fromkeys(genes + targets)))
    if base.vocab is None:
        raise CheckpointError("the pretrained model has no vocabulary attached")
    target_tokens(targets, genes, base.vocab)  # raises on a target unknown to the pretrained vocabulary
    missing = [g for g in genes if g not in base.vocab]
    if missing:
        log.info("%d panel genes are new to the pretrained vocabulary and get new tokens", len(missing))
    return base.vocab.extend(missing)


# predict_perturbation and reverse_perturbation live in perturb_predict.py (imported last: they use the above).
from .perturb_predict import predict_perturbation, reverse_perturbation  # noqa: E402
