"""Turn expression matrices into per-cell token sequences (gene ids + values), and mask values.

:func:`tokenize` does the heavy work once, vectorised over the CSR structure, and stores every cell's
chosen genes in a flat ragged :class:`TokenizedCells`. :meth:`TokenizedCells.cell` then builds the
model input of one cell (``<cls>`` first, ordering and subsampling to ``max_len``) on demand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import operator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .._keys import CLS_VALUE, MASK_VALUE
from ..errors import InputError
from ._binning import bin_entries, map_row_blocks
from .preprocess import _as_csr, _row_ids, _row_keys, _row_scale, _zero_tokens
from .vocab import GeneVocab

logger = logging.getLogger(__name__)

__all__ = ["TokenizerConfig", "TokenizedCells", "tokenize", "mask_values"]

_CHOICES = {
    "include_zeros": ("none", "all", "sample"),
    "gene_order": ("vocab", "expression", "random"),
    "value_mode": ("binned", "continuous"),
    "subsample": ("random", "top"),
}


@dataclass
class TokenizerConfig:
    """How cells become token sequences.

    Parameters
    ----------
    n_bins : int, default 51
        Number of value bins including the zero bin (``value_mode="binned"``); see
        :func:`scmamba2.data.preprocess.bin_values`.
    max_len : int, default 1200
        Maximum sequence length, ``<cls>`` included.
    include_zeros : {"none", "all", "sample"}, default "none"
        Which zero-valued genes become tokens: none, every vocabulary gene of the data, or
        ``n_zero_samples`` random zero genes per cell (drawn once, in :func:`tokenize`, from the seed
        and the cell's own non-zero tokens, so a cell gets the same zeros in any cell order).
    n_zero_samples : int, default 0
        Zero genes per cell for ``include_zeros="sample"`` (fewer when the cell has fewer zeros).
    gene_order : {"vocab", "expression", "random"}, default "vocab"
        Token order after ``<cls>``: increasing vocabulary id, decreasing value (ties by vocabulary id),
        or a random permutation.
    value_mode : {"binned", "continuous"}, default "binned"
        Values are per-cell quantile bins, or ``log1p`` of counts normalised to ``target_sum``.
    subsample : {"random", "top"}, default "random"
        How ``max_len - 1`` genes are chosen from a longer cell: uniformly at random, or the highest
        values (ties by vocabulary id).
    target_sum : float, default 1e4
        Per-cell total for ``value_mode="continuous"``.
    """

    n_bins: int = 51
    max_len: int = 1200
    include_zeros: Literal["none", "all", "sample"] = "none"
    n_zero_samples: int = 0
    gene_order: Literal["vocab", "expression", "random"] = "vocab"
    value_mode: Literal["binned", "continuous"] = "binned"
    subsample: Literal["random", "top"] = "random"
    target_sum: float = 1e4

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"TokenizerConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if not 2 <= int(self.n_bins) <= 32768:
            raise InputError(f"TokenizerConfig.n_bins must be in 2..32768, got {self.n_bins}.")
        if int(self.max_len) < 2:
            raise InputError(f"TokenizerConfig.max_len must be at least 2 (<cls> and one gene), got {self.max_len}.")
        if int(self.n_zero_samples) < 0:
            raise InputError(f"TokenizerConfig.n_zero_samples must be >= 0, got {self.n_zero_samples}.")
        if self.include_zeros == "sample" and self.n_zero_samples == 0:
            raise InputError(
                "include_zeros='sample' needs n_zero_samples > 0 (the number of zero genes added per cell)."
            )
        if self.include_zeros != "sample" and self.n_zero_samples != 0:
            raise InputError(
                f"n_zero_samples={self.n_zero_samples} is only used with include_zeros='sample'; "
                "set one or the other."
            )
        if not self.target_sum > 0:
            raise InputError(f"TokenizerConfig.target_sum must be positive, got {self.target_sum}.")

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain dict (JSON/YAML friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        """Build a configuration from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"Unknown TokenizerConfig field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**d)


class TokenizedCells:
    """The tokens of N cells, stored flat (ragged): cell ``i`` is ``[offsets[i], offsets[i + 1])``.

    Each cell holds all its chosen genes in increasing vocabulary id, without ``<cls>`` (which
    :meth:`cell` prepends) and before any ``max_len`` subsampling.

    Parameters
    ----------
    gene_ids : numpy.ndarray of int64
        Flat vocabulary ids.
    values : numpy.ndarray of float32
        Flat values (bins as floats, or continuous values).
    offsets : numpy.ndarray of int64, shape (N + 1,)
        Cell boundaries; ``offsets[0] == 0`` and ``offsets[-1] == len(gene_ids)``.
    config : TokenizerConfig
        The configuration used (ordering, subsampling and ``max_len`` are applied by :meth:`cell`).
    cls_id : int, default 1
        Vocabulary id of ``<cls>``.
    seed : int, default 0
        Seed of the per-cell random choices when :meth:`cell` gets no generator.
    cell_index : numpy.ndarray of int64, optional
        Row of each cell in its source matrix; default ``arange(N)``. Kept by :meth:`subset`.
    library : numpy.ndarray of float32, optional
        Each cell's total raw counts over all its columns (continuous values of raw counts; None otherwise),
        for a count likelihood. Kept by :meth:`subset`.
    """

    def __init__(
        self,
        gene_ids: np.ndarray,
        values: np.ndarray,
        offsets: np.ndarray,
        config: TokenizerConfig,
        *,
        cls_id: int = 1,
        seed: int = 0,
        cell_index: np.ndarray | None = None,
        library: np.ndarray | None = None,
    ) -> None:
        self.gene_ids = np.asarray(gene_ids, dtype=np.int64)
        self.values = np.asarray(values, dtype=np.float32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be a 1-D array starting at 0")
        if len(self.gene_ids) != len(self.values) or self.offsets[-1] != len(self.gene_ids):
            raise ValueError("gene_ids, values and offsets[-1] must have the same length")
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")
        self.config = config
        self.cls_id = int(cls_id)
        self.seed = int(seed)
        n = len(self.offsets) - 1
        self.cell_index = np.arange(n, dtype=np.int64) if cell_index is None else np.asarray(cell_index, dtype=np.int64)
        if len(self.cell_index) != n:
            raise ValueError("cell_index must have one entry per cell")
        self.library = None if library is None else np.asarray(library, dtype=np.float32)
        if self.library is not None and len(self.library) != n:
            raise ValueError("library must have one entry per cell")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __repr__(self) -> str:
        return f"TokenizedCells({len(self)} cells, {len(self.gene_ids)} tokens, max_len={self.config.max_len})"

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per cell including ``<cls>``, before ``max_len`` truncation (int64)."""
        return np.diff(self.offsets) + 1

    def content_key(self, i: int) -> int:
        """A 63-bit hash of cell ``i``'s stored gene ids and values (to seed its random choices)."""
        start, end = self.offsets[i], self.offsets[i + 1]
        h = hashlib.blake2b(self.gene_ids[start:end].tobytes(), digest_size=8)
        h.update(self.values[start:end].tobytes())
        return int.from_bytes(h.digest(), "little") >> 1

    def cell(self, i: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The model input of cell ``i``: ``<cls>`` then its genes, at most ``config.max_len`` tokens.

        Parameters
        ----------
        i : int
            Cell position (negative counts from the end).
        rng : numpy.random.Generator, optional
            Source of the random choices (``subsample="random"`` on a long cell, ``gene_order="random"``).
            When None, a generator seeded by ``(self.seed, self.content_key(i))`` is used: a cell's
            tokens depend only on its own contents and the seed, never on its position, so they are the
            same after :meth:`subset`, in any cell order and in any batch.

        Returns
        -------
        genes : numpy.ndarray of int64
            ``<cls>`` id first, then vocabulary ids.
        values : numpy.ndarray of float32
            ``CLS_VALUE`` first, then the gene values.
        """
        n_cells = len(self)
        i = operator.index(i)
        if not -n_cells <= i < n_cells:
            raise IndexError(f"cell index {i} out of range for {n_cells} cells")
        i %= n_cells
        start, end = self.offsets[i], self.offsets[i + 1]
        g, v = self.gene_ids[start:end], self.values[start:end]
        cfg = self.config
        room = cfg.max_len - 1
        too_long = len(g) > room
        if rng is None and ((too_long and cfg.subsample == "random") or cfg.gene_order == "random"):
            rng = np.random.default_rng((self.seed, self.content_key(i)))
        if too_long:
            if cfg.subsample == "top":
                sel = np.lexsort((g, -v))[:room]
            else:
                sel = rng.choice(len(g), room, replace=False)
            sel.sort()
            g, v = g[sel], v[sel]
        if cfg.gene_order == "expression":
            order = np.lexsort((g, -v))
            g, v = g[order], v[order]
        elif cfg.gene_order == "random":
            order = rng.permutation(len(g))
            g, v = g[order], v[order]
        genes = np.empty(len(g) + 1, dtype=np.int64)
        values = np.empty(len(g) + 1, dtype=np.float32)
        genes[0], values[0] = self.cls_id, CLS_VALUE
        genes[1:], values[1:] = g, v
        return genes, values

    def keep_genes(self, ids: np.ndarray) -> TokenizedCells:
        """A new :class:`TokenizedCells` with only the tokens of the vocabulary ids ``ids`` (same cells, same
        order; a cell without any of them keeps only ``<cls>``)."""
        keep = np.isin(self.gene_ids, np.asarray(ids, dtype=np.int64))
        kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
        offsets = kept_before[self.offsets]
        return TokenizedCells(
            self.gene_ids[keep], self.values[keep], offsets, self.config,
            cls_id=self.cls_id, seed=self.seed, cell_index=self.cell_index, library=self.library,
        )  # fmt: skip

    def subset(self, idx: Any) -> TokenizedCells:
        """A new :class:`TokenizedCells` with the cells ``idx`` (integer positions or a boolean mask)."""
        idx = np.asarray(idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).ravel()
        counts = np.diff(self.offsets)[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        flat = np.repeat(self.offsets[idx] - offsets[:-1], counts) + np.arange(offsets[-1])
        return TokenizedCells(
            self.gene_ids[flat], self.values[flat], offsets, self.config,
            cls_id=self.cls_id, seed=self.seed, cell_index=self.cell_index[idx],
            library=None if self.library is None else self.library[idx],
        )  # fmt: skip


def tokenize(
    adata_or_matrix: Any,
    vocab: GeneVocab,
    config: TokenizerConfig | None = None,
    *,
    gene_names: Any = None,
    seed: int = 0,
    log_normalized: bool = False,
) -> TokenizedCells:
    """Tokenise every cell of a cells x genes matrix.

    Genes (columns) not in ``vocab`` are dropped (and counted in the log); a gene present in several
    columns keeps its first column. Binned values are computed over the kept genes of each cell;
    continuous values normalise by the cell's total over all columns. Everything is vectorised on the
    CSR structure.

    Parameters
    ----------
    adata_or_matrix : AnnData or matrix
        Raw counts: an AnnData (``X`` is used) or a sparse/dense matrix with ``gene_names``.
    vocab : GeneVocab
        The vocabulary mapping gene names to ids.
    config : TokenizerConfig, optional
        Default ``TokenizerConfig()``.
    gene_names : array-like of str, optional
        Name of each column; default the AnnData's ``var_names`` (required for a bare matrix).
    seed : int, default 0
        Seeds the zero-gene sampling (``include_zeros="sample"``) and is stored in the result for the
        per-cell random choices of :meth:`TokenizedCells.cell`.
    log_normalized : bool, default False
        The values are ``log1p`` of normalised counts (as :func:`~scmamba2.data.validate.validate` reports):
        continuous values are then computed from ``expm1`` of them, so that they equal those of the raw
        counts instead of being log-transformed twice. Binned values do not depend on it (per-cell ranks).

    Returns
    -------
    TokenizedCells

    Raises
    ------
    InputError
        If no column name is in the vocabulary, or the names do not match the columns.
    """
    cfg = config or TokenizerConfig()
    if hasattr(adata_or_matrix, "var_names"):
        X = adata_or_matrix.X
        names = adata_or_matrix.var_names if gene_names is None else gene_names
    else:
        X, names = adata_or_matrix, gene_names
        if names is None:
            raise InputError("tokenize() got a bare matrix: pass gene_names=<name of each column>.")
    if hasattr(X, "to_memory"):  # backed sparse dataset
        X = X.to_memory()
    X = _as_csr(X)
    if log_normalized and cfg.value_mode == "continuous":
        X = X.copy()
        X.data = np.expm1(X.data)
    n_cells, n_cols = X.shape
    ids = vocab.lookup(names)
    if len(ids) != n_cols:
        raise InputError(f"Got {len(ids)} gene names for a matrix with {n_cols} columns.")
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()

    matched = np.flatnonzero(ids >= 0)
    if len(matched) == 0:
        examples = ", ".join(map(repr, list(np.asarray(names)[:5])))
        vocab_ex = ", ".join(map(repr, vocab.genes[:5]))
        raise InputError(
            f"None of the {n_cols} gene names (e.g. {examples}) is in the vocabulary (e.g. {vocab_ex}). "
            "Check that both use the same identifiers (symbols vs Ensembl ids, species, prefixes); "
            "scmamba2.validate(adata, vocab=vocab) reports the overlap."
        )
    _, first = np.unique(ids[matched], return_index=True)
    if len(first) < len(matched):
        n_dup = len(matched) - len(first)
        logger.warning("%d columns repeat a gene already present; the first column of each gene is used", n_dup)
    kept = matched[np.sort(first)]
    if len(kept) < n_cols:
        logger.info("Tokenising %d of %d genes (%d not in the vocabulary)", len(kept), n_cols, n_cols - len(matched))
    colmap = np.full(n_cols, -1, dtype=np.int64)
    colmap[kept] = ids[kept]
    # X is canonical (sorted columns): when the kept columns' ids increase, every row's ids are in order.
    in_order = bool(np.all(ids[kept][1:] > ids[kept][:-1]))
    scale = None if cfg.value_mode == "binned" else _row_scale(X, cfg.target_sum)
    x_indptr = X.indptr.astype(np.int64)

    def block(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = x_indptr[r0], x_indptr[r1]
        return _row_tokens(x_indptr[r0 : r1 + 1] - lo, X.indices[lo:hi], X.data[lo:hi], colmap, cfg,
                           in_order=in_order, all_kept=len(kept) == n_cols,
                           scale=None if scale is None else scale[r0:r1])

    parts = map_row_blocks(x_indptr, block)  # row blocks on threads for a large matrix; same result
    if len(parts) == 1:
        counts, gid, values = parts[0]
    else:
        counts, gid, values = (np.concatenate(p) for p in zip(*parts))
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    library = None
    if scale is not None and not log_normalized:
        # Raw counts: each cell's total (from its scale factor), for count likelihoods.
        library = np.divide(cfg.target_sum, scale, out=np.zeros_like(scale), where=scale > 0).astype(np.float32)

    if cfg.include_zeros != "none":
        vid = np.sort(ids[kept])  # vocabulary ids of the kept genes, increasing
        rank = np.empty(len(vocab), dtype=np.int64)
        rank[vid] = np.arange(len(vid))
        n_genes = len(vid)
        row = _row_ids(indptr)
        if cfg.include_zeros == "all":
            dense = np.zeros(n_cells * n_genes, dtype=np.float32)
            dense[row * n_genes + rank[gid]] = values
            gid, values = np.tile(vid, n_cells), dense
            indptr = np.arange(n_cells + 1, dtype=np.int64) * n_genes
        else:
            keys = _row_keys(indptr, gid, values, seed)  # per-cell draws: independent of the cell order
            z_rows, z_ranks = _zero_tokens(indptr, rank[gid], n_genes, cfg.n_zero_samples, keys)
            all_rows = np.concatenate([row, z_rows])
            gid = np.concatenate([gid, vid[z_ranks]])
            values = np.concatenate([values, np.zeros(len(z_rows), dtype=np.float32)])
            order = np.argsort((all_rows << 32) | gid, kind="stable")
            gid, values = gid[order], values[order]
            indptr = np.concatenate([[0], np.cumsum(np.bincount(all_rows, minlength=n_cells))])

    cells = TokenizedCells(gid, values, indptr, cfg, cls_id=vocab.cls_id, seed=seed, library=library)
    n_empty = int(np.sum(np.diff(indptr) == 0))
    if n_empty:
        logger.warning("%d of %d cells have no expressed vocabulary gene (only <cls>)", n_empty, n_cells)
    median = int(np.median(cells.lengths)) if n_cells else 0
    longer = int(np.sum(np.asarray(cells.lengths) > cfg.max_len)) if n_cells else 0
    cut = (f"; {longer} cells are longer than max_len {cfg.max_len} and are read as {cfg.subsample} subsets of that "
           "many tokens") if longer else ""
    logger.info("Tokenised %d cells into %d tokens (median length %d)%s", n_cells, len(gid), median, cut)
    return cells


def _row_tokens(indptr, indices, data, colmap, cfg, *, in_order, all_kept, scale):
    """(tokens per row, vocabulary ids, values) of the stored non-zeros of kept genes of one CSR row block.

    The entries are sorted by (row, id); ``colmap`` maps a column to its id (-1: dropped); ``scale`` is
    the rows' normalisation factor (continuous values only).
    """
    n_rows = len(indptr) - 1
    row = _row_ids(indptr)
    gid = colmap.take(indices)
    keep = data != 0
    if not all_kept:
        keep &= gid >= 0
    if not keep.all():
        row, gid, data = row[keep], gid[keep], data[keep]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n_rows))])
    if not in_order and np.any((gid[1:] <= gid[:-1]) & (row[1:] == row[:-1])):
        order = np.argsort((row << 32) | gid, kind="stable")
        gid, data = gid[order], data[order]
    if data.dtype.kind == "f" and np.isnan(data).any():
        raise InputError("The expression matrix contains NaN values; tokenising needs finite raw counts.")
    if cfg.value_mode == "binned":
        values = bin_entries(indptr, data, cfg.n_bins, row=row, dtype=np.float32, parallel=False)
    else:
        values = np.log1p(data * scale[row]).astype(np.float32)
    return np.diff(indptr), gid, values


def mask_values(
    values: Any,
    padding_mask: Any,
    mask_ratio: float,
    rng: Any,
    protect_first: bool = True,
) -> tuple[Any, Any]:
    """Hide a fraction of each cell's values for masked-value training.

    Per row, ``ceil(mask_ratio * n)`` of the ``n`` candidate positions (non-padding, and not position 0
    when ``protect_first``) are chosen uniformly without replacement -- at least one when ``n >= 1``
    and ``mask_ratio > 0`` -- and set to ``MASK_VALUE``.

    Parameters
    ----------
    values : torch.Tensor, shape (B, L)
        Input values.
    padding_mask : torch.Tensor of bool, shape (B, L)
        True at padding.
    mask_ratio : float
        Fraction in ``[0, 1]``.
    rng : torch.Generator or numpy.random.Generator
        Source of randomness; the result is deterministic given its state.
    protect_first : bool, default True
        Never mask position 0 (``<cls>``).

    Returns
    -------
    masked_values : torch.Tensor, shape (B, L)
        A copy of ``values`` with ``MASK_VALUE`` at the masked positions.
    mask : torch.Tensor of bool, shape (B, L)
        True where masked.
    """
    import torch

    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    candidate = ~padding_mask.bool()
    if protect_first and candidate.shape[1] > 0:
        candidate[:, 0] = False
    if mask_ratio == 0.0 or candidate.numel() == 0:
        return values.clone(), torch.zeros_like(candidate)
    n_valid = candidate.sum(dim=1)
    # The small offset keeps e.g. 0.15 * 20 (= 3.0000000000000004 in floating point) at 3.
    n_mask = torch.ceil(n_valid.double() * mask_ratio - 1e-9).long()
    n_mask = torch.minimum(torch.clamp(n_mask, min=1), n_valid)
    if isinstance(rng, np.random.Generator):
        scores = torch.from_numpy(rng.random(tuple(candidate.shape), dtype=np.float32))
    else:
        scores = torch.rand(tuple(candidate.shape), generator=rng, device=rng.device)
    scores = scores.to(values.device)
    scores[~candidate] = 2.0  # after every candidate
    rank = torch.argsort(torch.argsort(scores, dim=1, stable=True), dim=1, stable=True)
    mask = (rank < n_mask[:, None]) & candidate
    masked = values.clone()
    masked[mask] = MASK_VALUE
    return masked, mask

