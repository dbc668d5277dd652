"""Perturbation data: parse conditions, split by perturbation, pair control and perturbed cells.

A perturbation column holds GEARS-style labels (``ctrl``, ``GENE``, ``GENE+ctrl``, ``GENE1+GENE2``) or, for
non-genetic perturbations (a drug, a cytokine), any label with one value naming the control. Genetic labels
are reduced to a canonical name: the target genes, sorted, joined by ``+`` (``ctrl+B+A`` -> ``A+B``).

The model sees a *control* cell (every gene of a fixed panel, zeros included) with the perturbed genes
flagged, and learns to output a *perturbed* cell's expression over the panel (:class:`PairDataset`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .._keys import (CELL_INDEX, CLS_VALUE, CONDITION, GENES, MASK, MASK_VALUE, PERT_FLAGS, TARGET_VALUES,
                     VALUES)
from ..errors import InputError
from .collate import Collator

log = logging.getLogger(__name__)

__all__ = ["PerturbationLabels", "parse_condition", "perturbation_name", "parse_perturbations",
           "split_perturbations", "PairDataset", "PairCollator", "pair_item"]

GEARS_FILLER = "ctrl"  # GEARS writes singles as "GENE+ctrl": "ctrl" is never a gene
KINDS = ("genetic", "condition")


def parse_condition(label: str, control: str = GEARS_FILLER, sep: str = "+") -> tuple[str, ...]:
    """Target genes of one label, sorted and unique; ``()`` for the control.

    ``"ctrl"`` and ``control`` are dropped wherever they appear (``"A+ctrl"`` -> ``("A",)``).
    """
    parts = (p.strip() for p in str(label).split(sep))
    return tuple(sorted({p for p in parts if p and p not in (control, GEARS_FILLER)}))


def perturbation_name(genes: Sequence[str], control: str = GEARS_FILLER, sep: str = "+") -> str:
    """Canonical name of a gene set: sorted genes joined by ``sep``, or ``control`` for none."""
    genes = sorted(set(genes))
    return sep.join(genes) if genes else control


@dataclass
class PerturbationLabels:
    """The perturbation of every cell, parsed.

    ``names`` holds one canonical name per cell (the control's name for control cells); ``genes`` maps each
    genetic perturbation to its target genes (empty for ``kind="condition"``).
    """

    key: str
    control: str
    kind: str
    names: np.ndarray  # (n_cells,) object
    genes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def is_control(self) -> np.ndarray:
        return self.names == self.control

    @property
    def perturbations(self) -> list[str]:
        """Every perturbation present, control excluded, sorted."""
        return sorted(set(self.names[~self.is_control].tolist()))

    def targets(self, name: str) -> tuple[str, ...]:
        return self.genes.get(name, ())


def parse_perturbations(adata, key: str, control: str = GEARS_FILLER, *, kind: str = "genetic",
                        sep: str = "+") -> PerturbationLabels:
    """Parse ``adata.obs[key]`` into canonical perturbation names.

    Parameters
    ----------
    adata
        AnnData (only ``obs`` is read) or a DataFrame of obs.
    key
        The perturbation column (GEARS: ``condition``).
    control
        The label of unperturbed cells (GEARS: ``ctrl``; e.g. ``non-targeting``, ``control``, ``ctrl``).
    kind
        ``"genetic"``: labels name target genes (``A``, ``A+B``); ``"condition"``: labels are opaque (a drug).
    sep
        Separator of combined targets.

    Raises
    ------
    InputError
        The column is missing or has missing values, or no cell carries the control label.
    """
    if kind not in KINDS:
        raise InputError(f"kind={kind!r}: use 'genetic' (labels name target genes) or 'condition' (drug, cytokine)")
    obs = adata if isinstance(adata, pd.DataFrame) else adata.obs
    if key not in obs.columns:
        raise InputError(f"perturbation column {key!r} (--perturbation-key) is not in obs; obs has: "
                         f"{list(obs.columns)}")
    raw = obs[key]
    if raw.isna().any():
        raise InputError(f"obs[{key!r}] has {int(raw.isna().sum())} missing values; label every cell (the "
                         f"control cells with {control!r}) or drop the unlabelled cells first")
    raw = raw.astype(str).to_numpy()
    uniq = pd.unique(raw)
    if kind == "condition":
        names = raw.astype(object)
        genes: dict[str, tuple[str, ...]] = {}
    else:
        parsed = {u: parse_condition(u, control, sep) for u in uniq}
        canon = {u: perturbation_name(g, control, sep) for u, g in parsed.items()}
        names = np.array([canon[u] for u in raw], dtype=object)
        genes = {canon[u]: g for u, g in parsed.items() if g}
    if not (names == control).any():
        top = pd.Series(raw).value_counts().head(8).index.tolist()
        raise InputError(f"no cell of obs[{key!r}] is labelled as the control {control!r}; the most frequent "
                         f"labels are {top}: pass the control's label (--control)")
    return PerturbationLabels(key=key, control=control, kind=kind, names=names, genes=genes)


def split_perturbations(labels: PerturbationLabels, *, test_fraction: float = 0.2, val_fraction: float = 0.0,
                        holdout: Sequence[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """Assign whole perturbations to ``train`` / ``val`` / ``test``, seeded.

    Genetic: single-gene perturbations are drawn into test (``test_fraction`` of them, or exactly
    ``holdout``) and val; a gene held out this way never carries a flag in training, so every combination
    containing it follows it (to test before val). The remaining combinations are drawn into test / val by
    the same fractions. Each held-out perturbation gets a ``category``: ``unseen_single`` or
    ``combo_seen{k}`` (``k`` of its genes carry a flag in some training perturbation); training ones ``train``.
    Condition kind: perturbations are drawn at random, category ``unseen``.

    Returns
    -------
    DataFrame indexed by perturbation name with columns ``split`` and ``category`` (the control excluded).
    """
    for name, f in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= f < 1.0:
            raise InputError(f"{name}={f} must be in [0, 1)")
    rng = np.random.default_rng(seed)
    perts = labels.perturbations
    split = dict.fromkeys(perts, "train")
    fixed = set()
    if holdout:
        canon = [_canonical(h, labels) for h in holdout]
        unknown = [h for h, c in zip(holdout, canon) if c not in split]
        if unknown:
            raise InputError(f"held-out perturbation(s) {unknown} are not in obs[{labels.key!r}]; known: "
                             f"{perts[:12]}{' ...' if len(perts) > 12 else ''}")
        for c in canon:
            split[c] = "test"
            fixed.add(c)

    def draw(pool: list[str]) -> None:
        pool = [p for p in pool if p not in fixed]
        if holdout:  # exactly the user's choice goes to test; val still drawn
            n_test = 0
        else:
            n_test = int(round(test_fraction * len(pool)))
            if test_fraction > 0 and n_test == 0 and len(pool) > 1:
                n_test = 1
        n_val = int(round(val_fraction * len(pool)))
        order = rng.permutation(len(pool))
        for j, i in enumerate(order):
            split[pool[i]] = "test" if j < n_test else "val" if j < n_test + n_val else "train"

    if labels.kind == "condition":
        draw(perts)
        category = {p: "train" if s == "train" else "unseen" for p, s in split.items()}
        return _frame(split, category)
    singles = [p for p in perts if len(labels.targets(p)) == 1]
    combos = [p for p in perts if len(labels.targets(p)) > 1]
    draw(singles)
    held = {s: {labels.targets(p)[0] for p in singles if split[p] == s} for s in ("test", "val")}
    free = []
    for p in combos:
        g = set(labels.targets(p))
        if p in fixed:
            continue
        if g & held["test"]:
            split[p] = "test"
        elif g & held["val"]:
            split[p] = "val"
        else:
            free.append(p)
    draw(free)
    seen = {g for p in perts if split[p] == "train" for g in labels.targets(p)}
    category = {}
    for p in perts:
        g = labels.targets(p)
        if split[p] == "train":
            category[p] = "train"
        elif len(g) == 1:
            category[p] = "seen_single" if g[0] in seen else "unseen_single"
        else:
            category[p] = f"combo_seen{sum(x in seen for x in g)}"
    return _frame(split, category)


def _canonical(name: str, labels: PerturbationLabels) -> str:
    if labels.kind == "condition":
        return str(name)
    return perturbation_name(parse_condition(name, labels.control), labels.control)


def _frame(split: dict[str, str], category: dict[str, str]) -> pd.DataFrame:
    df = pd.DataFrame({"split": pd.Series(split), "category": pd.Series(category)})
    df.index.name = "perturbation"
    return df


# ------------------------------------------------------------------------------------------------- pairs
def pair_item(control_values: np.ndarray, panel_ids: np.ndarray, cls_id: int, *, flag_pos: np.ndarray,
              extra_ids: np.ndarray, target_values: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One model input: ``<cls>``, the panel genes with the control cell's values, then the target genes that
    are not in the panel (value ``MASK_VALUE``: unmeasured). Flags are 1 on every perturbed gene.

    ``MASK`` marks the panel positions, the expression loss's targets (``target_values``, the perturbed cell).
    """
    n_panel, n_extra = len(panel_ids), len(extra_ids)
    length = 1 + n_panel + n_extra
    genes = np.empty(length, dtype=np.int64)
    genes[0], genes[1:1 + n_panel], genes[1 + n_panel:] = cls_id, panel_ids, extra_ids
    values = np.full(length, MASK_VALUE, dtype=np.float32)
    values[0] = CLS_VALUE
    values[1:1 + n_panel] = control_values
    flags = np.zeros(length, dtype=np.int64)
    flags[1 + np.asarray(flag_pos, dtype=np.int64)] = 1
    flags[1 + n_panel:] = 1
    mask = np.zeros(length, dtype=bool)
    mask[1:1 + n_panel] = True
    target = np.zeros(length, dtype=np.float32)
    if target_values is not None:
        target[1:1 + n_panel] = target_values
    return {GENES: genes, VALUES: values, TARGET_VALUES: target, MASK: mask, PERT_FLAGS: flags}


class PairDataset(Dataset):
    """(control cell, perturbed cell) pairs over a fixed gene panel.

    Parameters
    ----------
    X
        ``(n_cells, n_panel)`` float32 log1p-normalised expression of every cell (controls included).
    pert_index
        ``(n_cells,)`` index of each cell's perturbation into ``tokens`` (the control's entry has no flags).
    tokens
        Per perturbation ``(flag_pos, extra_ids)``: panel positions of its target genes, and vocabulary ids
        of its target genes outside the panel.
    control_pool
        Per cell, the rows of ``X`` its control partner is drawn from (same group under control matching).
    panel_ids, cls_id
        Vocabulary ids of the panel genes and of ``<cls>``.
    condition
        ``(n_cells,)`` condition index (non-genetic perturbations), or None.
    seed
        Partners are drawn from ``(seed, epoch, cell)``: the same pairs for the same seed and epoch.
    target_pool, target_cells
        Per cell, the rows of its own perturbation (and group); with ``target_cells > 1`` the target is the
        mean of the cell and ``target_cells - 1`` others drawn from its pool: the same expected value (the
        perturbation's mean profile) with less cell-to-cell noise, so the mean shift is learned in fewer steps.
    anonymise, mask_id
        Probability that a perturbed cell's targets enter as flagged ``mask_id`` tokens without panel flags
        (no gene identity: the model learns a generic perturbation), drawn with the partner.
    """

    def __init__(self, X: np.ndarray, pert_index: np.ndarray, tokens: list[tuple[np.ndarray, np.ndarray]],
                 control_pool: list[np.ndarray], panel_ids: np.ndarray, cls_id: int, *,
                 condition: np.ndarray | None = None, seed: int = 0, anonymise: float = 0.0, mask_id: int = 3,
                 target_pool: list[np.ndarray] | None = None, target_cells: int = 1):
        if len(pert_index) != len(X) or len(control_pool) != len(X):
            raise ValueError("X, pert_index and control_pool need one entry per cell")
        self.X, self.pert_index, self.tokens = X, np.asarray(pert_index), tokens
        self.control_pool, self.panel_ids, self.cls_id = control_pool, panel_ids, int(cls_id)
        self.condition = None if condition is None else np.asarray(condition, dtype=np.int64)
        self.seed, self.epoch = int(seed), 0
        self.anonymise, self.mask_id = float(anonymise), int(mask_id)
        if target_cells > 1 and (target_pool is None or len(target_pool) != len(X)):
            raise ValueError("target_cells > 1 needs a target_pool with one entry per cell")
        self.target_pool, self.target_cells = target_pool, int(target_cells)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pool = self.control_pool[i]
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        partner = pool[rng.integers(len(pool))]
        flag_pos, extra_ids = self.tokens[self.pert_index[i]]
        if self.anonymise > 0 and rng.random() < self.anonymise and len(flag_pos) + len(extra_ids):
            extra_ids = np.full(len(flag_pos) + len(extra_ids), self.mask_id, dtype=np.int64)
            flag_pos = np.zeros(0, dtype=np.int64)
        target = self.X[i]
        if self.target_cells > 1:
            others = self.target_pool[i][rng.integers(len(self.target_pool[i]), size=self.target_cells - 1)]
            target = (target + self.X[others].sum(0)) / self.target_cells
        item = pair_item(self.X[partner], self.panel_ids, self.cls_id, flag_pos=flag_pos, extra_ids=extra_ids,
                         target_values=target)
        item[CELL_INDEX] = int(i)
        if self.condition is not None:
            item[CONDITION] = int(self.condition[i])
        return item


class PairCollator:
    """Pads :func:`pair_item` dicts into a batch: the keys of :class:`~scmamba2.data.collate.Collator`
    (``GENES``, ``VALUES``, ``PADDING_MASK``, ``CELL_INDEX``) plus ``TARGET_VALUES``, ``MASK``, ``PERT_FLAGS``
    (padded with 0 / False) and ``CONDITION`` when the items have it."""

    def __init__(self, pad_id: int, pad_to_multiple: int = 1):
        self.base = Collator(pad_id=pad_id, pad_to_multiple=pad_to_multiple)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.base(items)
        width = batch[GENES].shape[1]
        for key, dtype in ((TARGET_VALUES, np.float32), (MASK, bool), (PERT_FLAGS, np.int64)):
            arr = np.zeros((len(items), width), dtype=dtype)
            for r, it in enumerate(items):
                arr[r, : len(it[key])] = it[key]
            batch[key] = torch.from_numpy(arr)
        if all(CONDITION in it for it in items):
            batch[CONDITION] = torch.tensor([int(it[CONDITION]) for it in items], dtype=torch.int64)
        return batch


def same_pools(keys: np.ndarray) -> list[np.ndarray]:
    """Per cell, the rows that share its key (e.g. perturbation and group)."""
    keys = np.asarray(keys).astype(str)
    codes, uniq = pd.factorize(keys)
    rows = [np.flatnonzero(codes == k) for k in range(len(uniq))]
    return [rows[c] for c in codes]


def control_pools(is_control: np.ndarray, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Per cell, the control rows it may be paired with: every control, or the controls of its own group.

    Raises
    ------
    InputError
        A group (under control matching) has no control cell.
    """
    ctrl = np.flatnonzero(is_control)
    if groups is None:
        return [ctrl] * len(is_control)
    groups = np.asarray(groups).astype(str)
    by_group = {g: ctrl[groups[ctrl] == g] for g in np.unique(groups)}
    empty = sorted(g for g, rows in by_group.items() if len(rows) == 0)
    if empty:
        raise InputError(f"control matching: group(s) {empty[:8]} have no control cell; match on a coarser "
                         "column, or drop those cells")
    return [by_group[g] for g in groups]
