""":func:`train_perturbation`: the baseline from the training cells, then the learned correction on top of it,
kept only when it beats the baseline on validation units held out of its training."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.perturb import (PairCollator, PairDataset, control_pools, parse_perturbations, same_pools,
                            split_perturbations)
from ..errors import InputError
from ..eval.perturb_baselines import pca_gene_embedding
from ..eval.perturb_metrics import deg_weights, perturbation_metrics, top_de_genes
from ..model import ModelConfig, ScMamba2
from .perturb import (KNOWLEDGE, SMALL_MODEL, PerturbationModel, PerturbMeta, _vocab, panel_matrix)
from .perturb_correction import CorrectionHead, mean_correction, train_correction
from .perturb_effects import NO_GROUP, EffectTable

log = logging.getLogger(__name__)

SCALES = (0.0, 0.25, 0.5, 1.0)  # the correction is validated at these scales (shrinkage toward the baseline)

__all__ = ["train_perturbation"]


def _check_targets_measured(adata, targets: Sequence[str], *, layer, use_raw: bool, gene_column) -> None:
    """Warn when fewer than half of the target genes are measured genes (e.g. symbols as targets, Ensembl ids as
    var_names): their knock-down is then no gene expression the model sees. Names a var column holding more."""
    from ..data.io import select_matrix

    if not targets:
        return
    in_use = select_matrix(adata, layer=layer, use_raw=use_raw, gene_column=gene_column).var_names.astype(str)
    measured = set(in_use)
    found = sum(t in measured for t in targets)
    if found >= 0.5 * len(targets):
        return
    from ..data.corpus_vocab import is_ensembl
    from ..data.validate import column_matching_most, name_columns

    var = select_matrix(adata, layer=layer, use_raw=use_raw).var
    columns = [c for c in name_columns(var) if c != gene_column]
    best, best_n = column_matching_most(var, lambda values: len(set(targets) & set(values)), above=found,
                                        skip=in_use)  # never the column of the names in use
    ids = is_ensembl(targets).mean() > 0.5  # else: the targets are symbols
    same_kind = [c for c in columns if (is_ensembl(var[c].astype(str)[:200]).mean() > 0.5) == ids]
    kind = "Ensembl ids" if ids else "gene symbols"
    if best is not None:
        hint = f" var column {best!r} holds {best_n} of them: pass --gene-column {best} (gene_column={best!r})."
    elif (is_ensembl(sorted(measured)[:200]).mean() > 0.5) != ids and same_kind:
        hint = (f" The targets are {kind}, the genes are not; var column {same_kind[0]!r} holds {kind}: pass "
                f"--gene-column {same_kind[0]} (gene_column={same_kind[0]!r}).")
    else:
        hint = (" Check that the perturbation labels and the genes use the same kind of name (symbols vs Ensembl "
                "ids), or pass --gene-column (gene_column=) with a var column that does.")
    shown = ", ".join(list(targets)[:3])
    log.warning("only %d of the %d perturbation targets (e.g. %s) are among the %d measured genes (named like %s): "
                "the model cannot see a target's own expression change.%s", found, len(targets), shown,
                len(measured), ", ".join(sorted(measured)[:3]), hint)


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
    gene_knowledge: str = "pca",
    val_fraction: float = 0.25,
    n_val_controls: int = 48,
    out_dir: str | Path | None = None,
) -> PerturbationModel:
    """Train a perturbation-response model: baseline + learned correction (see :mod:`scmamba2.tasks.perturb`).

    Parameters
    ----------
    adata
        Cells x genes, raw counts or log-normalised, with the perturbation of each cell in ``obs``.
    perturbation_key, control, kind
        See :func:`~scmamba2.data.perturb.parse_perturbations` (GEARS: ``condition``, ``ctrl``).
    holdout, test_fraction
        Perturbations left out of training: exactly ``holdout``, or a seeded ``test_fraction`` of them (see
        :func:`~scmamba2.data.perturb.split_perturbations`); their cells are never used.
    match_key
        ``obs`` column for control matching: a perturbed cell is paired with controls of its own group
        (cell type, replicate), and effects are taken within each group. For ``kind="condition"`` with two or
        more groups the correction learns to transfer a condition to a group it was not measured in.
    model
        A pretrained model (object or checkpoint directory) to start from; every target gene must be in its
        vocabulary. Default: a small new model (vocabulary = panel + target genes).
    model_config
        :class:`~scmamba2.ModelConfig` fields for a new model (default ``SMALL_MODEL``).
    train_config
        :class:`~scmamba2.train.config.TrainConfig` (steps, batch size, learning rate, seed; the validation
        units are scored every ``val_every_n_steps``).
    extra_targets
        Genes to give a token in a new model's vocabulary besides the panel and the data's targets (the
        targets of perturbations you will predict later; with a pretrained model they must be in its vocabulary).
    anonymise
        Fraction of training pairs whose targets enter as flagged ``<mask>`` tokens (no gene identity), so
        the model learns a generic perturbation for targets whose token it never trained.
    target_cells
        Training target = the mean of this many cells of the same perturbation (and group).
    gene_knowledge
        ``"pca"``: the correction also reads the targets' PCA gene embedding (co-expression over the training
        effects, as the linear baseline); ``"none"``: only the model's own gene embeddings (the flags).
    val_fraction
        Fraction of the training perturbations (with ``by="group"``: of the groups) whose perturbed cells the
        correction never trains on; it is kept only when it beats the baseline on them. They stay in the
        baseline. Fewer than three perturbations (two groups): no validation, no correction.
    n_val_controls
        Control cells per validation unit.
    n_top_genes
        Panel = this many highly variable genes of the training cells (default here: every gene; the CLI's
        default is 2,000, as the other tasks). Targets outside the panel keep their vocabulary token.
    out_dir
        Save the model there.
    """
    from ..train.config import TrainConfig
    from .embed import load_model

    if gene_knowledge not in KNOWLEDGE:
        raise InputError(f"gene_knowledge={gene_knowledge!r}: use one of {KNOWLEDGE}")
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
    genes, every_gene = None, True
    if n_top_genes is not None:
        from ..data.io import select_matrix
        from ..data.preprocess import select_hvg

        selected = select_matrix(data, layer=layer, use_raw=use_raw, gene_column=gene_column)
        every_gene = selected.n_vars <= n_top_genes
        genes = list(select_hvg(selected, n_top_genes, flavor="seurat").var_names)
    X, genes, _ = panel_matrix(data, genes, layer=layer, use_raw=use_raw, gene_column=gene_column)
    log.info("gene panel: %s (%d genes)", "every gene" if every_gene else
             f"the {n_top_genes} most variable genes (n_top_genes / --n-top-genes; 0 on the CLI = every gene)",
             len(genes))
    if len(genes) > 2000:
        log.warning("the gene panel has %d genes: every cell becomes a sequence that long (slow); consider "
                    "n_top_genes (--n-top-genes) of 500-2000", len(genes))
    names = labels.names[keep].astype(str)
    is_ctrl = names == control
    groups = None if match_key is None else data.obs[match_key].astype(str).to_numpy()

    targets = {p: list(labels.targets(p)) for p in labels.perturbations} if kind == "genetic" else {}
    all_targets = sorted({g for t in targets.values() for g in t} | set(map(str, extra_targets)))
    _check_targets_measured(data, all_targets, layer=layer, use_raw=use_raw, gene_column=gene_column)
    base = load_model(model) if model is not None else None
    vocab = _vocab(genes, all_targets, base)
    conditions = [control] + labels.perturbations if kind == "condition" else []
    # input_genes "all": a perturbation model reads its own gene panel (genes below), whatever the base read.
    changes = dict(value_mode="continuous", mvc=False, batch_embedding=False, dsbn=False, dab=False, input_genes="all",
                   n_pert_flags=2 if kind == "genetic" else 0, n_conditions=len(conditions),
                   max_len=len(genes) + 1 + max([len(t) for t in targets.values()] + [0]))
    torch.manual_seed(tcfg.seed)
    if base is None:
        cfg = ModelConfig(vocab_size=len(vocab), **{**SMALL_MODEL, **(model_config or {}), **changes})
        net = ScMamba2(cfg, vocab=vocab)
    else:
        net = base.adapt(vocab=vocab, **changes)

    # The baseline: effects of every training perturbation; the correction trains without the validation units.
    rng = np.random.default_rng(tcfg.seed)
    pert_groups = [] if groups is None else sorted(set(groups[~is_ctrl].tolist()) & set(groups[is_ctrl].tolist()))
    by = "group" if kind == "condition" and len(pert_groups) >= 2 else "perturbation"
    val_perts, val_groups = _validation(train_perts, targets, pert_groups, by, val_fraction, rng)
    unit_group = groups if groups is not None else np.full(len(names), NO_GROUP)
    in_val = (np.isin(names, val_perts) | (np.isin(unit_group, val_groups) & ~is_ctrl))
    effects = EffectTable.from_cells(X, names, groups, control, targets=targets, by=by)
    fit_effects = EffectTable.from_cells(X[~in_val], names[~in_val], None if groups is None else groups[~in_val],
                                         control, targets=targets, by=by)
    fit_perts = [p for p in train_perts if p in set(fit_effects.names)]
    val_units = sorted({(n, g) for n, g in zip(names[in_val].tolist(), unit_group[in_val].tolist())})

    meta = PerturbMeta(key=perturbation_key, control=control, kind=kind, genes=genes,
                       perturbations=labels.perturbations, train_perturbations=train_perts, targets=targets,
                       conditions=conditions, control_mean=X[is_ctrl].mean(0).tolist(),
                       match_key=match_key, split=split["split"].to_dict(), gene_knowledge=gene_knowledge,
                       validation=[list(u) for u in val_units])
    meta.flagged_genes = sorted({g for p in fit_perts for g in targets.get(p, [])})
    if base is None:
        meta.untrained_genes = sorted(set(all_targets) - set(genes) - set(meta.flagged_genes))
    knowledge = None
    if gene_knowledge == "pca" and kind == "genetic" and len(fit_perts) >= 2:
        knowledge = pca_gene_embedding(np.stack([fit_effects.effect(p) for p in fit_perts]), 10)
        meta.knowledge_dim = int(knowledge.shape[1])
    head = CorrectionHead(net.config.d_model, len(genes), knowledge, hidden=meta.head_hidden)
    ctrl_rows = np.flatnonzero(is_ctrl)
    stored = np.sort(rng.choice(ctrl_rows, min(n_stored_controls, len(ctrl_rows)), replace=False))
    pm = PerturbationModel(net, meta, X[stored], None if groups is None else groups[stored], head=head,
                           effects=effects)

    # Training pairs (validation units' perturbed cells left out), each with its control level + honest baseline.
    fit = ~in_val
    Xf, nf = X[fit], names[fit]
    gf = None if groups is None else groups[fit]
    order = [control] + fit_perts
    tokens = [pm.tokens(p)[:2] if kind == "genetic" else (np.zeros(0, np.int64),) * 2 for p in order]
    pert_index = pd.Index(order).get_indexer(nf)
    unit_f = unit_group[fit]
    honest = {u: fit_effects.control_mean(u[1] if groups is not None else None)
              + fit_effects.baseline(u[0], u[1] if groups is not None else None, honest=True)
              for u in set(zip(nf.tolist(), unit_f.tolist()))}
    cell_base = np.stack([honest[u] for u in zip(nf.tolist(), unit_f.tolist())]).astype(np.float32)
    cell_z = None
    if head.k:
        pert_z = np.stack([head.target_knowledge(t[0]).numpy() for t in tokens])
        cell_z = pert_z[pert_index]
    condition = pd.Index(conditions).get_indexer(nf) if kind == "condition" else None
    ds = PairDataset(Xf, pert_index, tokens, control_pools(nf == control, gf), vocab.lookup(genes), vocab.cls_id,
                     condition=condition, seed=tcfg.seed, anonymise=anonymise if kind == "genetic" else 0.0,
                     mask_id=vocab.mask_id, target_cells=target_cells,
                     target_pool=same_pools(nf if gf is None else np.char.add(nf.astype(str), "|" + gf)))
    loader = torch.utils.data.DataLoader(ds, batch_size=tcfg.batch_size, shuffle=True,
                                         drop_last=len(ds) > tcfg.batch_size,
                                         collate_fn=PairCollator(vocab.pad_id),
                                         generator=torch.Generator().manual_seed(tcfg.seed))
    validate = None
    if val_units:
        validate = _validator(pm, fit_effects, X, names, unit_group, groups is not None, val_units, n_val_controls,
                              rng)
    record = train_correction(net, head, loader, ds, cell_base=cell_base, cell_z=cell_z, n_panel=len(genes),
                              tcfg=tcfg, validate=validate)
    meta.correction = record
    log.info("correction %s (%s)", "accepted" if record["accepted"] else "not accepted",
             record.get("reason", f"best validation step {record.get('best_step')}"))
    net.eval()
    if out_dir is not None:
        pm.save(out_dir)
    return pm


def _validation(train_perts: list[str], targets: dict, pert_groups: list[str], by: str, fraction: float,
                rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Seeded validation perturbations (``by="perturbation"``; a combination follows a validation gene) or
    groups (``by="group"``). None when there are too few to hold any out."""
    if by == "group":
        n = max(1, int(round(fraction * len(pert_groups))))
        return [], sorted(rng.choice(pert_groups, min(n, len(pert_groups) - 1), replace=False).tolist())
    if len(train_perts) < 3 or fraction <= 0:
        return [], []
    n = max(1, int(round(fraction * len(train_perts))))
    val = set(rng.choice(train_perts, n, replace=False).tolist())
    genes = {targets[p][0] for p in val if len(targets.get(p, ())) == 1}
    val |= {p for p in train_perts if len(targets.get(p, ())) > 1 and genes & set(targets[p])}
    if len(val) >= len(train_perts) - 1:
        return [], []
    return sorted(val), []


