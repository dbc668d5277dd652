"""Stream a :class:`~scmamba2.data.corpus.Corpus` to training: each cell exactly once per epoch.

How one epoch is laid out (every rank and worker computes the same plan from ``(seed, epoch)``):

1. The corpus is cut into blocks of ``block_size`` consecutive cells of one shard. Held-out blocks
   (:meth:`CorpusDataset.heldout`) are set aside once; the training blocks are shuffled (which also
   shuffles the shards) and laid end to end: a stream of all ``N`` training cells.
2. Rank ``r`` of ``R`` takes the cells ``[N r / R, N (r + 1) / R)`` of the stream. Every rank gets the
   same number of batches ``K`` (cells per batch differ by at most one), so DDP ranks stay in step and
   no cell is dropped or repeated.
3. Batch ``k`` of a rank is made by worker ``k mod W``; worker ``w`` owns a contiguous part of the rank's
   stream just large enough for its batches, reads it block by block and mixes it through a shuffle
   buffer of ``buffer_size`` cells (seeded by ``(seed, epoch, rank, worker)``).
4. Each piece of a block is read as one CSR chunk and tokenised (binning included) by
   :func:`~scmamba2.data.tokenize.tokenize`; cells become items of a
   :class:`~scmamba2.data.collate.TokenizedDataset` (per-epoch resampling of long cells) and batches are
   collated in the worker by :class:`~scmamba2.data.collate.Collator`, re-seeded per batch from
   ``(seed, epoch, k)``.

Given the same seed, world size and number of workers a batch is always the same, which is what lets
:class:`CorpusLoader` resume in the middle of an epoch. Cells without any vocabulary gene stay in the
stream as ``<cls>``-only sequences (they add nothing to the loss) so that batch counts are known before
reading.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, IterableDataset

from .._keys import CELL_INDEX
from ..errors import InputError
from .collate import Collator, TokenizedDataset
from .corpus import Corpus
from .corpus_vocab import shard_tokens
from .tokenize import TokenizerConfig, tokenize
from .vocab import GeneVocab

log = logging.getLogger(__name__)

__all__ = ["CorpusDataset", "CorpusLoader", "epoch_plan"]


@contextlib.contextmanager
def _quiet_tokenizer():
    """tokenize() reports on every call; for a stream of blocks the dataset reports once per epoch instead."""
    lg = logging.getLogger(tokenize.__module__)
    keep = logging.Filter()
    keep.filter = lambda record: record.levelno >= logging.ERROR
    lg.addFilter(keep)
    try:
        yield
    finally:
        lg.removeFilter(keep)


def _seed(*parts: int) -> int:
    ss = np.random.SeedSequence([int(p) % 2**63 for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass
class _Piece:
    shard: int
    lo: int  # rows [lo, hi) of the shard
    hi: int


def _blocks(sizes: np.ndarray, block_size: int) -> list[_Piece]:
    return [_Piece(s, lo, min(lo + block_size, int(n)))
            for s, n in enumerate(sizes) for lo in range(0, int(n), block_size)]


def _take(pieces: list[_Piece], start: int, stop: int) -> list[_Piece]:
    """Cells ``[start, stop)`` of the stream made by ``pieces`` laid end to end."""
    out, pos = [], 0
    for p in pieces:
        n = p.hi - p.lo
        a, b = max(start - pos, 0), min(stop - pos, n)
        if a < b:
            out.append(_Piece(p.shard, p.lo + a, p.lo + b))
        pos += n
        if pos >= stop:
            break
    return out


def batch_sizes(n_cells: np.ndarray, batch_size: int) -> np.ndarray:
    """Per-rank batch sizes ``(R, K)``: the same ``K`` on every rank, sizes differing by at most one."""
    k = max(min(math.ceil(int(n_cells.max()) / batch_size), int(n_cells.min())), 1)
    q, rem = np.divmod(n_cells, k)
    return q[:, None] + (np.arange(k)[None, :] < rem[:, None])


def epoch_plan(blocks: list[_Piece], seed: int, epoch: int, batch_size: int, world_size: int, rank: int,
               n_workers: int, worker: int) -> tuple[list[_Piece], np.ndarray, np.ndarray]:
    """The pieces worker ``worker`` of rank ``rank`` reads this epoch, the sizes of all the rank's batches, and the
    rank-level batch numbers the worker makes."""
    order = np.random.default_rng((seed, epoch)).permutation(len(blocks))
    stream = [blocks[i] for i in order]
    n = sum(p.hi - p.lo for p in stream)
    bounds = [n * r // world_size for r in range(world_size + 1)]
    sizes = batch_sizes(np.diff(bounds), batch_size)[rank]
    mine = np.arange(worker, len(sizes), n_workers)
    # Workers own consecutive parts of the rank's stream, in worker order.
    per_worker = [int(sizes[w::n_workers].sum()) for w in range(n_workers)]
    start = bounds[rank] + sum(per_worker[:worker])
    return _take(stream, start, start + per_worker[worker]), sizes, mine


def buffer_order(counts: list[int], buffer_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a shuffle buffer over pieces of ``counts`` cells: the output order of cell numbers
    ``0..sum(counts)-1`` and, for each piece, how many cells had been output when it was loaded."""
    total = int(sum(counts))
    draws = rng.random(total)
    out = np.empty(total, dtype=np.int64)
    load_at = np.empty(len(counts), dtype=np.int64)
    buf: list[int] = []
    t, nxt = 0, 0
    for j, c in enumerate(counts):
        load_at[j] = t
        buf.extend(range(nxt, nxt + c))
        nxt += c
        while len(buf) >= buffer_size and buf:
            i = int(draws[t] * len(buf))
            out[t] = buf[i]
            buf[i] = buf[-1]
            buf.pop()
            t += 1
    while buf:
        i = int(draws[t] * len(buf))
        out[t] = buf[i]
        buf[i] = buf[-1]
        buf.pop()
        t += 1
    return out, load_at


