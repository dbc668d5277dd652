"""From an AnnData to tokenised cells: select the matrix, validate it against the vocabulary, tokenise.

This is the one path that pretraining, embedding and the tasks share, so that the checks and the
tokenisation are the same everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .io import select_matrix
from .tokenize import TokenizedCells, TokenizerConfig, tokenize
from .validate import ValidationReport, strip_gene_prefix, validate
from .vocab import GeneVocab

log = logging.getLogger(__name__)


@dataclass
class PreparedCells:
    """Tokenised cells and where they came from."""

    cells: TokenizedCells
    obs_index: np.ndarray  # (n,) row of each tokenised cell in the AnnData
    report: ValidationReport
    n_empty: int  # cells with no gene left after matching to the vocabulary


def prepare_cells(
    adata,
    vocab: GeneVocab,
    config: TokenizerConfig,
    *,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
    purpose: str = "embed",
    drop_empty: bool = False,
    seed: int = 0,
) -> PreparedCells:
    """Validate ``adata`` (raising :class:`~scmamba2.InputError` on a problem) and tokenise it.

    Cells without any vocabulary gene carry no information: with ``drop_empty`` they are left out (the count
    is logged, ``obs_index`` says which rows remain); otherwise they are kept and a warning is logged.
    """
    a = select_matrix(adata, layer=layer, use_raw=use_raw, gene_column=gene_column)
    report = validate(a, vocab=vocab, purpose=purpose)
    for w in report.warnings:
        log.warning(w)
    names = None
    if report.gene_prefix:  # e.g. "hg19_": validate matched the vocabulary without it, so must we
        names, _ = strip_gene_prefix(list(a.var_names))
    cells = tokenize(a, vocab, config, gene_names=names, seed=seed,
                     log_normalized=report.value_kind == "log_normalized")
    empty = np.asarray(cells.lengths) <= 1
    n_empty = int(empty.sum())
    obs_index = np.arange(a.n_obs)
    if n_empty and drop_empty:
        log.warning("%d of %d cells have no expressed vocabulary gene and are left out", n_empty, a.n_obs)
        obs_index = np.flatnonzero(~empty)
        cells = cells.subset(obs_index)
    elif n_empty:
        log.warning("%d of %d cells have no expressed vocabulary gene: their embedding carries no information",
                    n_empty, a.n_obs)
    return PreparedCells(cells=cells, obs_index=obs_index, report=report, n_empty=n_empty)
