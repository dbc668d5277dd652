"""Gene vocabulary: special tokens first, then genes, each with a stable integer id."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._keys import CLS_TOKEN, EOC_TOKEN, MASK_TOKEN, PAD_TOKEN, SPECIAL_TOKENS
from ..errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["GeneVocab", "first_columns", "fold_case_index", "match_ignoring_case", "match_names"]

_RECENT_LOOKUPS = 32  # Index objects whose ids GeneVocab.lookup keeps (a streamed corpus: one per shard)
_LOGGED_CASE_MATCHES: set[tuple] = set()  # (target, count, examples) already logged: streamed blocks repeat them


def fold_case_index(tokens: Sequence[str], exclude: Iterable[str] = ()) -> tuple[pd.Index, np.ndarray]:
    """The upper-cased spellings of ``tokens`` that only one token has (``exclude``d tokens left out), and the
    position of that token in ``tokens``: the index :func:`match_ignoring_case` looks names up in."""
    skip = set(exclude)
    keep = np.array([t not in skip for t in tokens], dtype=bool)
    folded = pd.Index([str(t).upper() for t in tokens], dtype=object)
    unique = keep & ~folded.duplicated(keep=False) & ~folded.isin(folded[~keep])
    return pd.Index(folded[unique], dtype=object), np.flatnonzero(unique)


def match_ignoring_case(names: pd.Index, ids: np.ndarray, folded: tuple[pd.Index, np.ndarray], tokens: Sequence[str],
                        *, what: str) -> np.ndarray:
    """``ids`` (a position in ``tokens`` per name, ``-1`` unmatched) with unmatched names matched ignoring case
    (``C1ORF159`` -> ``C1orf159``), where at least half of the names that could match (``names`` or ``tokens``,
    whichever is shorter) match as written (the same identifiers, so the difference is formatting, not species),
    only one token has that spelling ignoring case (``folded``, from :func:`fold_case_index`) and no name
    already matches that token as written."""
    miss = np.flatnonzero(ids < 0)
    if len(miss) == 0 or len(ids) - len(miss) < 0.5 * min(len(ids), len(tokens)):
        return ids
    by_fold, token_pos = folded
    keys = pd.Index([n.upper() if isinstance(n, str) else None for n in names[miss]], dtype=object)
    pos = by_fold.get_indexer(keys)
    taken = set(ids[ids >= 0].tolist())
    ids = ids.copy()
    examples = []
    for i, p in zip(miss[pos >= 0], pos[pos >= 0]):
        c = int(token_pos[p])
        if c not in taken:
            ids[i] = c
            taken.add(c)
            if len(examples) < 3:
                examples.append(f"{names[i]!r} -> {tokens[c]!r}")
    n = int((ids[miss] >= 0).sum())
    key = (what, n, tuple(examples))
    if n and key not in _LOGGED_CASE_MATCHES:
        _LOGGED_CASE_MATCHES.add(key)
        logger.info("%d gene name(s) match %s only when case is ignored (e.g. %s)", n, what, ", ".join(examples))
    return ids


def match_names(names: Sequence[str], targets: Sequence[str], *, what: str) -> np.ndarray:
    """The position in ``targets`` of each of ``names`` (a repeated target: its first; ``-1``: none), matched as
    written or, under the rules of :func:`match_ignoring_case`, ignoring case. ``what`` names ``targets`` in the
    log line of case-only matches."""
    targets = list(targets)
    first: dict[str, int] = {}
    for i, t in enumerate(targets):
        first.setdefault(t, i)
    names = pd.Index(names, dtype=object)
    ids = np.array([first.get(n, -1) for n in names], dtype=np.int64)
    if not (ids < 0).any():
        return ids
    return match_ignoring_case(names, ids, fold_case_index(targets), targets, what=what)


def first_columns(names: Sequence[str], targets: Sequence[str], *, what: str) -> dict[int, int]:
    """``{position in targets: position of the first of names that matches it}`` for every matched target, names
    matched as :func:`match_names` does: the data columns to read each of ``targets`` from (a gene in several
    columns: its first), in the order of ``names``."""
    first: dict[int, int] = {}
    for column, target in enumerate(match_names(names, targets, what=what)):
        if target >= 0:
            first.setdefault(int(target), column)
    return first


class GeneVocab:
    """A mapping between tokens (special tokens and gene names) and integer ids.

    A vocabulary built from gene names puts the special tokens first (``<pad>`` = 0, ``<cls>`` = 1,
    ``<eoc>`` = 2, ``<mask>`` = 3) and the genes after them in the given order. Ids are always
    ``0 .. len(vocab) - 1`` without gaps.

    Parameters
    ----------
    genes : sequence of str
        Gene names, in id order. Duplicates and names equal to a special token are rejected.

    Raises
    ------
    InputError
        If a gene name occurs twice or is a special token.

    Examples
    --------
    >>> vocab = GeneVocab(["CD3E", "MS4A1"])
    >>> vocab["CD3E"], vocab.pad_id, len(vocab)
    (4, 0, 6)
    """

    def __init__(self, genes: Sequence[str]) -> None:
        genes = [str(g) for g in genes]
        clash = sorted(set(genes) & set(SPECIAL_TOKENS))
        if clash:
            raise InputError(
                f"Gene names {clash} are reserved special tokens; rename these genes before building a vocabulary."
            )
        self._set_tokens(list(SPECIAL_TOKENS) + genes)

    def _set_tokens(self, tokens: list[str]) -> None:
        index = pd.Index(tokens, dtype=object)
        if not index.is_unique:
            dup = index[index.duplicated()].unique()
            examples = ", ".join(map(repr, dup[:5]))
            raise InputError(
                f"The vocabulary has {len(dup)} duplicated gene name(s) (e.g. {examples}); "
                "gene names must be unique: drop or rename the duplicates (e.g. adata.var_names_make_unique())."
            )
        self._tokens = tokens
        self._index = index
        self._recent: dict[int, tuple[pd.Index, np.ndarray]] = {}  # see lookup()
        self._folded: tuple[pd.Index, np.ndarray] | None = None  # fold_case_index of the tokens, built when needed
        special = set(SPECIAL_TOKENS)
        self._genes = [t for t in tokens if t not in special]

    @classmethod
    def _from_tokens(cls, tokens: list[str]) -> GeneVocab:
        obj = cls.__new__(cls)
        obj._set_tokens(tokens)
        return obj

    @classmethod
    def from_adata(cls, adata_or_list: Any, *, gene_key: str | None = None) -> GeneVocab:
        """Build a vocabulary from the genes of one or more AnnData objects.

        Parameters
        ----------
        adata_or_list : AnnData or iterable of AnnData
            The datasets. Their genes are united in first-seen order; repeats are kept once.
        gene_key : str, optional
            Column of ``var`` holding the gene names; default: ``var_names``.

        Returns
        -------
        GeneVocab
        """
        adatas = [adata_or_list] if hasattr(adata_or_list, "var_names") else list(adata_or_list)
        if not adatas:
            raise InputError("GeneVocab.from_adata needs at least one AnnData.")
        names = []
        for adata in adatas:
            col = adata.var_names if gene_key is None else adata.var[gene_key]
            names.append(pd.Index(np.asarray(col).astype(str)))
        union = pd.Index(np.concatenate([n.to_numpy() for n in names])).unique()
        union = union[~union.isin(SPECIAL_TOKENS)]
        return cls(union.tolist())

    # --- mapping ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __getitem__(self, token: str) -> int:
        try:
            return int(self._index.get_loc(token))
        except KeyError:
            raise KeyError(f"{token!r} is not in the vocabulary") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GeneVocab):
            return NotImplemented
        return self._tokens == other._tokens

    def __hash__(self) -> int:
        return hash(tuple(self._tokens))

    def __repr__(self) -> str:
        return f"GeneVocab({len(self.genes)} genes + {len(SPECIAL_TOKENS)} special tokens)"

    @property
    def tokens(self) -> list[str]:
        """All tokens (special tokens included) in id order."""
        return list(self._tokens)

    @property
    def genes(self) -> list[str]:
        """Gene names in id order, without the special tokens."""
        return list(self._genes)

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>``."""
        return self[PAD_TOKEN]

    @property
    def cls_id(self) -> int:
        """Id of ``<cls>``."""
        return self[CLS_TOKEN]

    @property
    def eoc_id(self) -> int:
        """Id of ``<eoc>``."""
        return self[EOC_TOKEN]

    @property
    def mask_id(self) -> int:
        """Id of ``<mask>``."""
        return self[MASK_TOKEN]

    def lookup(self, names: Iterable[str] | np.ndarray | pd.Index) -> np.ndarray:
        """Map token names to ids, vectorised.

        Parameters
        ----------
        names : array-like of str
            Names to look up.

        Returns
        -------
        numpy.ndarray of int64
            The id of each name, ``-1`` where the name is not in the vocabulary.

        Notes
        -----
        A name not found as written is matched ignoring case (``C1ORF159`` -> ``C1orf159``, as some files
        upper-case every symbol) under the rules of :func:`match_ignoring_case`. Mouse symbols on a human
        vocabulary (``Cd4`` vs ``CD4``) match almost nothing as written, so they are not mapped across species.
        """
        if not isinstance(names, pd.Index):
            if not isinstance(names, (np.ndarray, list, tuple, pd.Series)):
                names = list(names)
            names = pd.Index(np.asarray(names, dtype=object))
        # An Index object looked up recently (validate then tokenize; a streamed shard's names, block after
        # block): its ids again. An Index is immutable through its API; writing into its underlying array in place
        # would leave these ids (and pandas' own caches of it) stale.
        hit = self._recent.get(id(names))
        if hit is not None and hit[0] is names:
            return hit[1].copy()
        ids = self._index.get_indexer(names.astype(object)).astype(np.int64, copy=False)
        if (ids < 0).any():
            if self._folded is None:
                self._folded = fold_case_index(self._tokens, exclude=SPECIAL_TOKENS)
            ids = match_ignoring_case(names, ids, self._folded, self._tokens, what="the vocabulary")
        if len(self._recent) >= _RECENT_LOOKUPS:
            del self._recent[next(iter(self._recent))]  # the oldest
        self._recent[id(names)] = (names, ids)
        return ids.copy()

    def extend(self, names: Iterable[str]) -> GeneVocab:
        """A new vocabulary with ``names`` appended (those already present are skipped); ids of existing
        tokens do not change, so a model's gene embedding can grow with it (see ``ScMamba2.adapt``)."""
        new = [n for n in dict.fromkeys(map(str, names)) if n not in self._index]
        return self._from_tokens(self._tokens + new)

    def to_dict(self) -> dict[str, int]:
        """Return the ``{token: id}`` mapping."""
        return {t: i for i, t in enumerate(self._tokens)}

    # --- persistence ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON ``{token: id}`` (the layout of scGPT's ``vocab.json``).

        Parameters
        ----------
        path : str or Path
            Destination file.
        """
        from .files import write_json

        write_json(path, self.to_dict(), ensure_ascii=False)
        logger.debug("Saved a vocabulary of %d tokens to %s", len(self), path)

    @classmethod
    def load(cls, path: str | Path, *, add_missing_specials: bool = False) -> GeneVocab:
        """Read a JSON ``{token: id}`` vocabulary (ours, or a scGPT-style ``vocab.json``).

        The ids in the file are kept as they are, so a model trained with that vocabulary sees the same
        ids; they must be ``0 .. n - 1`` without gaps or repeats. The special tokens may have any ids
        (use :attr:`pad_id` and friends, never hard-coded numbers).

        Parameters
        ----------
        path : str or Path
            The JSON file.
        add_missing_specials : bool, default False
            A file without all four special tokens (``<pad>``, ``<cls>``, ``<eoc>``, ``<mask>``) is
            rejected by default, because the ids of the missing ones would be invented. With ``True`` the
            missing ones are appended after the last id, and this is logged.

        Returns
        -------
        GeneVocab

        Raises
        ------
        InputError
            If the file is not a JSON object of integer ids, the ids are not ``0 .. n - 1``, or special
            tokens are missing and ``add_missing_specials`` is False.
        """
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as fh:
                mapping = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"Cannot read the vocabulary file {path}: {exc}.") from exc
        if not isinstance(mapping, dict) or not all(type(v) is int for v in mapping.values()):
            raise InputError(f"The vocabulary file {path} must hold a JSON object mapping each token to an integer id.")
        ids = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
        if not np.array_equal(np.sort(ids), np.arange(len(ids))):
            raise InputError(
                f"The ids in {path} must be 0..{len(ids) - 1}, each once; the file has gaps or repeated ids, "
                "so it cannot be used as a vocabulary without renumbering."
            )
        tokens = [""] * len(ids)
        for token, i in mapping.items():
            tokens[i] = str(token)
        missing = [t for t in SPECIAL_TOKENS if t not in mapping]
        if missing:
            if not add_missing_specials:
                raise InputError(
                    f"The vocabulary file {path} lacks the special token(s) {missing}. Load it with "
                    "GeneVocab.load(path, add_missing_specials=True) to append them after the last id "
                    "(the model's embedding table then needs those extra rows)."
                )
            n = len(tokens)
            logger.warning("Vocabulary %s lacks %s; appended with ids %d..%d", path, missing, n, n + len(missing) - 1)
            tokens.extend(missing)
        vocab = cls._from_tokens(tokens)
        if [vocab[t] for t in SPECIAL_TOKENS] != [0, 1, 2, 3]:
            ids = {t: vocab[t] for t in SPECIAL_TOKENS}
            logger.info("Vocabulary %s keeps its own special-token ids: %s", path, ids)
        return vocab
