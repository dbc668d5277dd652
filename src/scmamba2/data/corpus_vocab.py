"""A gene vocabulary over a corpus, from the shards' ``var`` tables only (no matrix is read).

Tokens are gene symbols (as in scGPT's vocabulary). Identifiers are harmonised per shard:

- a shard named by symbols that also carries Ensembl ids (``gene_ids``, ``feature_id``, ...) teaches the
  id -> symbol map (the first symbol seen for an id wins; a later shard that calls the same id otherwise is
  reported as ``renamed`` and read under the first symbol);
- a shard named by Ensembl ids is read through that map (its own symbol column is used when it has one);
  an id no shard gives a symbol for stays an id token (reported as ``kept_as_id``).

Genes are dropped only for a reason written in the :class:`VocabReport`: an empty name, a name that is a
special token, a second column with the same gene in one shard, or presence in fewer than ``min_shards``
shards.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._keys import SPECIAL_TOKENS
from .vocab import GeneVocab

__all__ = ["VocabReport", "CorpusVocab", "build_corpus_vocab", "shard_tokens", "is_ensembl"]

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_ID_COLUMNS = ("gene_ids", "gene_id", "feature_id", "ensembl_id", "ensembl", "gene_ensembl")
_SYMBOL_COLUMNS = ("feature_name", "gene_symbol", "gene_symbols", "gene_name", "symbol")
_EXAMPLES = 20


def is_ensembl(names: Any) -> np.ndarray:
    """Which names look like Ensembl gene ids (``ENSG00000141510``, ``ENSMUSG...``, version suffix allowed)."""
    return np.array([bool(_ENSEMBL.match(str(n))) for n in names], dtype=bool)


def _strip_version(ids: np.ndarray) -> np.ndarray:
    return np.array([str(i).split(".", 1)[0] for i in ids], dtype=object)


def _pick(var: pd.DataFrame, candidates: tuple[str, ...], want_ensembl: bool) -> np.ndarray | None:
    for c in candidates:
        if c in var.columns:
            vals = var[c].astype(str).to_numpy()
            if (is_ensembl(vals).mean() > 0.5) == want_ensembl:
                return vals
    return None


def _ids_and_symbols(var: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The Ensembl ids and the symbols of a shard's genes (either may be None)."""
    names = var.index.astype(str).to_numpy()
    if len(names) and is_ensembl(names).mean() > 0.5:
        return _strip_version(names), _pick(var, _SYMBOL_COLUMNS, want_ensembl=False)
    ids = _pick(var, _ID_COLUMNS, want_ensembl=True)
    return (None if ids is None else _strip_version(ids)), names


def shard_tokens(var: pd.DataFrame, aliases: dict[str, str]) -> np.ndarray:
    """The token name of each column of a shard (``None`` for a column that is dropped).

    ``aliases`` maps Ensembl ids to symbols (:attr:`CorpusVocab.aliases`). This function is the one rule
    that both :func:`build_corpus_vocab` and the corpus reader apply, so they always agree.
    """
    ids, symbols = _ids_and_symbols(var)
    n = len(var)
    out = np.empty(n, dtype=object)
    for j in range(n):
        sym = None if symbols is None else symbols[j]
        if sym is not None and (sym == "" or sym.lower() == "nan"):
            sym = None
        gid = None if ids is None else ids[j]
        if gid is not None and gid in aliases:
            out[j] = aliases[gid]
        else:
            out[j] = sym if sym is not None else gid
    tokens = pd.Index(out.astype(str))
    bad = pd.isna(out) | tokens.isin(SPECIAL_TOKENS) | tokens.duplicated()
    out[bad] = None
    return out


