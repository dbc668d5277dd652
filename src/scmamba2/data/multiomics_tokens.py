"""The joint tokenisation of multi-omics cells: the modality spec (features, vocabulary tokens, which ids
belong to which modality), one sequence per cell with the modalities concatenated, and the collator that adds
each token's modality index and the cross-modal masking. Re-exported by :mod:`scmamba2.data.multiomics`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .._keys import GENES, MASK, MASK_VALUE, MODALITY, PADDING_MASK, TARGET_VALUES, VALUES
from ..errors import CheckpointError
from .collate import Collator
from .tokenize import TokenizedCells, TokenizerConfig
from .vocab import GeneVocab

log = logging.getLogger(__name__)

__all__ = ["RNA", "PROT", "ATAC", "PREFIXES", "ModalitySpec", "MultiomicCollator", "joint_cells"]

RNA, PROT, ATAC = "rna", "prot", "atac"
PREFIXES = {RNA: "", PROT: "prot:", ATAC: "atac:"}


# ------------------------------------------------------------------------------------------------ vocabulary
@dataclass
class ModalitySpec:
    """The modalities of a model (index = modality id, 0 = RNA) and the features of the non-RNA ones.

    Saved beside the checkpoint; :meth:`check` verifies that a model's vocabulary holds every feature token.
    """

    modalities: list[str]
    features: dict[str, list[str]] = field(default_factory=dict)  # modality -> feature names, token order
    values: dict[str, str] = field(default_factory=dict)  # modality -> value transform ("clr", "binary", ...)

    def __post_init__(self) -> None:
        if not self.modalities or self.modalities[0] != RNA:
            raise ValueError(f"the first modality must be {RNA!r} (modality 0), got {self.modalities}")
        unknown = [m for m in self.modalities if m not in PREFIXES]
        missing = [m for m in self.modalities[1:] if not self.features.get(m)]
        if unknown or missing or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"bad modalities {self.modalities}: unknown {unknown}, without features {missing}")

    @property
    def others(self) -> list[str]:
        """The non-RNA modalities, in modality order."""
        return self.modalities[1:]

    def index(self, modality: str) -> int:
        return self.modalities.index(modality)

    def tokens(self, modality: str) -> list[str]:
        """Vocabulary tokens of a modality's features (``prot:CD3``, ...)."""
        return [PREFIXES[modality] + f for f in self.features[modality]]

    def extend(self, vocab: GeneVocab) -> GeneVocab:
        """``vocab`` with every feature token appended (tokens already there keep their ids)."""
        clash = [t for m in self.others for t in self.tokens(m) if t in vocab]
        if clash:
            log.info("%d feature tokens are in the vocabulary already (e.g. %s): their ids are kept", len(clash),
                     clash[:3])
        return vocab.extend(t for m in self.others for t in self.tokens(m))

    def token_ids(self, vocab: GeneVocab, modality: str) -> np.ndarray:
        ids = vocab.lookup(self.tokens(modality))
        if (ids < 0).any():
            raise CheckpointError(f"the vocabulary lacks {int((ids < 0).sum())} {modality} tokens")
        return ids

    def modality_of(self, vocab: GeneVocab) -> np.ndarray:
        """``(len(vocab),)`` int64: the modality index of every vocabulary id (genes and special tokens: 0)."""
        table = np.zeros(len(vocab), dtype=np.int64)
        for m in self.others:
            table[self.token_ids(vocab, m)] = self.index(m)
        return table

    def check(self, vocab: GeneVocab, n_modalities: int, source: str = "the checkpoint") -> None:
        """Raise :class:`~scmamba2.CheckpointError` unless the model fits this spec."""
        problems = []
        if n_modalities != len(self.modalities):
            problems.append(f"the model has {n_modalities} modality embeddings, the spec {len(self.modalities)} "
                            f"modalities {self.modalities}")
        for m in self.others:
            missing = [t for t in self.tokens(m) if t not in vocab]
            if missing:
                problems.append(f"{len(missing)} {m} tokens are not in vocab.json (e.g. {missing[:3]})")
        rna_named = [g for g in vocab.genes if any(g.startswith(p) for p in PREFIXES.values() if p)
                     and g not in {t for m in self.others for t in self.tokens(m)}]
        if rna_named:
            problems.append(f"vocab.json has prefixed tokens that belong to no modality of the spec: {rna_named[:3]}")
        if problems:
            raise CheckpointError(f"{source} does not fit its multi-omics spec: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModalitySpec":
        return cls(modalities=list(d["modalities"]), features={k: list(v) for k, v in d["features"].items()},
                   values=dict(d.get("values", {})))


# --------------------------------------------------------------------------------------------- tokenisation
def joint_cells(rna_cells: TokenizedCells, others: dict[str, np.ndarray], spec: ModalitySpec, vocab: GeneVocab,
                rna_max_len: int) -> TokenizedCells:
    """One sequence per cell: its RNA tokens (the ``rna_max_len`` highest values, ties by vocabulary id, in
    stored order), then every feature of each modality in ``others`` (in spec order) with its value.

    ``others`` maps a modality to a dense ``(n_cells, n_features)`` value matrix (``MASK_VALUE`` entries hide a
    value: e.g. the target modality at prediction time). The result never needs subsampling: its
    ``config.max_len`` is the longest sequence.
    """
    n = len(rna_cells)
    counts = np.diff(rna_cells.offsets)
    row = np.repeat(np.arange(n, dtype=np.int64), counts)
    g, v = rna_cells.gene_ids, rna_cells.values
    order = np.lexsort((g, -v, row))  # by cell, then decreasing value, then id
    rank = np.empty(len(g), dtype=np.int64)
    rank[order] = np.arange(len(g)) - rna_cells.offsets[row[order]]
    keep = rank < rna_max_len
    parts_row, parts_g, parts_v = [row[keep]], [g[keep]], [v[keep]]
    n_other = 0
    for m in spec.others:
        if m not in others:
            continue
        vals = np.asarray(others[m], dtype=np.float32)
        ids = spec.token_ids(vocab, m)
        if vals.shape != (n, len(ids)):
            raise ValueError(f"{m} values have shape {vals.shape}, expected {(n, len(ids))}")
        parts_row.append(np.repeat(np.arange(n, dtype=np.int64), len(ids)))
        parts_g.append(np.tile(ids, n))
        parts_v.append(vals.ravel())
        n_other += len(ids)
    all_row = np.concatenate(parts_row)
    by_cell = np.argsort(all_row, kind="stable")  # RNA first, then each modality, within a cell
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(all_row, minlength=n), out=offsets[1:])
    longest = int(np.diff(offsets).max(initial=0)) + 1
    cfg = TokenizerConfig(**{**rna_cells.config.to_dict(), "max_len": max(longest, 2), "subsample": "top"})
    return TokenizedCells(np.concatenate(parts_g)[by_cell], np.concatenate(parts_v)[by_cell], offsets, cfg,
                          cls_id=rna_cells.cls_id, seed=rna_cells.seed, cell_index=rna_cells.cell_index)


