"""Annotation, second half: the fitted :class:`Annotator` (model + class names + genes), how a data set's genes
are matched to it, and :func:`predict` (labels, calibrated confidence, class probabilities, ``unknown``).

:func:`scmamba2.tasks.annotate.fit_annotator` builds an :class:`Annotator`; :func:`predict` applies it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.files import read_json, write_json
from ..data.vocab import first_columns
from ..errors import CheckpointError, InputError
from ..model import ScMamba2
from ._annotate_genes import GeneProbe, mix
from ._annotate_probe import LinearProbe
from ._annotate_typicality import Typicality

log = logging.getLogger(__name__)

__all__ = ["Annotator", "predict", "match_genes", "META_FILE", "UNKNOWN"]

META_FILE = "annotation.json"
UNKNOWN = "unknown"


@dataclass
class Annotator:
    """A cell-type classifier and what it needs to label new cells.

    Attributes
    ----------
    model
        The :class:`~scmamba2.ScMamba2`: fine-tuned with a classifier head (``n_classes == len(classes)``), or the
        frozen pretrained encoder read by ``probe``. Its tokenizer config says how a cell is read.
    classes
        Class names in the order of the classifier's outputs.
    genes
        The genes the classifier was trained on (the reference's genes in the model vocabulary); a query is
        read on these genes only.
    label_key
        The reference's ``obs`` column the classes came from.
    temperature
        Softmax temperature fitted on the held-out reference cells (1 = uncalibrated).
    typicality
        How typical a cell's embedding is of its predicted class
        (:class:`~scmamba2.tasks._annotate_typicality.Typicality`); ``None``: not used.
    info
        Training summary (split sizes, class weights, steps, validation metrics, ...).
    probe
        A :class:`~scmamba2.tasks._annotate_probe.LinearProbe` on the pooled encoder output, used instead of the
        model's classifier head (``None``: the head).
    gene_probe, gene_weight
        A :class:`~scmamba2.tasks._annotate_genes.GeneProbe` whose class probabilities are averaged with the
        probe's, with this weight (``None`` / 0: the probe alone).
    side_models
        Further frozen encoders read side by side with ``model`` (the probe only; each with ``model``'s vocabulary
        and tokenizer): the probe reads their embeddings after ``model``'s, as :func:`scmamba2.embed` puts several
        models side by side. Empty: ``model`` alone.
    """

    model: ScMamba2
    classes: list[str]
    genes: list[str]
    label_key: str
    temperature: float = 1.0
    typicality: Typicality | None = None
    info: dict[str, Any] = field(default_factory=dict)
    probe: LinearProbe | None = None
    gene_probe: GeneProbe | None = None
    gene_weight: float = 0.0
    side_models: list[ScMamba2] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.side_models = list(self.side_models)
        if self.side_models and self.probe is None:
            raise CheckpointError("side models are read by the linear probe: an annotator with a classifier head "
                                  "reads one model")
        for m in self.side_models:
            if m.vocab is None or self.model.vocab is None or m.vocab.tokens != self.model.vocab.tokens \
                    or m.tokenizer_config != self.model.tokenizer_config:
                raise CheckpointError("a side model reads cells with another vocabulary or tokenizer than the first "
                                      "model: models side by side must share both")
        if self.gene_probe is not None and (self.probe is None or self.gene_probe.n_classes != len(self.classes)):
            raise CheckpointError(f"the gene probe has {self.gene_probe.n_classes} outputs for {len(self.classes)} "
                                  "class names (and needs the linear probe): the annotator files do not match")
        if self.probe is not None:
            width = sum(m.config.d_model for m in self.models)
            if self.probe.n_classes != len(self.classes) or self.probe.weight.shape[1] != width:
                raise CheckpointError(f"the linear probe has {self.probe.n_classes} outputs over "
                                      f"{self.probe.weight.shape[1]} features but {len(self.classes)} class names and "
                                      f"a d_model of {width} (summed over the models side by side): the annotator "
                                      "files do not match")
        k = self.model.config.n_classes
        if self.probe is None and (self.model.classifier is None or k != len(self.classes)):
            raise CheckpointError(f"the model has {k} classifier outputs but {len(self.classes)} class names are "
                                  "given; an annotator needs a model fine-tuned for exactly these classes")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")

    @property
    def models(self) -> list[ScMamba2]:
        """``model`` and the ``side_models``: the encoders whose embeddings the probe reads side by side."""
        return [self.model, *self.side_models]

    def save(self, directory: str | Path) -> Path:
        """Write the model checkpoint, each side model's in ``side_model_<i>/``, and ``annotation.json`` (classes,
        genes, temperature, probe, training summary)."""
        out = self.model.save_pretrained(directory)
        for i, m in enumerate(self.side_models, 1):
            m.save_pretrained(out / f"side_model_{i}")
        meta = {"classes": self.classes, "label_key": self.label_key, "temperature": self.temperature,
                "genes": self.genes, "info": self.info,
                "typicality": None if self.typicality is None else self.typicality.to_dict(),
                "probe": None if self.probe is None else self.probe.to_dict(),
                "gene_probe": None if self.gene_probe is None else self.gene_probe.to_dict(),
                "gene_weight": self.gene_weight, "side_models": len(self.side_models)}
        write_json(out / META_FILE, meta, indent=2, default=str)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "Annotator":
        """Read what :meth:`save` wrote."""
        src = Path(directory)
        if not (src / META_FILE).is_file():
            raise CheckpointError(f"{src} has no {META_FILE}: it is not an annotation model (write one with "
                                  "scmamba2.annotate(..., out_dir=DIR) or `scmamba2 annotate --save-model DIR`)")
        meta = read_json(src / META_FILE, fix="Save the annotator again (`scmamba2 annotate --save-model DIR`).")
        typ, probe, genes = meta.get("typicality"), meta.get("probe"), meta.get("gene_probe")
        return cls(model=ScMamba2.from_pretrained(src), classes=list(meta["classes"]), genes=list(meta["genes"]),
                   label_key=str(meta["label_key"]), temperature=float(meta["temperature"]),
                   typicality=None if typ is None else Typicality.from_dict(typ), info=dict(meta.get("info") or {}),
                   probe=None if probe is None else LinearProbe.from_dict(probe),
                   gene_probe=None if genes is None else GeneProbe.from_dict(genes),
                   gene_weight=float(meta.get("gene_weight", 0.0)),
                   side_models=[ScMamba2.from_pretrained(src / f"side_model_{i}")
                                for i in range(1, int(meta.get("side_models", 0)) + 1)])


def check_raw(adata, use_raw: bool, what: str, option: str) -> None:
    """Refuse ``use_raw`` for an AnnData without ``.raw``, naming the data set (``what``: reference, query) and the
    ``option`` that asked for it."""
    from ..data.io import _describe_alternatives

    if use_raw and adata.raw is None:
        raise InputError(f"{option} was given but the {what} has no .raw. {_describe_alternatives(adata, raw=False)}")


def match_genes(adata, genes: Sequence[str], *, layer: str | None = None, use_raw: bool = False,
                gene_column: str | None = None, min_overlap: float = 0.5, what: str = "query",
                raw_hint: str = "use_raw=True / --use-raw"):
    """The matrix of ``adata`` restricted to ``genes`` (in the data's column order), and an overlap report.

    ``what`` names the data set in messages, ``raw_hint`` the option that reads its ``.raw``.

    Gene names are compared after stripping a genome prefix (e.g. ``hg19_``), and ignoring case as
    :meth:`~scmamba2.data.vocab.GeneVocab.lookup` does; a gene present in several columns keeps its first. A gene of ``genes`` missing from the data reads as not expressed.

    Returns
    -------
    (AnnData, dict)
        The selected matrix on the matched columns, and ``{"n_model_genes", "n_matched", "overlap",
        "missing_examples"}`` (``overlap`` = matched / model genes).

    Raises
    ------
    InputError
        When fewer than ``min_overlap`` of ``genes`` are found.
    """
    from ..data.io import select_matrix
    from ..data.validate import strip_gene_prefix

    a = select_matrix(adata, layer=layer, use_raw=use_raw, gene_column=gene_column)
    names, prefix = strip_gene_prefix([str(g) for g in a.var_names])
    genes = list(dict.fromkeys(genes))
    first = first_columns(names, genes, what="the model's genes")
    cols = np.array(sorted(first.values()), dtype=np.int64)
    n_found = len(first)
    overlap = n_found / max(len(genes), 1)
    missing = [g for i, g in enumerate(genes) if i not in first][:5]
    report = {"n_model_genes": len(genes), "n_matched": n_found, "overlap": round(overlap, 4),
              "missing_examples": missing}
    if overlap < min_overlap:
        if n_found >= 0.5 * a.n_vars:  # the names match, but the file holds few genes: a subset such as HVGs
            raw = (f": it has a .raw with {adata.raw.n_vars:,} genes ({raw_hint})."
                   if adata.raw is not None and not use_raw and adata.raw.n_vars > a.n_vars else
                   " (e.g. the file before sc.pp.highly_variable_genes subsetting).")
            raise InputError(
                f"the {what} has only {n_found:,} of the model's {len(genes):,} genes ({overlap:.1%}), below the "
                f"minimum of {min_overlap:.0%}, although {n_found:,} of its own {a.n_vars:,} genes are the model's: "
                f"it looks like a subset of genes (e.g. highly variable genes only). Give the {what} with every "
                f"measured gene, raw counts or log-normalised values{raw}")
        text_columns = [c for c in a.var.columns if pd.api.types.is_string_dtype(a.var[c])
                        or isinstance(a.var[c].dtype, pd.CategoricalDtype)]
        hint = (f" var has the text column(s) {text_columns}: pass gene_column= (--gene-column) if one holds the "
                "gene names the model uses." if text_columns else "")
        raise InputError(
            f"the {what} has only {n_found:,} of the model's {len(genes):,} genes ({overlap:.1%}), below the "
            f"minimum of {min_overlap:.0%}; missing e.g. {', '.join(missing)}; the {what}'s genes look like "
            f"{', '.join(names[:5])}. Check that both use the same species and kind of gene identifier (symbols "
            f"vs Ensembl ids{', genome prefix ' + repr(prefix) + ' was stripped' if prefix else ''}).{hint}")
    if overlap < 1.0:
        log.warning("%s: %d of the model's %d genes found (%.1f%%); the missing ones (e.g. %s) read as not "
                    "expressed", what, n_found, len(genes), 100 * overlap, ", ".join(missing))
    else:
        log.info("%s: all %d model genes found", what, len(genes))
    return a[:, cols].copy(), report


@torch.no_grad()
def cell_embeddings(model: ScMamba2, cells, *, batch_size: int = 64, max_tokens: int | None = 65536,
                    device: str | torch.device = "cpu", progress: bool = False) -> np.ndarray:
    """``(n_cells, d_model)`` cell embeddings (:meth:`~scmamba2.ScMamba2.cell_embedding`, the pooled encoder
    output) of tokenised cells, in their order (eval mode, no masking)."""
    from torch.utils.data import DataLoader

    from .._keys import CELL_INDEX, GENES, PADDING_MASK, VALUES
    from ..data.collate import Collator, LengthBucketSampler, TokenizedDataset, token_budget_batches

    was_training = model.training
    model.eval()
    max_len = cells.config.max_len
    lengths = np.minimum(np.asarray(cells.lengths), max_len)
    if max_tokens is None:
        sampler = LengthBucketSampler(lengths, batch_size=batch_size, shuffle=False)
    else:
        sampler = token_budget_batches(lengths, max_tokens=max_tokens, max_batch_size=batch_size)
    ds = TokenizedDataset(cells)
    # CELL_INDEX is the row in the source data; map it back to the position among ``cells``.
    where = {int(r): i for i, r in enumerate(cells.cell_index)}
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(pad_id=model.config.pad_id))
    emb = np.zeros((len(cells), model.config.d_model), dtype=np.float32)
    from tqdm.auto import tqdm

    with tqdm(total=len(cells), desc="embedding cells", unit="cell", disable=not progress) as bar:
        for batch in loader:
            rows = [where[int(r)] for r in batch.pop(CELL_INDEX).tolist()]
            b = {k: v.to(device) for k, v in batch.items()}
            states = model.encode(b[GENES], b[VALUES], b[PADDING_MASK])
            emb[rows] = model.cell_embedding(states, b[PADDING_MASK]).float().cpu().numpy()
            bar.update(len(rows))
    model.train(was_training)
    return emb


def side_by_side(models: Sequence[ScMamba2], cells, **kwargs) -> np.ndarray:
    """The :func:`cell_embeddings` of each of ``models`` (sharing one vocabulary and tokenizer) side by side,
    ``(n_cells, sum of d_model)``."""
    parts = []
    for m in models:
        parts.append(cell_embeddings(m.to(kwargs.get("device", "cpu")), cells, **kwargs))
        if len(models) > 1:
            m.cpu()  # one model on the device at a time
    return parts[0] if len(parts) == 1 else np.hstack(parts)


@torch.no_grad()
def class_logits(model: ScMamba2, cells, *, probe: LinearProbe | None = None, batch_size: int = 64,
                 max_tokens: int | None = 65536, device: str | torch.device = "cpu",
                 progress: bool = False, side_models: Sequence[ScMamba2] = ()) -> tuple[np.ndarray, np.ndarray]:
    """``(n_cells, n_classes)`` logits (of ``probe``, else of the model's classifier head) and the
    ``(n_cells, d_model)`` cell embeddings (:func:`cell_embeddings`; of ``model`` and the ``side_models`` side by
    side, for the probe) of tokenised cells, in their order."""
    if side_models and probe is None:
        raise ValueError("side models are read by the linear probe: pass the probe with them")
    emb = side_by_side([model, *side_models], cells, batch_size=batch_size, max_tokens=max_tokens, device=device,
                       progress=progress)
    if probe is not None:
        return probe(emb), emb
    head = model.classifier
    if head is None:
        raise ValueError("the model has no classifier head: pass the linear probe")
    was_training = head.training
    head.eval()
    dtype = next(head.parameters()).dtype
    out = [head(torch.from_numpy(emb[s:s + 4096]).to(device, dtype)).float().cpu().numpy()
           for s in range(0, len(emb), 4096)]
    head.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.config.n_classes), np.float32), emb


def predict(
    query,
    annotator: Annotator | str | Path,
    *,
    threshold: float | None = None,
    key_added: str = "scmamba2",
    unknown_label: str = UNKNOWN,
    min_gene_overlap: float = 0.5,
    batch_size: int = 64,
    max_tokens: int | None = 65536,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
    device: str | None = None,
    progress: bool = True,
    copy: bool = False,
):
    """Label the cells of ``query`` with a fitted :class:`Annotator` (or its directory).

    Parameters
    ----------
    query
        Cells x genes, raw counts (or log-normalised values) in ``X``, ``layers[layer]`` or ``raw``. Its genes
        are matched to the annotator's by name (:func:`match_genes`).
    annotator
        An :class:`Annotator` or the directory it was saved in.
    threshold
        Cells whose confidence is below this are labelled ``unknown_label`` (``None``: every cell gets its most
        probable class). A cell type absent from the reference then tends to end up unknown instead of in a
        wrong class.
    key_added
        Prefix of the keys written.
    min_gene_overlap
        Smallest fraction of the annotator's genes the query must have (else :class:`~scmamba2.InputError`).
        A gene-level classifier (:class:`~scmamba2.tasks._annotate_genes.GeneProbe`) with less than this share of
        its weighted genes in the query is left out, with a warning (the probe alone labels the cells; the
        temperature stays the one fitted on the average).
    batch_size, max_tokens
        At most this many cells and padded tokens per inference batch.
    device
        Torch device; default CUDA when available, else CPU.
    copy
        Return a modified copy instead of writing into ``query``.

    Writes
    ------
    ``obs[key_added + '_label']``
        Categorical: the predicted class, or ``unknown_label`` (below ``threshold``, or a cell with no expressed
        annotator gene, whatever the threshold).
    ``obs[key_added + '_confidence']``
        Probability of the predicted class (softmax with the fitted temperature) times the cell's typicality
        (0 for a cell with no annotator gene).
    ``obs[key_added + '_typicality']``
        How typical the cell's ``<cls>`` embedding is of its predicted class among the reference cells: 1
        inside the central ``1 - tail`` of them, towards 0 beyond the farthest
        (:mod:`~scmamba2.tasks._annotate_typicality`); 1 everywhere when the annotator has none.
    ``obsm[key_added + '_probs']``
        ``(n_cells, n_classes)`` float32 class probabilities, columns in the order of ``classes`` below.
    ``uns[key_added + '_annotation']``
        ``classes``, ``threshold``, ``unknown_label``, ``n_unknown``, ``temperature``, ``label_key`` of the
        reference, the gene ``overlap`` report, the ``gene_weight`` used (0: the probe alone) and, with a
        gene-level classifier, its ``gene_probe_overlap`` report.
    """
    import pandas as pd

    from .._malloc import tune_cpu_allocator
    from ..data.prepare import prepare_cells
    from ..data.tokenize import TokenizerConfig

    tune_cpu_allocator()
    ann = annotator if isinstance(annotator, Annotator) else Annotator.load(annotator)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold={threshold} is a probability: give a value in [0, 1] (or None for no threshold)")
    if unknown_label in ann.classes:
        raise InputError(f"unknown_label {unknown_label!r} is one of the annotator's classes: choose another name")
    query = query.copy() if copy else query
    check_raw(query, use_raw, "query", "use_raw=True (--query-use-raw, or --use-raw)")
    sub, overlap = match_genes(query, ann.genes, layer=layer, use_raw=use_raw, gene_column=gene_column,
                               min_overlap=min_gene_overlap, what="query",
                               raw_hint="use_raw=True / --query-use-raw")
    model = ann.model
    tok = model.tokenizer_config or TokenizerConfig(n_bins=model.config.n_bins, value_mode=model.config.value_mode)
    prepared = prepare_cells(sub, model.vocab, tok, purpose="annotate")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    logits, emb = class_logits(model, model.input_cells(prepared.cells), probe=ann.probe, batch_size=batch_size,
                               max_tokens=max_tokens, device=dev, progress=progress, side_models=ann.side_models)
    gene_weight, gene_overlap = 0.0, None
    if ann.gene_probe is not None and ann.gene_weight > 0:
        X, gene_overlap = ann.gene_probe.matrix(query, layer=layer, use_raw=use_raw, gene_column=gene_column)
        if gene_overlap["overlap"] < min_gene_overlap:  # its markers are missing: the probe alone
            log.warning("the query has only %.1f%% of the gene-level classifier's weighted genes (minimum %.0f%%): "
                        "it is left out and the linear probe alone labels the cells", 100 * gene_overlap["overlap"],
                        100 * min_gene_overlap)
        else:
            gene_weight = ann.gene_weight
            logits = mix(logits, ann.gene_probe.proba(X), gene_weight)
    probs = softmax(logits, ann.temperature)
    best = probs.argmax(1)
    typical = np.ones(len(best)) if ann.typicality is None else ann.typicality(emb, best)
    conf = probs[np.arange(len(best)), best] * typical
    labels = np.asarray(ann.classes, dtype=object)[best]
    empty = np.asarray(prepared.cells.lengths) <= 1
    conf[empty] = 0.0
    low = empty | (conf < threshold if threshold is not None else np.zeros_like(empty))
    labels[low] = unknown_label
    cats = list(ann.classes) + [unknown_label]
    query.obs[f"{key_added}_label"] = pd.Categorical(labels, categories=cats)
    query.obs[f"{key_added}_confidence"] = conf.astype(np.float32)
    query.obs[f"{key_added}_typicality"] = typical.astype(np.float32)
    query.obsm[f"{key_added}_probs"] = probs.astype(np.float32)
    query.uns[f"{key_added}_annotation"] = {
        "classes": list(ann.classes), "threshold": -1.0 if threshold is None else float(threshold),
        "unknown_label": unknown_label, "n_unknown": int(low.sum()), "n_no_genes": int(empty.sum()),
        "temperature": float(ann.temperature), "label_key": ann.label_key, "gene_overlap": _no_none(overlap),
        "gene_weight": float(gene_weight),
    }
    if gene_overlap is not None:
        query.uns[f"{key_added}_annotation"]["gene_probe_overlap"] = gene_overlap
    log.info("annotated %d cells: %d unknown (%d below the threshold, %d without annotator genes)", len(labels),
             int(low.sum()), int(low.sum() - empty.sum()), int(empty.sum()))
    return query if copy else None


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64, numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises the negative log-likelihood of held-out labels ``y``
    (Guo et al., 2017), searched on a fixed log-spaced grid (deterministic)."""
    grid = np.geomspace(0.2, 20.0, 121)
    idx = np.arange(len(y))
    nll = [-np.log(softmax(logits, t)[idx, y] + 1e-12).mean() for t in grid]
    return float(grid[int(np.argmin(nll))])


def _no_none(d: dict) -> dict:
    """h5ad cannot store None: leave such entries out."""
    return {k: v for k, v in d.items() if v is not None}