def _validator(pm: PerturbationModel, fit_effects: EffectTable, X: np.ndarray, names: np.ndarray,
               unit_group: np.ndarray, matched: bool, units: list[tuple[str, str]], n_controls: int,
               rng: np.random.Generator):
    """A function scoring the current correction on the validation units (mean over units), for each scale
    of the correction in ``SCALES`` (0: the baseline)."""
    control = pm.meta.control
    panel_ids = pm.model.vocab.lookup(pm.meta.genes)
    prepared = []
    for name, group in units:
        rows = (names == name) & (unit_group == group)
        ctrl_rows = np.flatnonzero((names == control) & ((unit_group == group) if matched else True))
        ctrl = X[ctrl_rows]
        C = X[np.sort(rng.choice(ctrl_rows, min(n_controls, len(ctrl_rows)), replace=False))]
        g = group if matched else None
        level = fit_effects.control_mean(g)
        prepared.append(dict(name=name, group=group, C=C, level=level, base=fit_effects.baseline(name, g),
                             true=X[rows].mean(0), ctrl_mean=ctrl.mean(0), de=top_de_genes(X[rows], ctrl, 20),
                             w=deg_weights(X[rows], ctrl)))

    def correction(name: str, C: np.ndarray) -> np.ndarray:
        flag_pos, extra, cond = pm.tokens(name)
        return mean_correction(pm.model, pm.head, C, panel_ids, flag_pos=flag_pos, extra_ids=extra, condition=cond)

    def validate() -> dict[float, dict]:
        scores = {a: [] for a in SCALES}
        ctrl_corr = {}
        for u in prepared:
            if u["group"] not in ctrl_corr:
                ctrl_corr[u["group"]] = correction(control, u["C"])
            corr = correction(u["name"], u["C"]) - ctrl_corr[u["group"]]
            for a in SCALES:
                m = perturbation_metrics(u["level"] + u["base"] + a * corr, u["true"], u["ctrl_mean"], u["de"],
                                         weights=u["w"])
                scores[a].append((m["wmse"], m["pearson_delta_de20"]))
        out = {}
        for a, v in scores.items():
            arr = np.nan_to_num(np.asarray(v, np.float64))
            out[a] = {"wmse": float(arr[:, 0].mean()), "pearson_delta_de20": float(arr[:, 1].mean()),
                      "n_units": len(arr), "scale": a}
        return out

    return validate
