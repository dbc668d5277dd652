"""The gene panel of the whole-profile objective: which genes the cell embedding must reconstruct, and how.

The profile decoder (:class:`~scmamba2.nn.heads.ProfileHead`) predicts, from the cell embedding alone, every
panel gene of the cell, zeros included: the cell's ``log1p`` normalised expression, standardised per gene
with the panel's mean and standard deviation (what a PCA of scaled log-normalised data sees). Unlike a loss
on masked expressed tokens, this asks the embedding which genes are *off* as well as how high the others are.

The statistics are computed once from the training cells (vectorised over the flat token arrays) and saved
with the model (buffers of the head). Cells pooled from sources that did not measure a panel gene get NaN as
its target, which the loss skips: an unmeasured gene is not a zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .tokenize import TokenizedCells

log = logging.getLogger(__name__)

__all__ = ["GenePanel", "select_panel", "refit_panel", "panel_targets", "panel_index", "gene_moments",
           "panel_from_moments", "training_panel"]


@dataclass
class GenePanel:
    """``ids`` (P,) vocabulary ids; ``mean``, ``std`` (P,) float32 of the log-normalised values over cells."""

    ids: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def _check_continuous(cells: TokenizedCells) -> None:
    if cells.config.value_mode != "continuous":
        raise InputError(
            "The whole-profile objective reconstructs log-normalised expression, but these cells were tokenised "
            "with value_mode='binned'. Use TokenizerConfig(value_mode='continuous') (the pretraining default), "
            "or build the model with profile_genes=0."
        )


def _gene_moments(cells: TokenizedCells, vocab_size: int, group: np.ndarray | None,
                  measured: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per vocabulary id: number of cells that measured it, sum and sum of squares of its values there."""
    v = cells.values.astype(np.float64)
    if group is None:
        n = np.full(vocab_size, float(len(cells)))
    else:  # cells per group x which vocabulary ids the group measured; tokens of unmeasured genes ignored
        per_group = np.bincount(group, minlength=measured.shape[0]).astype(np.float64)
        n = per_group @ measured.astype(np.float64)
        token_group = np.repeat(group, np.diff(cells.offsets))
        v = np.where(measured[token_group, cells.gene_ids], v, 0.0)
    s1 = np.bincount(cells.gene_ids, weights=v, minlength=vocab_size)
    s2 = np.bincount(cells.gene_ids, weights=v**2, minlength=vocab_size)
    return n, s1, s2


def gene_moments(cells: TokenizedCells, vocab_size: int, group: np.ndarray | None = None,
                 measured: np.ndarray | None = None) -> np.ndarray:
    """``(4, vocab_size)`` float64 sums over ``cells`` that :func:`panel_from_moments` chooses from: per
    vocabulary id the cells that measured it, the sum and sum of squares of its values there, and the cells
    that expressed it. Sums of disjoint sets of cells add up (a streamed corpus, block by block)."""
    _check_continuous(cells)
    n, s1, s2 = _gene_moments(cells, vocab_size, group, measured)
    expressed = np.bincount(cells.gene_ids[cells.values > 0], minlength=vocab_size).astype(np.float64)
    return np.stack([n, s1, s2, expressed])


PANEL_RULES = ("variance", "dispersion")
PANEL_MIN_CELLS = 10  # a panel gene is expressed in at least this many training cells


