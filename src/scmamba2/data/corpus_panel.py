"""The whole-profile gene panel of a streamed corpus, from one pass over its training cells.

The in-memory path chooses the panel from the tokenised training cells (:func:`~scmamba2.data.panel.select_panel`);
a corpus is never loaded whole, so here the same per-gene sums (cells that measured a gene, sum and sum of
squares of its log-normalised value, cells that expressed it) are accumulated block by block over the training
blocks of a :class:`~scmamba2.data.stream.CorpusDataset` (held-out blocks excluded), and the panel is chosen by
the same rule. A gene a shard did not measure is not counted for that shard's cells, and its targets there are
NaN (skipped by the loss).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .panel import GenePanel, gene_moments, panel_from_moments
from .stream import CorpusDataset

log = logging.getLogger(__name__)

__all__ = ["corpus_panel"]


def corpus_panel(ds: CorpusDataset, n_genes: int, *, min_cells: int = 10,
                 min_measured: float = 0.5, rule: str = "variance") -> tuple[GenePanel, np.ndarray]:
    """The panel of ``ds``'s training cells and ``(n_shards, P)`` bool: which panel genes each shard measured.

    One streamed pass: each training block is read and tokenised once (the tokenizer must use
    ``value_mode="continuous"``). Equal to :func:`~scmamba2.data.panel.select_panel` on the same cells
    loaded together.
    """
    measured = np.stack([ds.measured(k) for k in range(len(ds.corpus.shards))])
    moments = np.zeros((4, len(ds.vocab)))
    t0 = time.perf_counter()
    n_cells = 0
    for piece in ds.training_pieces():
        cells = ds.tokens(piece)
        group = np.zeros(len(cells), dtype=np.int64)
        moments += gene_moments(cells, len(ds.vocab), group, measured[piece.shard][None])
        n_cells += len(cells)
    panel = panel_from_moments(moments, n_cells, n_genes, min_cells=min_cells, min_measured=min_measured, rule=rule)
    log.info("gene panel of the profile objective: %d genes from one pass over %d training cells (%.1f s)",
             len(panel), n_cells, time.perf_counter() - t0)
    return panel, measured[:, panel.ids]