class MultiomicCollator(Collator):
    """:class:`~scmamba2.data.collate.Collator` that adds ``MODALITY`` and the cross-modal masking.

    Every cell gets the ordinary random masking (``mask_ratio`` of its tokens, all modalities alike); then,
    with probability ``cross_modal_prob``, a cell instead has every token outside ``source_modality`` (RNA)
    hidden and its source tokens all visible: the condition of predicting the other modalities from RNA
    alone. Of the hidden source tokens only a fraction ``source_target_fraction`` are loss targets (in
    ``MASK``); the others stay hidden as input noise. This weights the many RNA tokens down against the few
    protein tokens without a change to the losses. All draws come from the collator's seeded generator.

    Parameters
    ----------
    pad_id
        Vocabulary id of ``<pad>``.
    modality_of
        ``(vocab_size,)`` modality index of every vocabulary id (:meth:`ModalitySpec.modality_of`).
    mask_ratio, seed, pad_to_multiple
        As for :class:`~scmamba2.data.collate.Collator`.
    cross_modal_prob
        Fraction of cells (drawn per cell) whose non-source modalities are hidden entirely.
    source_modality
        The modality kept visible in those cells (0 = RNA).
    source_target_fraction
        Fraction of the hidden source-modality tokens that are targets (1: all).
    """

    def __init__(self, pad_id: int, modality_of: np.ndarray, *, mask_ratio: float = 0.0,
                 cross_modal_prob: float = 0.0, source_modality: int = 0, source_target_fraction: float = 1.0,
                 seed: int = 0, pad_to_multiple: int = 1) -> None:
        super().__init__(pad_id, mask_ratio=mask_ratio, seed=seed, pad_to_multiple=pad_to_multiple)
        if not 0.0 <= cross_modal_prob <= 1.0:
            raise ValueError(f"cross_modal_prob must be in [0, 1], got {cross_modal_prob}")
        self.modality_of = torch.as_tensor(np.asarray(modality_of, dtype=np.int64))
        self.cross_modal_prob = float(cross_modal_prob)
        self.source_modality = int(source_modality)
        if not 0.0 <= source_target_fraction <= 1.0:
            raise ValueError(f"source_target_fraction must be in [0, 1], got {source_target_fraction}")
        self.source_target_fraction = float(source_target_fraction)

    def __call__(self, items) -> dict[str, torch.Tensor]:
        batch = super().__call__(items)
        modality = self.modality_of[batch[GENES]]  # (B, L); padding and <cls> map to 0
        batch[MODALITY] = modality
        if self.cross_modal_prob > 0:
            hide = torch.rand(modality.shape[0], generator=self.generator) < self.cross_modal_prob  # (B,)
            target = (modality != self.source_modality) & ~batch[PADDING_MASK]
            target[:, 0] = False
            rows = hide & target.any(1)
            mask = torch.where(rows[:, None], target, batch[MASK])
            batch[MASK] = mask
            batch[VALUES] = torch.where(mask, torch.full_like(batch[VALUES], MASK_VALUE), batch[TARGET_VALUES])
        if self.source_target_fraction < 1.0:
            keep = torch.rand(modality.shape, generator=self.generator) < self.source_target_fraction
            batch[MASK] = batch[MASK] & (keep | (modality != self.source_modality))
        return batch