def _dispersion_score(mean: np.ndarray, var: np.ndarray, ok: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Normalised dispersion (the ``seurat`` HVG rule on the log-normalised values): ``log(var / mean)``,
    z-scored within ``n_bins`` equal-width, right-closed bins of the mean over the qualifying genes (a bin of one
    gene: 0)."""
    score = np.full(len(mean), -np.inf)
    idx = np.flatnonzero(ok & (mean > 0) & (var > 0))
    if len(idx) == 0:
        return score
    m = mean[idx]
    disp = np.log(var[idx] / m)
    edges = np.linspace(m.min(), m.max(), n_bins + 1)
    b = np.clip(np.searchsorted(edges, m, side="left") - 1, 0, n_bins - 1)  # right-closed bins, as pandas.cut
    z = np.zeros(len(idx))
    for k in np.unique(b):
        sel = b == k
        if sel.sum() > 1 and disp[sel].std(ddof=1) > 0:
            z[sel] = (disp[sel] - disp[sel].mean()) / disp[sel].std(ddof=1)
    score[idx] = z
    return score


def panel_from_moments(moments: np.ndarray, n_cells: int, n_genes: int, *, min_cells: int = PANEL_MIN_CELLS,
                       min_measured: float = 0.5, rule: str = "variance") -> GenePanel:
    """The ``n_genes`` most variable genes by :func:`gene_moments` sums over ``n_cells`` cells (the rule of
    :func:`select_panel`)."""
    if n_genes < 1:
        raise ValueError(f"n_genes={n_genes} must be >= 1")
    if rule not in PANEL_RULES:
        raise ValueError(f"panel rule {rule!r}: choose one of {PANEL_RULES}")
    n, s1, s2, expressed = moments
    ok = (expressed >= min_cells) & (n >= min_measured * n_cells) & (n > 1)
    ok[:4] = False  # special tokens
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s1 / np.maximum(n, 1), 0.0)
        var = np.where(n > 1, s2 / np.maximum(n, 1) - mean**2, 0.0)
    score = np.where(ok, var, -np.inf) if rule == "variance" else _dispersion_score(mean, var, ok)
    ok &= np.isfinite(score)
    cand = np.flatnonzero(ok)
    if len(cand) == 0:
        raise InputError(f"No gene is expressed in at least {min_cells} training cells: cannot choose a gene panel "
                         "for the profile objective (use more cells, or profile_genes=0).")
    top = cand[np.lexsort((cand, -score[cand]))][:n_genes]
    ids = np.sort(top)
    std = np.sqrt(np.maximum(var[ids], 0.0))
    return GenePanel(ids=ids.astype(np.int64), mean=mean[ids].astype(np.float32),
                     std=np.maximum(std, 1e-3).astype(np.float32))


def select_panel(cells: TokenizedCells, vocab_size: int, n_genes: int, *, group: np.ndarray | None = None,
                 measured: np.ndarray | None = None, min_cells: int = PANEL_MIN_CELLS,
                 min_measured: float = 0.5, rule: str = "variance") -> GenePanel:
    """The ``n_genes`` most variable genes of ``cells`` (``rule="variance"``: variance of the log-normalised value
    over the cells that measured the gene, zeros included; ``"dispersion"``: that variance over the mean, z-scored
    among genes of similar mean, as scanpy's ``seurat`` HVG flavour, which also ranks markers of rare cell types
    high), with their mean and standard deviation.

    Parameters
    ----------
    cells
        Training cells, tokenised with ``value_mode="continuous"``.
    vocab_size
        Size of the vocabulary the ids refer to.
    n_genes
        Panel size (fewer when fewer genes qualify).
    group, measured
        For pooled sources: ``group`` (N,) source index of each cell, ``measured`` (n_sources, vocab_size) bool
        whether the source measured each gene. Default: every cell measured every gene.
    min_cells
        Genes expressed in fewer cells are left out.
    min_measured
        Genes measured in fewer than this share of the cells are left out.
    """
    if n_genes < 1:
        raise ValueError(f"n_genes={n_genes} must be >= 1")
    return panel_from_moments(gene_moments(cells, vocab_size, group, measured), len(cells), n_genes,
                              min_cells=min_cells, min_measured=min_measured, rule=rule)


def panel_targets(gene_ids: np.ndarray, values: np.ndarray, panel_index: np.ndarray, mean: np.ndarray,
                  std: np.ndarray, measured: np.ndarray | None = None) -> np.ndarray:
    """``(P,)`` standardised targets of one cell from its stored tokens.

    ``panel_index`` maps a vocabulary id to its panel position (-1 when not in the panel); genes without a
    token are zeros; ``measured`` (P,) bool False gives NaN (not measured by the cell's source).
    """
    raw = np.zeros(len(mean), dtype=np.float32)
    pos = panel_index[gene_ids]
    hit = pos >= 0
    raw[pos[hit]] = values[hit]
    z = (raw - mean) / std
    if measured is not None:
        z[~measured] = np.nan
    return z


def panel_index(panel_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """``(vocab_size,)`` panel position of each vocabulary id, -1 outside the panel."""
    index = np.full(vocab_size, -1, dtype=np.int64)
    index[np.asarray(panel_ids, dtype=np.int64)] = np.arange(len(panel_ids))
    return index


def refit_panel(cells: TokenizedCells, ids: np.ndarray, vocab_size: int, *, group: np.ndarray | None = None,
                measured: np.ndarray | None = None) -> GenePanel:
    """The panel ``ids`` with its mean and standard deviation recomputed on ``cells`` (fine-tuning a model on
    new data); a gene no cell measured keeps mean 0 and standard deviation 1 (its targets are NaN anyway)."""
    _check_continuous(cells)
    ids = np.asarray(ids, dtype=np.int64)
    n, s1, s2 = _gene_moments(cells, vocab_size, group, measured)
    n, s1, s2 = n[ids], s1[ids], s2[ids]
    mean = np.where(n > 0, s1 / np.maximum(n, 1), 0.0)
    std = np.where(n > 1, np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean**2, 0.0)), 1.0)
    return GenePanel(ids=ids, mean=mean.astype(np.float32), std=np.maximum(std, 1e-3).astype(np.float32))


def training_panel(train_cells: TokenizedCells, group, vocab, n_genes: int, measured_names, init,
                   min_measured: float = 0.5, rule: str = "variance",
                   few_fix: str = "Use more cells, or TrainConfig(finetune_panel='data') for a panel chosen on "
                                  "these cells."):
    """The gene panel a training run reconstructs (a new one of ``n_genes``, or, with ``init``, that model's
    with statistics refitted on ``train_cells``) and which panel genes each source measured: ``group`` (cells,)
    each cell's source and ``measured_names`` each source's gene names (a genome prefix such as ``GRCh38_`` is
    stripped, as the tokenizer does), or both None when every cell measured every gene (the second result is then
    None). ``few_fix``: the caller's advice when no panel gene can be a target."""
    from .validate import strip_gene_prefix

    measured_vocab = None
    if group is not None:
        measured_vocab = np.zeros((len(measured_names), len(vocab)), dtype=bool)
        for k, names in enumerate(measured_names):
            ids = vocab.lookup(strip_gene_prefix(sorted(names))[0])
            measured_vocab[k, ids[ids >= 0]] = True
    if init is not None:
        panel = refit_panel(train_cells, init.profile_head.gene_ids.numpy(), len(vocab), group=group,
                            measured=measured_vocab)
        if measured_vocab is not None:
            # A panel gene expressed in fewer new cells than a new panel would need (select_panel's min_cells) has
            # no usable statistics here (a standard deviation from one or two cells standardises a held-out cell's
            # value to hundreds): it is no target of this fine-tune, as an unmeasured gene.
            expressed = np.bincount(train_cells.gene_ids[train_cells.values > 0], minlength=len(vocab))[panel.ids]
            few = expressed < PANEL_MIN_CELLS
            if few.all():
                raise InputError(f"No gene of the model's panel is expressed in at least {PANEL_MIN_CELLS} of the "
                                 f"{len(train_cells)} training cells: the fine-tune would have no target. {few_fix}")
            if not measured_vocab[:, panel.ids].any():
                raise InputError(f"None of the {len(panel.ids)} genes of the model's panel is among the data's genes: "
                                 f"the fine-tune would have no target. {few_fix}")
            if few.any():
                measured_vocab[:, panel.ids[few]] = False
                (log.warning if few.mean() > 0.5 else log.info)(
                    "fine-tune: %d of %d panel genes are expressed in fewer than %d training cells and are no "
                    "targets", int(few.sum()), len(few), PANEL_MIN_CELLS)
    else:
        panel = select_panel(train_cells, len(vocab), n_genes, group=group, measured=measured_vocab,
                             min_measured=min_measured, rule=rule)
    return panel, None if measured_vocab is None else measured_vocab[:, panel.ids]
