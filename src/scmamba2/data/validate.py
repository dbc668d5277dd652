"""Checks that an AnnData can be tokenised: value kind, NaN/Inf, empty cells, gene names, vocabulary overlap.

All checks are vectorised over the stored values (``X.data`` of a sparse matrix, row blocks of a dense one);
nothing is densified. The value kind is decided on a deterministic sample of at most 2,000 cells.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["ValidationReport", "strip_gene_prefix", "validate"]

logger = logging.getLogger(__name__)

_SAMPLE_CELLS = 2000
_LOG_MAX = 20.0  # log1p / log2 of normalised counts stays below this
_CONSTANT_TOTAL_CV = 0.02  # per-cell totals this close to constant mean "normalised to a fixed total"
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
# A genome prefix: "hg19_", "GRCh38_", "mm10___" (any short token + underscores), or "GRCh38-" / "mm10-".
_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9.]{0,19}_+|(?:hg|mm|GRC[hm])\d+(?:\.\d+)?-+)(?=.)")
_KIND_TXT = {"symbol": "gene symbols", "ensembl": "Ensembl ids", "mixed": "a mix of symbols and Ensembl ids"}
_MAX_HINT_COLUMNS = 50  # var columns tried for a --gene-column hint


@dataclass
class ValidationReport:
    """What :func:`validate` found. ``ok`` is True when there are no errors."""

    n_cells: int = 0
    n_genes: int = 0
    value_kind: str = "raw_counts"  # raw_counts | log_normalized | normalized | scaled | negative_counts
    has_nan: bool = False
    has_inf: bool = False
    n_nan: int = 0
    n_inf: int = 0
    n_negative: int = 0
    max_value: float | None = None
    n_sampled_cells: int = 0
    n_empty_cells: int = 0
    n_empty_genes: int = 0
    n_duplicate_genes: int = 0
    duplicate_genes: list[str] = field(default_factory=list)
    gene_id_kind: str = "symbol"  # symbol | ensembl | mixed
    gene_prefix: str | None = None
    vocab_overlap: float | None = None
    n_vocab_matched: int | None = None
    unmatched_examples: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # layers other than the one now in X (alternatives)
    has_raw: bool = False
    purpose: str = "pretrain"
    vocab_name: str | None = None  # whose vocabulary vocab_overlap is about, when the summary should name it
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no error was found."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-serialisable dict (with ``ok``)."""
        return {**dataclasses.asdict(self), "ok": self.ok}

    def error_message(self) -> str:
        """Return the errors as one paragraph (no line breaks), as raised in :class:`~scmamba2.errors.InputError`."""
        if not self.errors:
            return ""
        head = f"The input ({self.n_cells:,} cells x {self.n_genes:,} genes) cannot be used"
        if len(self.errors) == 1:
            text = f"{head}: {self.errors[0]}"
        else:
            text = f"{head}; {len(self.errors)} problems: " + " ".join(
                f"({i}) {e}" for i, e in enumerate(self.errors, 1)
            )
        return " ".join(text.split())

    def summary(self, *, with_errors: bool = True) -> str:
        """Return a readable multi-line report (``with_errors=False``: without the list of errors, for a caller
        that shows :meth:`error_message` itself)."""
        status = "OK" if self.ok else f"{len(self.errors)} error(s)"
        mx = "n/a" if self.max_value is None else f"{self.max_value:.4g}"
        if self.vocab_overlap is None:
            vocab = "not checked (no vocabulary)"
        else:
            vocab = f"{self.vocab_overlap:.1%} of genes ({self.n_vocab_matched:,} matched)"
            if self.gene_prefix:
                vocab += f", after stripping {self.gene_prefix!r}"
            if self.vocab_name:
                vocab = f"{self.vocab_name}: {vocab}"
        dups = f"{self.n_duplicate_genes:,}"
        if self.duplicate_genes:
            dups += f" (e.g. {', '.join(self.duplicate_genes)})"
        lines = [
            f"scmamba2 input check ({self.purpose}): {status}",
            f"  cells x genes : {self.n_cells:,} x {self.n_genes:,}",
            f"  values        : {self.value_kind} (max {mx}; kind from {self.n_sampled_cells:,} sampled cells)",
            f"  NaN/Inf/neg.  : {self.n_nan:,} / {self.n_inf:,} / {self.n_negative:,}",
            f"  empty         : {self.n_empty_cells:,} cells, {self.n_empty_genes:,} genes",
            f"  duplicates    : {dups}",
            f"  gene ids      : {self.gene_id_kind}, prefix {self.gene_prefix!r}",
            f"  vocabulary    : {vocab}",
            f"  alternatives  : layers {self.layers or '[]'}, .raw {'yes' if self.has_raw else 'no'}",
        ]
        lines += ["Errors:"] + [f"  - {e}" for e in self.errors] if self.errors and with_errors else []
        lines += ["Warnings:"] + [f"  - {w}" for w in self.warnings] if self.warnings else []
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


