"""Batching: a dataset over :class:`TokenizedCells`, a padding/masking collator, a length-bucketing sampler."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .._keys import (BATCH, CELL_INDEX, GENES, LABELS, LIBRARY, MASK, PAD_VALUE, PADDING_MASK, PROFILE,
                     TARGET_VALUES, VALUES)
from .tokenize import TokenizedCells, mask_values

logger = logging.getLogger(__name__)

__all__ = ["Collator", "TokenizedDataset", "LengthBucketSampler"]

_OPTIONAL = (BATCH, LABELS, CELL_INDEX)


class Collator:
    """Pad a list of tokenised cells into a batch of tensors, and optionally mask values.

    Parameters
    ----------
    pad_id : int
        Vocabulary id of ``<pad>``.
    max_len : int, optional
        Cells longer than this are cut to their first ``max_len`` tokens (``<cls>`` stays first).
    mask_ratio : float, default 0.0
        Fraction of each cell's gene values to hide (see :func:`~scmamba2.data.tokenize.mask_values`).
    seed : int, default 0
        Seed of the collator's own ``torch.Generator``. The same sequence of calls gives the same
        masks. With DataLoader workers every worker holds a copy with the same state: pass
        ``worker_init_fn=collator.worker_init_fn`` (or call :meth:`reseed` yourself) so they differ.
    pad_to_multiple : int, default 1
        Round the padded length up to a multiple of this (e.g. a kernel's chunk size).

    Notes
    -----
    ``__call__`` returns ``GENES`` (B, L) int64, ``VALUES`` (B, L) float32 (``MASK_VALUE`` where
    masked), ``TARGET_VALUES`` (unmasked), ``PADDING_MASK`` (True = pad), ``MASK`` (True = masked;
    all False without masking) and ``BATCH``/``LABELS``/``CELL_INDEX`` (B,) int64 when the items
    have them. Padding positions hold ``pad_id`` and ``PAD_VALUE``.
    """

    def __init__(
        self,
        pad_id: int,
        max_len: int | None = None,
        mask_ratio: float = 0.0,
        seed: int = 0,
        pad_to_multiple: int = 1,
    ) -> None:
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be positive, got {max_len}")
        if pad_to_multiple < 1:
            raise ValueError(f"pad_to_multiple must be positive, got {pad_to_multiple}")
        self.pad_id = int(pad_id)
        self.max_len = max_len
        self.mask_ratio = float(mask_ratio)
        self.pad_to_multiple = int(pad_to_multiple)
        self.seed = int(seed)
        self.generator = torch.Generator()
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the masking generator from ``seed``."""
        self.generator.manual_seed(int(seed) % 2**63)

    def worker_init_fn(self, worker_id: int) -> None:
        """DataLoader ``worker_init_fn``: give each worker its own masking stream.

        The stream depends on ``seed`` and on the worker's seed chosen by the DataLoader (which is
        reproducible when the main process called ``torch.manual_seed``), so workers differ from each
        other and from one epoch to the next.
        """
        info = torch.utils.data.get_worker_info()
        worker_seed = info.seed if info is not None else worker_id
        ss = np.random.SeedSequence([self.seed, worker_seed % 2**63, worker_id])
        self.reseed(int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if len(items) == 0:
            raise ValueError("cannot collate an empty batch")
        genes = [np.asarray(it[GENES], dtype=np.int64) for it in items]
        values = [np.asarray(it[VALUES], dtype=np.float32) for it in items]
        if self.max_len is not None:
            genes = [g[: self.max_len] for g in genes]
            values = [v[: self.max_len] for v in values]
        lengths = np.array([len(g) for g in genes], dtype=np.int64)
        if any(len(g) != len(v) for g, v in zip(genes, values)):
            raise ValueError("each item needs as many values as genes")
        width = max(int(lengths.max()), 1)
        width = math.ceil(width / self.pad_to_multiple) * self.pad_to_multiple
        valid = np.arange(width)[None, :] < lengths[:, None]
        gene_arr = np.full((len(items), width), self.pad_id, dtype=np.int64)
        value_arr = np.full((len(items), width), PAD_VALUE, dtype=np.float32)
        gene_arr[valid] = np.concatenate(genes)  # row-major fill: each row's tokens in order
        value_arr[valid] = np.concatenate(values)

        target = torch.from_numpy(value_arr)
        padding = torch.from_numpy(~valid)
        if self.mask_ratio > 0:
            inputs, mask = mask_values(target, padding, self.mask_ratio, self.generator, protect_first=True)
        else:
            inputs, mask = target.clone(), torch.zeros_like(padding)
        batch = {
            GENES: torch.from_numpy(gene_arr),
            VALUES: inputs,
            TARGET_VALUES: target,
            PADDING_MASK: padding,
            MASK: mask,
        }
        for key in _OPTIONAL:
            present = [key in it for it in items]
            if all(present):
                batch[key] = torch.tensor([int(it[key]) for it in items], dtype=torch.int64)
            elif any(present):
                raise ValueError(f"key {key!r} is present in some items of the batch but not all")
        if PROFILE in items[0]:
            batch[PROFILE] = torch.from_numpy(np.stack([it[PROFILE] for it in items]))
        if LIBRARY in items[0]:
            batch[LIBRARY] = torch.tensor([it[LIBRARY] for it in items], dtype=torch.float32)
        return batch


THIN_MIN = 0.2  # depth_thinning keeps at least this fraction of a cell's counts (5x shallower at most)


class TokenizedDataset(Dataset):
    """A map-style dataset of tokenised cells.

    Parameters
    ----------
    cells : TokenizedCells
        The tokens.
    batch : array-like of int, optional
        Batch / domain index of each cell.
    labels : array-like of int, optional
        Class index of each cell.
    resample : bool, default False
        False: each cell always gives the same tokens (``cells.cell(i)``). True: the random choices
        (subsampling to ``max_len``, random order) are redrawn each epoch from a generator seeded by
        ``(seed, epoch, cells.content_key(i))``; call :meth:`set_epoch` every epoch.
    seed : int, default 0
        Seed for ``resample=True``.
    panel : GenePanel, optional
        Add each cell's whole-profile target ``PROFILE`` (see :mod:`scmamba2.data.panel`), computed from all
        its stored tokens (before any ``max_len`` subsampling). Needs continuous values.
    source, measured : optional
        For pooled sources: ``source`` (N,) index of each cell's source, ``measured`` (n_sources, P) bool
        whether that source measured each panel gene (unmeasured targets are NaN).
    panel_view_fraction : float, default 0
        With ``panel`` and ``resample=True``: the share of cells (drawn per cell and epoch) whose input tokens
        are only their panel genes, as a file that stores only highly variable genes gives them. The profile
        target is the same either way.
    depth_thinning : float, default 0
        With ``resample=True`` and raw counts (continuous values and ``cells.library``): the share of cells (drawn
        per cell and epoch) whose input is read as if sequenced less deeply: the counts of its input tokens are
        thinned binomially to a fraction ``keep`` drawn uniformly from [``THIN_MIN``, 1), genes left at zero are
        dropped, and the values renormalised to the expected thinned library (``keep`` x the cell's). The profile
        target is the same either way. Expressed genes only (``include_zeros="none"``).

    Notes
    -----
    Items are dicts with ``GENES`` and ``VALUES`` (numpy arrays), ``CELL_INDEX`` (the cell's row in
    its source data) and ``BATCH``/``LABELS``/``PROFILE`` when given.
    """

    def __init__(
        self,
        cells: TokenizedCells,
        batch: Any = None,
        labels: Any = None,
        *,
        resample: bool = False,
        seed: int = 0,
        panel=None,
        source: Any = None,
        measured: Any = None,
        panel_view_fraction: float = 0.0,
        depth_thinning: float = 0.0,
    ) -> None:
        self.cells = cells
        self.batch = self._per_cell(batch, "batch")
        self.labels = self._per_cell(labels, "labels")
        self.resample = bool(resample)
        self.seed = int(seed)
        self.epoch = 0
        self.panel = panel
        self.source = self._per_cell(source, "source")
        self.measured = None if measured is None else np.asarray(measured, dtype=bool)
        if panel is not None:
            from .panel import _check_continuous, panel_index

            _check_continuous(cells)
            vocab_size = max(int(cells.gene_ids.max(initial=0)), int(np.max(panel.ids, initial=0))) + 1
            self._panel_index = panel_index(panel.ids, vocab_size)
        if (self.source is None) != (self.measured is None):
            raise ValueError("source and measured go together")
        self.panel_view_fraction = float(panel_view_fraction)
        self._panel_view = None
        if self.panel_view_fraction > 0:
            if panel is None or not self.resample:
                raise ValueError("panel_view_fraction needs a panel and resample=True")
            self._panel_view = cells.keep_genes(panel.ids)
        self.depth_thinning = float(depth_thinning)
        if self.depth_thinning > 0 and (not self.resample or cells.library is None
                                        or cells.config.value_mode != "continuous"
                                        or cells.config.include_zeros != "none"):
            raise ValueError("depth_thinning needs resample=True and raw counts (continuous values with library "
                             "sizes, expressed genes only: include_zeros='none')")

    def _thinned(self, i: int, genes: np.ndarray, values: np.ndarray, rng: np.random.Generator):
        """Cell ``i``'s input tokens (``<cls>`` first) as a binomially thinned copy of its counts would give them."""
        library, target_sum = float(self.cells.library[i]), self.cells.config.target_sum
        if library <= 0 or len(genes) < 2:
            return genes, values
        keep = rng.uniform(THIN_MIN, 1.0)
        counts = np.rint(np.expm1(values[1:].astype(np.float64)) * (library / target_sum)).astype(np.int64)
        kept = rng.binomial(counts, keep)
        on = np.flatnonzero(kept > 0) + 1
        thinned = np.log1p(kept[on - 1] * (target_sum / (keep * library))).astype(np.float32)
        return np.concatenate([genes[:1], genes[on]]), np.concatenate([values[:1], thinned])

    def _per_cell(self, arr: Any, name: str) -> np.ndarray | None:
        if arr is None:
            return None
        arr = np.asarray(arr)
        if arr.shape != (len(self.cells),):
            raise ValueError(f"{name} must have one entry per cell ({len(self.cells)}), got shape {arr.shape}")
        return arr.astype(np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed resampling."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = None
        if self.resample:
            rng = np.random.default_rng((self.seed, self.epoch, self.cells.content_key(i)))
        view = self.cells
        if self._panel_view is not None and rng.random() < self.panel_view_fraction:
            view = self._panel_view
        genes, values = view.cell(i, rng=rng)
        if self.depth_thinning > 0 and rng.random() < self.depth_thinning:
            genes, values = self._thinned(i, genes, values, rng)
        item: dict[str, Any] = {GENES: genes, VALUES: values, CELL_INDEX: int(self.cells.cell_index[i])}
        if self.batch is not None:
            item[BATCH] = int(self.batch[i])
        if self.labels is not None:
            item[LABELS] = int(self.labels[i])
        if self.panel is not None:
            from .panel import panel_targets

            c = self.cells
            start, end = c.offsets[i], c.offsets[i + 1]
            item[PROFILE] = panel_targets(c.gene_ids[start:end], c.values[start:end], self._panel_index,
                                          self.panel.mean, self.panel.std,
                                          None if self.source is None else self.measured[self.source[i]])
            if c.library is not None:
                item[LIBRARY] = float(c.library[i])
        return item


class LengthBucketSampler(Sampler[list[int]]):
    """Batch sampler that groups cells of similar length, to cut padding.

    Each epoch: shuffle all indices (seeded by ``(seed, epoch)``), split them into mega-buckets of
    ``bucket_size_multiplier * batch_size``, sort each mega-bucket by length, cut it into batches and
    shuffle the order of the batches. With ``shuffle=False`` the indices are sorted by length
    (stable, shortest first) and cut in order: the same batches every epoch.

    Parameters
    ----------
    lengths : array-like of int
        Length of every item (e.g. ``TokenizedCells.lengths`` capped at ``max_len``).
    batch_size : int
        Items per batch.
    bucket_size_multiplier : int, default 100
        Mega-bucket size in batches; larger means less padding but less randomness.
    shuffle : bool, default True
        Randomise as above; False gives the deterministic sorted order.
    drop_last : bool, default False
        Drop the one incomplete batch, if any.
    seed : int, default 0
        Seed of the shuffling.
    num_replicas, rank : int, default 1, 0
        For distributed training: every replica builds the same batches and takes every
        ``num_replicas``-th one starting at ``rank`` (the last few batches are dropped so that all
        replicas get the same number).
    weights : array-like of float, optional
        Sampling weight of every item (needs ``shuffle=True``): each epoch then draws as many items as there
        are, with replacement, each with probability proportional to its weight, instead of a permutation
        (e.g. :func:`~scmamba2.data.balance.cluster_weights`).
    """

    def __init__(
        self,
        lengths: Any,
        batch_size: int,
        bucket_size_multiplier: int = 100,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        weights: Any = None,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.p = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            problem = (f"have shape {w.shape}, not one per item {self.lengths.shape}" if w.shape != self.lengths.shape
                       else "hold NaN or infinite values" if not np.all(np.isfinite(w))
                       else "hold negative values" if np.any(w < 0) else "are all zero" if w.sum() <= 0 else None)
            if problem:
                raise ValueError(f"sampling weights {problem}: give one finite, non-negative weight per item")
            if not shuffle:
                raise ValueError("weights draw items at random: they need shuffle=True")
            self.p = w / w.sum()
        if batch_size < 1 or bucket_size_multiplier < 1:
            raise ValueError("batch_size and bucket_size_multiplier must be positive")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1}, got {rank}")
        self.batch_size = int(batch_size)
        self.bucket_size_multiplier = int(bucket_size_multiplier)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (changes the shuffle)."""
        self.epoch = int(epoch)

    def _n_batches_total(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return self._n_batches_total() // self.num_replicas

    def _batches(self) -> list[np.ndarray]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            batches = [order[s : s + bs] for s in range(0, n, bs)]
        else:
            rng = np.random.default_rng((self.seed, self.epoch))
            perm = rng.permutation(n) if self.p is None else rng.choice(n, n, replace=True, p=self.p)
            mega = bs * self.bucket_size_multiplier  # a multiple of bs: only the very last batch can be short
            batches = []
            for s in range(0, n, mega):
                chunk = perm[s : s + mega]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches.extend(chunk[t : t + bs] for t in range(0, len(chunk), bs))
            batches = [batches[k] for k in rng.permutation(len(batches))]
        if self.drop_last:
            batches = [b for b in batches if len(b) == bs]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        per_replica = len(batches) // self.num_replicas
        mine = batches[self.rank :: self.num_replicas][:per_replica] if self.num_replicas > 1 else batches
        for b in mine:
            yield b.tolist()


def token_budget_batches(lengths: Any, max_tokens: int, max_batch_size: int | None = None) -> list[list[int]]:
    """Deterministic batches of similar-length items whose padded size stays within ``max_tokens``.

    Items are sorted by length (stable) and added to a batch while ``len(batch) * longest <= max_tokens``
    (and ``len(batch) <= max_batch_size``). An item longer than ``max_tokens`` gets a batch of its own, so
    nothing is ever left out; bounding the memory of one very long cell is the model's job (tiling).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    cap = max_batch_size or len(lengths) or 1
    batches: list[list[int]] = []
    current: list[int] = []
    for i in np.argsort(lengths, kind="stable").tolist():
        # Sorted ascending: the newest item is the longest of its batch.
        if current and ((len(current) + 1) * lengths[i] > max_tokens or len(current) >= cap):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