class CorpusDataset(IterableDataset):
    """Tokenised, collated batches streamed from a corpus (see the module text for the layout of an epoch).

    Parameters
    ----------
    corpus
        The shards.
    vocab
        Gene vocabulary; genes outside it are not tokenised.
    tokenizer_config
        Binning, ``max_len``, zeros, ordering (the same as for in-memory data).
    batch_size
        Target cells per batch (batches of a rank hold ``batch_size`` or slightly fewer cells).
    mask_ratio
        Fraction of values masked by the collator (0 for none).
    aliases
        Ensembl id -> symbol map of :func:`~scmamba2.data.corpus_vocab.build_corpus_vocab`, so shards named by
        ids read into a symbol vocabulary.
    block_size
        Consecutive cells of a shard read (and tokenised) together.
    buffer_size
        Shuffle-buffer size in cells (per worker); 1 keeps the block order.
    heldout_cells
        Cells set aside for validation: whole blocks drawn by the seed until at least this many.
    seed
        Seeds everything: block order, buffer, resampling of long cells, masks.
    world_size, rank
        DDP ranks; default: read from ``torch.distributed`` when it is initialised at iteration time.

    Notes
    -----
    Items are whole batches (dicts of tensors, :class:`~scmamba2.data.collate.Collator` keys); use
    ``DataLoader(ds, batch_size=None)`` or :class:`CorpusLoader`. ``CELL_INDEX`` holds the corpus-wide cell
    id (``corpus.offsets[shard] + row``).
    """

    def __init__(self, corpus: Corpus, vocab: GeneVocab, tokenizer_config: TokenizerConfig | None = None, *,
                 batch_size: int = 32, mask_ratio: float = 0.0, aliases: dict[str, str] | None = None,
                 block_size: int = 1024, buffer_size: int = 8192, heldout_cells: int = 0, seed: int = 0,
                 world_size: int | None = None, rank: int | None = None) -> None:
        if batch_size < 1 or block_size < 1 or buffer_size < 1:
            raise ValueError("batch_size, block_size and buffer_size must be positive")
        self.corpus, self.vocab = corpus, vocab
        self.config = tokenizer_config or TokenizerConfig()
        self.batch_size, self.mask_ratio, self.seed = int(batch_size), float(mask_ratio), int(seed)
        self.block_size, self.buffer_size = int(block_size), int(buffer_size)
        self.aliases = dict(aliases or {})
        self.world_size, self.rank = world_size, rank
        self.epoch, self.start_batch = 0, 0
        self.panel, self._panel_measured = None, None  # set_panel: whole-profile targets
        self._n_empty = 0  # cells read without any vocabulary gene (kept as <cls>-only sequences)
        self._tokens = [shard_tokens(s.var(), self.aliases) for s in corpus.shards]
        # Binned values depend only on the kept genes, so columns outside the vocabulary can be cut before
        # tokenising (less work, and tokenize() then has nothing to report per block). Continuous values
        # normalise by the whole cell: there every column is kept.
        self._columns = [None if self.config.value_mode != "binned" else np.flatnonzero(vocab.lookup(t) >= 0)
                         for t in self._tokens]
        # Each shard's names as one Index object, block after block: the vocabulary's lookup is then done once.
        self._names = [pd.Index(t if c is None else t[c], dtype=object) for t, c in zip(self._tokens, self._columns)]
        no_overlap = [sh.name for sh, t in zip(corpus.shards, self._tokens) if not (vocab.lookup(t) >= 0).any()]
        if no_overlap:
            raise InputError(f"{len(no_overlap)} shard(s) share no gene with the vocabulary (e.g. {no_overlap[:3]}); "
                             "check the gene identifiers (symbols vs Ensembl ids, gene_column) or leave them out.")
        self._offsets = corpus.offsets
        blocks = _blocks(corpus.sizes, self.block_size)
        self._heldout: list[_Piece] = []
        if heldout_cells > 0:
            pick = np.random.default_rng((self.seed, 7)).permutation(len(blocks))
            n = 0
            for i in pick:
                if n >= heldout_cells:
                    break
                self._heldout.append(blocks[i])
                n += blocks[i].hi - blocks[i].lo
            taken = {id(p) for p in self._heldout}
            blocks = [b for b in blocks if id(b) not in taken]
            if not blocks:
                raise InputError(
                    f"holding out {heldout_cells} validation cells leaves no training cell in {corpus}: a stream holds "
                    f"out whole blocks of up to {block_size} cells (data.block_size), so a corpus of one block cannot "
                    "be split. Give data.block_size a value below the number of cells, or read the file(s) into "
                    "memory (data.stream: false), or train without validation (train.val_fraction: 0).")
            total = n + sum(b.hi - b.lo for b in blocks)
            if n > 2 * heldout_cells:
                log.warning("validation holds out %d of %d cells (%.0f%%; %d asked for): whole blocks of up to %d cells "
                            "(data.block_size), never trained on; a smaller data.block_size splits closer to the "
                            "asked share", n, total, 100 * n / total, heldout_cells, self.block_size)
        self._blocks = blocks
        self.n_cells = sum(b.hi - b.lo for b in blocks)

    # --- epoch bookkeeping ---------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (a new epoch starts at its first batch)."""
        if int(epoch) != self.epoch:
            self.epoch, self.start_batch = int(epoch), 0

    def _world(self) -> tuple[int, int]:
        if self.world_size is not None:
            return int(self.world_size), int(self.rank or 0)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def batches_per_epoch(self) -> int:
        """Batches each rank gets per epoch."""
        world, _ = self._world()
        bounds = [self.n_cells * r // world for r in range(world + 1)]
        return batch_sizes(np.diff(bounds), self.batch_size).shape[1]

    def __len__(self) -> int:
        return self.batches_per_epoch()

    def layout(self) -> dict[str, Any]:
        """What fixes which cells form which batch: a resume with any of it changed would repeat some cells and
        skip others (or train on held-out ones), so :class:`CorpusLoader` refuses it."""
        import hashlib

        held = ";".join(f"{p.shard}:{p.lo}:{p.hi}" for p in self._heldout)
        return {"world_size": self._world()[0], "batch_size": self.batch_size, "block_size": self.block_size,
                "buffer_size": self.buffer_size, "heldout": hashlib.sha1(held.encode()).hexdigest()[:16]}

    # --- reading -------------------------------------------------------------------------------------

    def measured(self, shard: int) -> np.ndarray:
        """``(len(vocab),)`` bool: the vocabulary genes that shard ``shard`` measured."""
        ids = self.vocab.lookup(self._tokens[shard])
        out = np.zeros(len(self.vocab), dtype=bool)
        out[ids[ids >= 0]] = True
        return out

    def set_panel(self, panel, measured: np.ndarray) -> None:
        """Give every cell its whole-profile target (:mod:`scmamba2.data.panel`): ``measured`` (n_shards, P)
        bool, whether each shard measured each panel gene (unmeasured targets are NaN)."""
        self.panel, self._panel_measured = panel, np.asarray(measured, dtype=bool)

    def training_pieces(self) -> list[_Piece]:
        """The training blocks (held-out ones excluded), in corpus order."""
        return list(self._blocks)

    def tokens(self, piece: _Piece):
        """The :class:`~scmamba2.data.tokenize.TokenizedCells` of one block."""
        shard = self.corpus.shards[piece.shard]
        x = shard.read(np.arange(piece.lo, piece.hi))
        cols = self._columns[piece.shard]
        if cols is not None and len(cols) < x.shape[1]:  # the names (self._names) are cut the same way
            x = x[:, cols]
        with _quiet_tokenizer():
            return tokenize(x, self.vocab, self.config, gene_names=self._names[piece.shard], seed=self.seed)

    def _read(self, piece: _Piece) -> TokenizedDataset:
        cells = self.tokens(piece)
        self._n_empty += int((cells.lengths <= 1).sum())
        targets = {} if self.panel is None else {
            "panel": self.panel, "source": np.zeros(len(cells), dtype=np.int64),
            "measured": self._panel_measured[piece.shard][None]}
        ds = TokenizedDataset(cells, resample=True, seed=self.seed, **targets)
        ds.set_epoch(self.epoch)
        return ds

    def heldout(self) -> list[dict[str, Any]]:
        """The held-out cells as items (fixed tokens: no resampling), for a validation set."""
        items = []
        for p in self._heldout:
            ds = self._read(p)
            ds.resample = False
            for i in range(len(ds)):
                item = ds[i]
                item[CELL_INDEX] = int(self._offsets[p.shard] + p.lo + i)
                items.append(item)
        return items

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        world, rank = self._world()
        info = torch.utils.data.get_worker_info()
        n_workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        pieces, sizes, mine = epoch_plan(self._blocks, self.seed, self.epoch, self.batch_size, world, rank,
                                         n_workers, worker)
        counts = [p.hi - p.lo for p in pieces]
        order, load_at = buffer_order(counts, self.buffer_size,
                                      np.random.default_rng((self.seed, self.epoch, rank, worker, 1)))
        ends = np.cumsum(sizes[mine])
        starts = ends - sizes[mine]
        first = int(np.searchsorted(mine, self.start_batch))  # resume: skip batches already trained on
        if first >= len(mine):
            return
        pos0 = int(starts[first])
        out_pos = np.empty(len(order), dtype=np.int64)
        out_pos[order] = np.arange(len(order))
        piece_start = np.concatenate([[0], np.cumsum(counts)])
        collator = Collator(pad_id=self.vocab.pad_id, mask_ratio=self.mask_ratio, seed=self.seed)
        cache: dict[int, dict[str, Any]] = {}
        j = 0
        for b in range(first, len(mine)):
            a, e = int(starts[b]), int(ends[b])
            while j < len(pieces) and load_at[j] <= e - 1:
                lo, hi = piece_start[j], piece_start[j + 1]
                if out_pos[lo:hi].max(initial=-1) >= pos0:  # skip a piece whose cells all came before a resume
                    ds = self._read(pieces[j])
                    gid0 = int(self._offsets[pieces[j].shard] + pieces[j].lo)
                    for i in range(hi - lo):
                        if out_pos[lo + i] >= pos0:
                            item = ds[i]
                            item[CELL_INDEX] = gid0 + i
                            cache[lo + i] = item
                j += 1
            k = int(mine[b])
            collator.reseed(_seed(self.seed, self.epoch, k))
            yield collator([cache.pop(int(c)) for c in order[a:e]])
        if self._n_empty:
            log.warning("epoch %d, rank %d, worker %d: %d cells had no vocabulary gene (<cls> only, no loss)",
                        self.epoch, rank, worker, self._n_empty)
            self._n_empty = 0


def _as_is(batch):
    return batch


class CorpusLoader(DataLoader):
    """The training loader of a :class:`CorpusDataset`; Lightning saves its position in checkpoints.

    ``state_dict()`` holds the batches handed out so far; after ``load_state_dict`` the next iteration
    starts at the following batch of the same epoch (workers skip reading what came before), so a resumed
    run sees the same batches as an uninterrupted one (same seed, world size and workers).
    """

    def __init__(self, dataset: CorpusDataset, *, num_workers: int = 0, **kwargs) -> None:
        super().__init__(dataset, batch_size=None, collate_fn=_as_is, num_workers=num_workers,
                         persistent_workers=False, **kwargs)
        self.batches_consumed = 0

    def __iter__(self):
        ds: CorpusDataset = self.dataset
        if ds.world_size is None:  # workers cannot see torch.distributed: fix the rank here, in the main process
            world, rank = ds._world()
            if world > 1:
                ds.world_size, ds.rank = world, rank
        per_epoch = ds.batches_per_epoch()
        epoch, start = divmod(self.batches_consumed, per_epoch)
        ds.epoch = epoch
        # The DataLoader takes batches from workers in turn, starting with worker 0: start the workers at a
        # multiple of num_workers and drop the few batches before the resume point here.
        w = max(self.num_workers, 1)
        ds.start_batch = start - start % w
        skip = start % w
        return self._counted(super().__iter__(), skip)

    def _counted(self, it, skip: int):
        for batch in it:
            if skip:
                skip -= 1
                continue
            self.batches_consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches_consumed": int(self.batches_consumed), "n_cells": int(self.dataset.n_cells),
                "seed": int(self.dataset.seed), "num_workers": int(self.num_workers), **self.dataset.layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from ..errors import CheckpointError

        mine = self.state_dict()
        if state.get("n_cells") != mine["n_cells"] or state.get("seed") != mine["seed"]:
            raise CheckpointError(
                f"the training checkpoint was written for another corpus or seed ({state.get('n_cells')} cells, "
                f"seed {state.get('seed')}; now {mine['n_cells']} cells, seed {mine['seed']}); resume with the "
                "same data and seed, or start a new run without --resume.")
        changed = [f"{k} {state[k]} -> {mine[k]}" for k in ("world_size", "num_workers", "batch_size", "block_size",
                                                            "buffer_size", "heldout")
                   if k in state and state[k] != mine[k]]
        if changed:
            raise CheckpointError(
                f"the training checkpoint's epoch was laid out differently ({'; '.join(changed)}): resuming would "
                "repeat some cells and skip others. Resume with the settings it was written with (devices, "
                "data.num_workers, batch_size, data.block_size, data.buffer_size), or start a new run without "
                "--resume.")
        self.batches_consumed = int(state["batches_consumed"])