_NAME_SAMPLE = 2000  # gene names sampled to detect a prefix or the identifier kind


def strip_gene_prefix(names: Iterable[str]) -> tuple[list[str], str | None]:
    """Detect and strip a genome prefix shared by most gene names (e.g. ``hg19_``, ``GRCh38_``, ``mm10_``).

    A prefix is a short token followed by underscores (or ``hg19-``-like genome names) found on more than
    half of the names, where the rest of the name contains a letter (so ``gene_1, gene_2`` is not stripped).

    Parameters
    ----------
    names
        Gene names.

    Returns
    -------
    names : list of str
        The names with the prefix removed where they carry it (others unchanged).
    prefix : str or None
        The detected prefix, or None (then the names are returned unchanged).
    """
    import pandas as pd

    s = pd.Series(np.asarray(names, dtype=object) if isinstance(names, (pd.Index, np.ndarray)) else list(names),
                  dtype=object)
    if pd.api.types.infer_dtype(s, skipna=False) != "string":
        s = s.astype(str)
    if s.empty:
        return [], None
    # Detect on an evenly spaced sample (fast for 60k names); strip on all names only when found.
    step = max(1, len(s) // _NAME_SAMPLE)
    if not s.iloc[::step].str.match(_PREFIX).mean() > 0.5:
        return s.tolist(), None
    cand = s.str.extract(_PREFIX, expand=False)
    counts = cand.value_counts()
    if counts.empty or counts.iloc[0] * 2 <= len(s):
        return s.tolist(), None
    prefix = str(counts.index[0])
    has = cand == prefix
    rest = s[has].str.slice(len(prefix))
    if rest.str.contains(r"[A-Za-z]", regex=True).mean() < 0.9:
        return s.tolist(), None
    out = s.where(~has, s.str.slice(len(prefix)))
    return out.tolist(), prefix


def validate(
    adata: anndata.AnnData,
    *,
    vocab: Any = None,
    purpose: str = "pretrain",
    min_overlap: float = 0.5,
    raise_on_error: bool = True,
) -> ValidationReport:
    """Check that ``adata.X`` can be tokenised and report what was found.

    Parameters
    ----------
    adata
        Cells x genes; X is the matrix checked (select a layer or ``.raw`` first with
        :func:`scmamba2.data.io.select_matrix`).
    vocab
        Optional gene vocabulary: any object with ``__contains__`` and ``__len__`` (e.g. a ``GeneVocab`` or a
        set). The overlap is computed on the gene names after stripping a detected genome prefix.
    purpose
        What the data is for (``"pretrain"``, ``"embed"``, ...); recorded and used in messages.
    min_overlap
        Smallest acceptable overlap: the fraction of the data's genes found in ``vocab`` or of the vocabulary's
        genes found in the data (the larger counts; a model built on a dataset's HVGs matches it).
    raise_on_error
        Raise :class:`~scmamba2.errors.InputError` when an error is found (the report is ``exc.report``).

    Returns
    -------
    ValidationReport
        The findings; ``report.ok`` is False when there are errors (only with ``raise_on_error=False``).

    Raises
    ------
    InputError
        With ``raise_on_error``: NaN/Inf values, scaled (negative) values, no cells/genes, only empty cells, or
        a vocabulary overlap below ``min_overlap``.
    """
    current = str((adata.uns.get("scmamba2_source") or {}).get("matrix", "X"))
    rep = ValidationReport(n_cells=int(adata.n_obs), n_genes=int(adata.n_vars), purpose=purpose,
                           layers=[str(k) for k in adata.layers.keys() if f"layers/{k}" != current],
                           has_raw=adata.raw is not None)
    if rep.n_cells == 0 or rep.n_genes == 0:
        rep.errors.append(f"it has {rep.n_cells} cells and {rep.n_genes} genes; check the file and any filtering "
                          "applied before (a cells x genes matrix with at least one of each is needed).")
        return _finish(rep, raise_on_error)
    x = _as_matrix(adata.X)
    _scan_values(x, rep)
    _value_kind(x, rep)
    names, stripped = _gene_names(adata.var_names, rep)

    if rep.has_nan or rep.has_inf:
        rep.errors.append(f"X contains {rep.n_nan:,} NaN and {rep.n_inf:,} infinite values, which cannot be "
                          f"binned into tokens. {_alternatives(rep)} If not, replace them at the source (e.g. "
                          "adata.X.data[~np.isfinite(adata.X.data)] = 0) and check how the matrix was made.")
    if rep.value_kind == "scaled":
        rep.errors.append(f"X holds scaled values ({rep.n_negative:,} negative entries, e.g. after sc.pp.scale or "
                          "z-scoring): per-cell ranks and zeros are lost, so the values cannot be tokenised. Give "
                          f"the model raw counts instead. {_alternatives(rep)}")
    if rep.value_kind == "negative_counts":
        rep.errors.append(f"X holds integer counts with {rep.n_negative:,} negative entries: counts cannot be "
                          "negative, so the matrix is damaged or was changed after counting (e.g. a subtraction). "
                          f"Give the model the raw counts. {_alternatives(rep)}")
    if rep.n_empty_cells == rep.n_cells:
        rep.errors.append(f"all {rep.n_cells:,} cells are empty (no non-zero value); check that the right matrix "
                          f"was selected. {_alternatives(rep)}")
    elif rep.n_empty_cells:
        rep.warnings.append(f"{rep.n_empty_cells:,} of {rep.n_cells:,} cells have no non-zero value: pretraining "
                            "leaves them out and an embedding of them carries no information; to remove them: "
                            "sc.pp.filter_cells(adata, min_genes=1).")
    if rep.value_kind == "log_normalized":
        hint = " (layer 'counts' holds raw counts if you prefer them)" if "counts" in rep.layers else ""
        rep.warnings.append("X looks log-normalised, not raw counts; accepted: quantile bins depend only on "
                            "per-cell ranks, and continuous values are computed from expm1 of X, so both are "
                            "the same as from raw counts" + hint + ".")
    elif rep.value_kind == "normalized":
        rep.warnings.append(f"X holds non-integer values that are not log-transformed (max {rep.max_value:.4g}); "
                            "per-cell normalised counts give the same per-cell ranks (and bins) as raw counts, but "
                            "other transforms (e.g. batch correction) do not: prefer raw counts (layer= / "
                            "use_raw=; --layer / --use-raw on the CLI) if you have them.")
    if rep.n_empty_genes:
        rep.warnings.append(f"{rep.n_empty_genes:,} of {rep.n_genes:,} genes are zero in every cell; they carry no "
                            "signal (sc.pp.filter_genes(adata, min_cells=1) removes them).")
    if rep.n_duplicate_genes:
        rep.warnings.append(f"{rep.n_duplicate_genes:,} gene names are duplicated (e.g. "
                            f"{', '.join(rep.duplicate_genes)}); duplicates map to the same token. Make them unique "
                            "with adata.var_names_make_unique() or use a column of unique ids.")
    if rep.gene_prefix:
        rep.warnings.append(f"gene names carry the prefix {rep.gene_prefix!r}; it is stripped when matching the "
                            "vocabulary.")
    if rep.gene_id_kind == "mixed":
        rep.warnings.append("gene names mix Ensembl ids and symbols; the vocabulary uses one kind, so genes of "
                            "the other kind will not match.")
    if vocab is not None:
        _vocab_overlap(adata, names, stripped, vocab, min_overlap, rep)
    return _finish(rep, raise_on_error)


# ----------------------------------------------------------------------------------------------------------
# helpers


def _finish(rep: ValidationReport, raise_on_error: bool) -> ValidationReport:
    # The caller decides how to show the warnings (they are in the report); log them quietly here.
    for w in rep.warnings:
        logger.debug("validate: %s", w)
    if rep.errors and raise_on_error:
        exc = InputError(rep.error_message())
        exc.report = rep  # type: ignore[attr-defined]
        raise exc
    return rep


def _alternatives(rep: ValidationReport) -> str:
    """The matrices the AnnData offers instead of X, with the options that pick them."""
    found = []
    if rep.layers:
        found.append("layers " + ", ".join(repr(k) for k in rep.layers))
    if rep.has_raw:
        found.append(".raw")
    if not found:
        return ("This AnnData has no layers and no .raw, so reload the original counts (and then use layer= / "
                "use_raw= in Python, --layer / --use-raw on the CLI, if they sit in a layer or .raw).")
    first = "counts" if "counts" in rep.layers else rep.layers[0] if rep.layers else "NAME"
    return (f"This AnnData also has {' and '.join(found)}: if one holds raw counts select it with "
            f"--layer {first} or --use-raw on the CLI (layer={first!r} / use_raw=True in Python).")


def _as_matrix(x):
    if x is None:
        raise InputError("The AnnData has no X matrix; select a layer or .raw first (layer= / use_raw=).")
    if hasattr(x, "to_memory"):  # backed sparse dataset
        x = x.to_memory()
    if sp.issparse(x):
        return x if x.format in ("csr", "csc") else x.tocsr()
    return np.asarray(x)


def _value_blocks(x):
    """Yield (row_offset, block) pieces: the whole sparse matrix, or dense row blocks of ~16M values."""
    if sp.issparse(x):
        yield 0, x
        return
    step = max(1, (1 << 24) // max(1, x.shape[1]))
    for start in range(0, x.shape[0], step):
        yield start, x[start : start + step]


def _scan_values(x, rep: ValidationReport) -> None:
    """NaN/Inf/negative counts, max, and empty cells/genes over the whole matrix."""
    row_nz = np.zeros(x.shape[0], dtype=np.int64)
    col_nz = np.zeros(x.shape[1], dtype=np.int64)
    vmax = -np.inf
    floating = np.issubdtype(x.dtype, np.floating)
    for start, blk in _value_blocks(x):
        vals = blk.data if sp.issparse(blk) else blk.ravel()
        lo = hi = 0
        if vals.size:
            lo, hi = vals.min(), vals.max()  # NaN and +-Inf show in these two
        if floating and not (np.isfinite(lo) and np.isfinite(hi)):
            finite = np.isfinite(vals)
            n_nan = int(np.isnan(vals).sum())
            rep.n_nan += n_nan
            rep.n_inf += int((~finite).sum()) - n_nan
            vals = vals[finite]
            lo, hi = (vals.min(), vals.max()) if vals.size else (0, 0)
        if vals.size:
            if lo < 0:
                rep.n_negative += int((vals < 0).sum())
            vmax = max(vmax, float(hi))
        if sp.issparse(blk):
            major = np.diff(blk.indptr).astype(np.int64)
            minor = np.bincount(blk.indices, minlength=blk.shape[1 if blk.format == "csr" else 0])
            zero = np.flatnonzero(blk.data == 0) if lo <= 0 <= hi else ()  # explicit zeros
            if len(zero):  # explicit zeros do not count as expressed
                major -= np.bincount(np.searchsorted(blk.indptr, zero, side="right") - 1, minlength=major.size)
                minor -= np.bincount(blk.indices[zero], minlength=minor.size)
            rows, cols = (major, minor) if blk.format == "csr" else (minor, major)
            row_nz += rows
            col_nz += cols
        else:
            nz = blk != 0
            row_nz[start : start + blk.shape[0]] += nz.sum(axis=1)
            col_nz += nz.sum(axis=0)
    rep.has_nan, rep.has_inf = rep.n_nan > 0, rep.n_inf > 0
    rep.max_value = None if vmax == -np.inf else vmax
    rep.n_empty_cells = int((row_nz == 0).sum())
    rep.n_empty_genes = int((col_nz == 0).sum())


def _all_integer(x) -> bool:
    """Whether every stored value of ``x`` is an integer (NaN is not; +-Inf counts as one)."""
    if x.dtype.kind in "iub":
        return True
    return all(np.array_equal(v, np.round(v)) for v in ((blk.data if sp.issparse(blk) else blk)
                                                        for _, blk in _value_blocks(x)))


def _row_totals(x) -> np.ndarray:
    """Per-row sums, ignoring NaN/Inf."""
    if sp.issparse(x):
        x = x.copy()
        x.data = np.where(np.isfinite(x.data), x.data, 0.0)
        return np.asarray(x.sum(axis=1)).ravel()
    return np.where(np.isfinite(x), x, 0.0).sum(axis=1)


def _constant_totals(totals: np.ndarray) -> bool:
    totals = totals[np.isfinite(totals) & (totals > 0)]
    if totals.size < 2:
        return False
    return float(totals.std() / totals.mean()) < _CONSTANT_TOTAL_CV


def _value_kind(x, rep: ValidationReport) -> None:
    """Decide raw_counts / log_normalized / normalized / scaled from a sample of at most 2,000 cells."""
    n = x.shape[0]
    rep.n_sampled_cells = min(n, _SAMPLE_CELLS)
    # Integers everywhere means integers in the sample: one pass on the stored values, no sample copy.
    if _all_integer(x):
        rep.value_kind = "negative_counts" if rep.n_negative else "raw_counts"
        return
    if n > _SAMPLE_CELLS:
        idx = np.sort(np.random.default_rng(0).choice(n, _SAMPLE_CELLS, replace=False))
        sample = x[idx]
    else:
        sample = x
    rep.n_sampled_cells = int(sample.shape[0])
    sample = sp.csr_matrix(sample, dtype=np.float64) if sp.issparse(sample) else np.asarray(sample, np.float64)
    vals = sample.data if sp.issparse(sample) else sample.ravel()
    vals = vals[np.isfinite(vals)]
    if rep.n_negative:  # integers with a few negatives are damaged counts; z-scores are not integers
        rep.value_kind = "negative_counts" if np.array_equal(vals, np.round(vals)) else "scaled"
        return
    if np.array_equal(vals, np.round(vals)):
        rep.value_kind = "raw_counts"
        return

    # Per-cell totals that are all the same mean normalize_total without a log (whatever the scale). Otherwise
    # values up to ~20 are a log of normalised counts (log1p of a 1e4 total stays < 10, log2 of CPM < 20;
    # a constant expm1 total is not required: size factors or gene subsetting break it).
    if _constant_totals(_row_totals(sample)):
        rep.value_kind = "normalized"
    elif vals.size and float(vals.max()) <= _LOG_MAX:
        rep.value_kind = "log_normalized"
    else:
        rep.value_kind = "normalized"


def vocabulary_overlap(adata: anndata.AnnData, vocab: Any, min_overlap: float = 0.5) -> ValidationReport:
    """Only the gene-name part of :func:`validate`: how many of ``adata``'s genes ``vocab`` holds. The report's
    ``ok`` / ``error_message()`` say whether the overlap reaches ``min_overlap``; values are not scanned."""
    rep = ValidationReport(n_cells=int(adata.n_obs), n_genes=int(adata.n_vars))
    names, stripped = _gene_names(adata.var_names, rep)
    _vocab_overlap(adata, names, stripped, vocab, min_overlap, rep)
    return rep


def looks_continuous(col, n_distinct: int, n: int) -> bool:
    """Whether an ``obs`` column given as categories (cell types, batches) holds a continuous value instead: float
    values that are not all whole, or more than 20 distinct values that are more than half of its ``n`` non-missing
    cells (``n_distinct`` of them distinct)."""
    import pandas as pd

    values = col.dropna()
    fractional = pd.api.types.is_float_dtype(col) and not np.array_equal(values, np.round(values))
    return fractional or (n_distinct > 20 and n_distinct > n / 2)


def name_columns(var) -> list:
    """The ``var`` columns that can hold gene names (strings or categories)."""
    import pandas as pd

    return [c for c in var.columns if pd.api.types.is_string_dtype(var[c])
            or isinstance(var[c].dtype, pd.CategoricalDtype)]


def column_matching_most(var, count, *, above: int = 0, skip=None, max_columns: int | None = None):
    """``(column, n)``: the name column of ``var`` whose values ``count`` (a function of the column's values as
    an array of str) scores highest, when that is more than ``above``; ``(None, above)`` when none is. Columns
    whose values equal ``skip`` (e.g. the names in use) are passed over."""
    skip = None if skip is None else np.asarray(skip, dtype=str)
    best, best_n = None, above
    for c in name_columns(var)[:max_columns]:
        values = var[c].astype(str).to_numpy()
        if skip is not None and np.array_equal(values, skip):
            continue
        n = count(values)
        if n > best_n:
            best, best_n = c, n
    return best, best_n


def _gene_column_hint(adata, names, vocab, n_matched: int) -> str:
    """Advice on --gene-column: the var column whose names the vocabulary holds most of, when that is more than
    the names in use; never a column that holds the names in use (e.g. the --gene-column already given)."""

    def in_vocab(values) -> int:
        genes = list(dict.fromkeys(strip_gene_prefix(values)[0]))
        return int((np.asarray(vocab.lookup(genes)) >= 0).sum() if hasattr(vocab, "lookup")
                   else sum(g in vocab for g in genes))

    best, best_n = column_matching_most(adata.var, in_vocab, above=n_matched, skip=names,
                                        max_columns=_MAX_HINT_COLUMNS)
    if best is not None:
        return (f" var column {best!r} has {best_n:,} of the vocabulary's genes: pass --gene-column {best} "
                f"(gene_column={best!r} in Python) to name the genes by it.")
    if not name_columns(adata.var):
        return (" If a var column holds the model's kind of gene names, pass it with --gene-column NAME "
                "(gene_column= in Python).")
    return ""


def _gene_names(var_names, rep: ValidationReport) -> tuple[Any, list[str]]:
    """Duplicates, prefix and id kind; returns the names (as str) and the names with the prefix stripped."""
    import pandas as pd

    # pandas caches ``inferred_type`` and ``is_unique`` on an Index: the names as read are not copied or hashed
    # again when they are strings already and unique (the usual case).
    names = var_names if getattr(var_names, "inferred_type", None) == "string" else var_names.astype(str)
    if names.is_unique:
        rep.n_duplicate_genes, rep.duplicate_genes = 0, []
    else:
        dup = names.duplicated()
        rep.n_duplicate_genes = int(dup.sum())
        rep.duplicate_genes = [str(g) for g in names[dup].unique()[:5]]
    stripped, rep.gene_prefix = strip_gene_prefix(names)
    step = max(1, len(stripped) // _NAME_SAMPLE)  # the id kind from an evenly spaced sample of names
    frac = float(pd.Series(stripped[::step], dtype=object).str.match(_ENSEMBL).mean()) if stripped else 0.0
    rep.gene_id_kind = "ensembl" if frac >= 0.9 else "symbol" if frac <= 0.1 else "mixed"
    return names, stripped


def _vocab_overlap(adata, names, stripped: list[str], vocab, min_overlap: float, rep: ValidationReport) -> None:
    # Unique, in order (the names themselves when they are unique and had no prefix).
    unique = rep.n_duplicate_genes == 0 and rep.gene_prefix is None
    genes = names if unique else list(dict.fromkeys(stripped))
    if hasattr(vocab, "lookup"):  # GeneVocab: one vectorised look-up
        found = np.asarray(vocab.lookup(genes)) >= 0
    else:
        found = np.fromiter((g in vocab for g in genes), dtype=bool, count=len(genes))
    rep.n_vocab_matched = int(found.sum())
    rep.vocab_overlap = rep.n_vocab_matched / len(genes) if len(genes) else 0.0
    rep.unmatched_examples = [str(genes[i]) for i in np.flatnonzero(~found)[:5]]
    # Either side counts: data with many more genes than a model built on its HVGs matches most of the vocabulary.
    n_vocab_genes = len(getattr(vocab, "genes", vocab))
    vocab_side = rep.n_vocab_matched / n_vocab_genes if n_vocab_genes else 0.0
    if rep.n_vocab_matched and max(rep.vocab_overlap, vocab_side) >= min_overlap:
        if rep.vocab_overlap < 0.9:
            rep.warnings.append(f"{len(genes) - rep.n_vocab_matched:,} of {len(genes):,} genes "
                                f"({1 - rep.vocab_overlap:.0%}) are not in the vocabulary and will be ignored "
                                f"(e.g. {', '.join(rep.unmatched_examples)}).")
        return
    try:
        examples = [str(t) for t in islice((t for t in vocab if not str(t).startswith("<")), 5)]
    except TypeError:
        examples = []
    vocab_txt = f"; the vocabulary ({len(vocab):,} entries) has e.g. {', '.join(examples)}" if examples else ""
    prefix_txt = f" (after stripping the prefix {rep.gene_prefix!r})" if rep.gene_prefix else ""
    col_txt = _gene_column_hint(adata, names, vocab, rep.n_vocab_matched)
    rep.errors.append(
        f"only {rep.n_vocab_matched:,} of {len(genes):,} genes ({rep.vocab_overlap:.1%}) are in the model's "
        f"vocabulary{prefix_txt} ({vocab_side:.1%} of its {n_vocab_genes:,} genes), below the minimum of "
        f"{min_overlap:.0%} on either side; genes not found, e.g. "
        f"{', '.join(rep.unmatched_examples)}{vocab_txt}. The data's gene names look like "
        f"{_KIND_TXT[rep.gene_id_kind]}: "
        "check that data and model use the same species and the same kind of identifier (symbols vs Ensembl "
        f"ids) and that any genome prefix (e.g. 'hg19_') is removed.{col_txt}"
    )