@dataclass
class VocabReport:
    """What :func:`build_corpus_vocab` kept, renamed and dropped, per reason (counts and examples)."""

    n_shards: int = 0
    n_genes: int = 0
    per_shard: dict[str, dict[str, int]] = field(default_factory=dict)
    mapped_from_id: int = 0  # columns named by an Ensembl id, read under a symbol
    kept_as_id: list[str] = field(default_factory=list)  # ids no shard gave a symbol for (the first 1,000)
    n_kept_as_id: int = 0
    renamed: dict[str, str] = field(default_factory=dict)  # shard symbol -> canonical symbol of the same id
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> genes (or "shard: column")

    def to_dict(self) -> dict[str, Any]:
        return {"n_shards": self.n_shards, "n_genes": self.n_genes, "per_shard": self.per_shard,
                "mapped_from_id": self.mapped_from_id, "n_kept_as_id": self.n_kept_as_id,
                "kept_as_id": self.kept_as_id, "renamed": self.renamed,
                "dropped": {k: {"count": len(v), "genes": v} for k, v in self.dropped.items()}}

    def summary(self) -> str:
        lines = [f"vocabulary: {self.n_genes} genes from {self.n_shards} shards; {self.mapped_from_id} columns "
                 f"named by Ensembl id mapped to symbols, {self.n_kept_as_id} ids kept (no symbol known), "
                 f"{len(self.renamed)} symbols renamed to the first symbol of their id"]
        for reason, genes in self.dropped.items():
            lines.append(f"dropped ({reason}): {len(genes)}, e.g. {', '.join(genes[:5])}")
        return "\n".join(lines)

    def write(self, path: str | Path) -> None:
        from .files import write_json

        write_json(path, self.to_dict(), indent=2)


@dataclass
class CorpusVocab:
    """The vocabulary, the Ensembl id -> symbol map to read shards with, and the report."""

    vocab: GeneVocab
    aliases: dict[str, str]
    report: VocabReport


def build_corpus_vocab(corpus, *, min_shards: int = 1) -> CorpusVocab:
    """Build a gene vocabulary over all shards of ``corpus`` from their ``var`` tables.

    Parameters
    ----------
    corpus
        A :class:`~scmamba2.data.corpus.Corpus` (or a list of shards).
    min_shards
        Keep genes present in at least this many shards (1 keeps every gene).

    Returns
    -------
    CorpusVocab
        Genes in first-seen order (shard order, then column order).
    """
    shards = list(getattr(corpus, "shards", corpus))
    rep = VocabReport(n_shards=len(shards))
    drop: dict[str, list[str]] = {}
    # Pass 1: learn id -> symbol from the shards that carry both.
    aliases: dict[str, str] = {}
    for s in shards:
        ids, symbols = _ids_and_symbols(s.var())
        if ids is None or symbols is None:
            continue
        for gid, sym in zip(ids, symbols):
            if sym and sym.lower() != "nan" and not _ENSEMBL.match(sym):
                if gid in aliases and aliases[gid] != sym:
                    rep.renamed[sym] = aliases[gid]
                aliases.setdefault(gid, sym)
    # Pass 2: the tokens of every shard, and why columns fall out.
    seen: Counter[str] = Counter()
    order: dict[str, None] = {}
    for s in shards:
        var = s.var()
        ids, symbols = _ids_and_symbols(var)
        tokens = shard_tokens(var, aliases)
        raw = np.asarray(var.index.astype(str))
        kept = [t for t in tokens if t is not None]
        key = s.name if s.name not in rep.per_shard else f"{s.name} ({len(rep.per_shard)})"  # same file names
        rep.per_shard[key] = {"columns": len(var), "tokens": len(kept)}
        if ids is not None and symbols is None:
            rep.mapped_from_id += int(sum(1 for g in ids if g in aliases))
        for j in np.flatnonzero(pd.isna(tokens)):
            name = raw[j]
            reason = ("empty name" if name in ("", "nan") else "special-token name" if name in SPECIAL_TOKENS
                      else "repeated gene within a shard (first column kept)")
            drop.setdefault(reason, []).append(f"{s.name}: {name}")
        for t in dict.fromkeys(kept):
            seen[t] += 1
            order.setdefault(t, None)
    genes = [g for g in order if seen[g] >= min_shards]
    if min_shards > 1:
        drop[f"in fewer than {min_shards} shards"] = [g for g in order if seen[g] < min_shards]
    as_id = [g for g in genes if _ENSEMBL.match(g)]
    rep.kept_as_id, rep.n_kept_as_id = as_id[:_EXAMPLES * 50], len(as_id)
    rep.dropped = {k: v for k, v in drop.items() if v}
    rep.n_genes = len(genes)
    return CorpusVocab(vocab=GeneVocab(genes), aliases=aliases, report=rep)
