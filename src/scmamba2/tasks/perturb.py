"""Perturbation response (predict a perturbation's expression profile) and reverse perturbation (rank the
perturbations most likely to lead to an observed or desired profile).

A prediction is the strongest simple baseline plus a learned correction (:mod:`.perturb_effects`,
:mod:`.perturb_correction`): for a control cell ``c`` and a perturbation ``P`` the model outputs
``c + baseline(P) + correction(c, P)``, where the baseline is the perturbation's own training effect when it was
seen, the sum of the single-gene effects for a combination, and the training mean of the perturbation effects for
an unseen target (drug, cytokine; with control matching, a group the condition was not measured in gets the mean
of its effects over the other groups). The correction reads the :class:`~scmamba2.ScMamba2` encoder on the control
cell with the target genes flagged (a target outside the panel gets its own token, value unmeasured; a condition
gets a condition embedding) and, optionally, the targets' PCA gene embedding; it starts at exactly zero and is kept
only when it beats the baseline on validation perturbations (or groups) held out of its training. A
perturbation's predicted profile is the mean over many control cells. The trained model is saved with
:meth:`~scmamba2.ScMamba2.save_pretrained` plus ``perturb.json`` (panel, perturbations, conditions, control mean,
the correction's validation record), ``perturb_controls.npz`` (a seeded sample of control cells, the effect table)
and ``perturb_head.pt`` (the correction head).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data.perturb import parse_condition, perturbation_name
from ..data.vocab import GeneVocab
from ..data.files import atomic_path, read_json, write_json
from ..errors import CheckpointError, InputError
from ..model import ScMamba2
from .perturb_correction import CorrectionHead
from .perturb_effects import EffectTable

log = logging.getLogger(__name__)

__all__ = ["PerturbationModel", "train_perturbation", "predict_perturbation", "reverse_perturbation",
           "panel_matrix"]

META_FILE, CONTROLS_FILE, HEAD_FILE = "perturb.json", "perturb_controls.npz", "perturb_head.pt"
KNOWLEDGE = ("pca", "none")
SMALL_MODEL = dict(d_model=64, n_layers=2, headdim=16, d_state=32, chunk_size=64, dropout=0.0)
# No cell_pooling here: the correction reads the panel genes' encoder states, never the cell embedding, so the
# readout (ModelConfig's default, "mean") does not change a prediction (checked: "cls" and "mean" predict the same).


@dataclass
class PerturbMeta:
    """What a perturbation model needs besides its weights (``perturb.json``)."""

    key: str
    control: str
    kind: str
    genes: list[str]  # the panel, in token order
    perturbations: list[str]  # every perturbation of the training data (held-out ones included)
    train_perturbations: list[str]
    targets: dict[str, list[str]] = field(default_factory=dict)  # genetic: name -> target genes
    conditions: list[str] = field(default_factory=list)  # kind "condition": index -> name, 0 = control
    control_mean: list[float] = field(default_factory=list)
    target_sum: float = 1e4
    match_key: str | None = None
    split: dict[str, str] = field(default_factory=dict)
    flagged_genes: list[str] = field(default_factory=list)  # genes perturbed in some training perturbation
    untrained_genes: list[str] = field(default_factory=list)  # a new model's tokens never trained (see tokens())
    gene_knowledge: str = "pca"  # the correction's target knowledge: "pca" gene embedding or "none"
    knowledge_dim: int = 0  # K of the PCA gene embedding (0: none)
    head_hidden: int = 64
    validation: list[list[str]] = field(default_factory=list)  # [perturbation, group] units the correction skipped
    correction: dict = field(default_factory=dict)  # train_correction's record (accepted, validation figures)


class PerturbationModel:
    """A trained :class:`~scmamba2.ScMamba2` with its correction head, effect table (the baseline), perturbation
    metadata and stored control cells."""

    def __init__(self, model: ScMamba2, meta: PerturbMeta, controls: np.ndarray,
                 control_groups: np.ndarray | None = None, *, head: CorrectionHead, effects: EffectTable):
        self.model, self.meta, self.head, self.effects = model, meta, head, effects
        self.controls = np.asarray(controls, dtype=np.float32)
        self.control_groups = control_groups

    @property
    def control_mean(self) -> np.ndarray:
        return np.asarray(self.meta.control_mean, dtype=np.float32)

    @property
    def corrected(self) -> bool:
        """Whether the learned correction was accepted (else predictions are the baseline)."""
        return bool(self.meta.correction.get("accepted", False))

    def save(self, directory: str | Path) -> Path:
        out = self.model.save_pretrained(directory)
        write_json(out / META_FILE, asdict(self.meta), indent=1)
        groups = self.control_groups if self.control_groups is not None else np.array([], dtype=str)
        with atomic_path(out / CONTROLS_FILE) as tmp:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a path
                np.savez_compressed(fh, X=self.controls, groups=np.asarray(groups, dtype=str),
                                    **self.effects.arrays())
        with atomic_path(out / HEAD_FILE) as tmp:
            torch.save(self.head.state_dict(), tmp)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "PerturbationModel":
        src = Path(directory)
        if not all((src / f).is_file() for f in (META_FILE, CONTROLS_FILE, HEAD_FILE)):
            raise CheckpointError(f"{src} is not a perturbation model of this version: {META_FILE}, {CONTROLS_FILE} "
                                  f"or {HEAD_FILE} is missing (train one with `scmamba2 perturb train`)")
        model = ScMamba2.from_pretrained(src)
        fix = "Train the model again (`scmamba2 perturb train`)."
        meta = _checked(src, lambda: PerturbMeta(**read_json(src / META_FILE, fix=fix)))
        z = _checked(src, lambda: _load_npz(src / CONTROLS_FILE))
        X, groups = _checked(src, lambda: (z["X"], z["groups"]))
        groups = groups if len(groups) else None
        state = _checked(src, lambda: torch.load(src / HEAD_FILE, map_location="cpu", weights_only=True))
        knowledge = state["knowledge"].numpy() if "knowledge" in state else None
        head = CorrectionHead(model.config.d_model, len(meta.genes), knowledge, hidden=meta.head_hidden)
        _checked(src, lambda: head.load_state_dict(state))
        head.eval()
        effects = _checked(src, lambda: EffectTable.from_arrays(z, meta.targets))
        return cls(model, meta, X, groups, head=head, effects=effects)

    # ------------------------------------------------------------------------------------------ encoding
    def canonical(self, name: str) -> str:
        """Canonical name of a perturbation (``B+A`` -> ``A+B``; the control's label stays)."""
        if self.meta.kind == "condition":
            return str(name)
        return perturbation_name(parse_condition(name, self.meta.control), self.meta.control)

    def tokens(self, name: str, generic_unseen: bool = False) -> tuple[np.ndarray, np.ndarray, int | None]:
        """``(flag positions in the panel, vocabulary ids of targets outside it, condition index)``.

        A target whose token was never trained (a new model's token for a gene neither measured nor perturbed
        in training) enters as a flagged ``<mask>`` token: the generic perturbation the model learned from
        anonymised training pairs. With ``generic_unseen`` so does every target never perturbed in training.

        Raises
        ------
        InputError
            A target gene unknown to the vocabulary, or a condition the model was not trained with.
        """
        m = self.meta
        empty = np.zeros(0, dtype=np.int64)
        if m.kind == "condition":
            if name not in m.conditions:
                raise InputError(f"condition {name!r} is unknown to this model; it knows {m.conditions} (a "
                                 "condition model cannot predict a drug or cytokine it never saw)")
            return empty, empty, m.conditions.index(name)
        generic = set(m.untrained_genes)
        targets = parse_condition(name, m.control)
        if generic_unseen:
            generic |= set(targets) - set(m.flagged_genes)
        return (*target_tokens(targets, m.genes, self.model.vocab, generic), None)


def target_tokens(targets: Sequence[str], genes: Sequence[str], vocab: GeneVocab,
                  generic: set[str] | frozenset = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """Panel positions of the targets in the panel, vocabulary ids of the others (a clear error if unknown);
    targets in ``generic`` become ``<mask>`` tokens."""
    pos = {g: i for i, g in enumerate(genes)}
    unknown = [t for t in targets if t not in pos and t not in vocab]
    if unknown:
        # Target names come from the condition labels, one or two at a time: too few to tell a formatting
        # difference from another species as gene names are (vocab.match_ignoring_case), so they must match as
        # written; a spelling that differs only in case is named in the message.
        folded = {str(g).upper(): g for g in [*genes, *vocab.genes]}
        close = {t: folded[t.upper()] for t in unknown if t.upper() in folded}
        hint = "".join(f"; {t!r} is spelled {g!r} there" for t, g in close.items())
        raise InputError(f"target gene(s) {unknown} are not in the model's vocabulary ({len(vocab.genes)} genes), "
                         f"so the model has no token for them{hint}; check the spelling (symbols vs Ensembl ids, "
                         "case) in the condition labels or use a model whose vocabulary has them")
    in_panel = np.array([pos[t] for t in targets if t in pos and t not in generic], dtype=np.int64)
    extra = np.array([vocab.mask_id if t in generic else vocab[t] for t in targets if t not in pos or t in generic],
                     dtype=np.int64)
    return in_panel, extra


# ------------------------------------------------------------------------------------------------ matrix
def panel_matrix(adata, genes: Sequence[str] | None = None, *, layer: str | None = None, use_raw: bool = False,
                 gene_column: str | None = None, target_sum: float = 1e4) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Dense log1p-normalised expression over ``genes`` (default: all genes of ``adata``).

    Raw counts are normalised to ``target_sum`` per cell and log1p-transformed; log-normalised input is taken
    as is. Returns ``(X, genes, present)``; genes absent from ``adata`` are zero with ``present`` False.
    """
    from ..data.io import select_matrix
    from ..data.preprocess import normalize_log1p
    from ..data.validate import validate

    a = select_matrix(adata, layer=layer, use_raw=use_raw, gene_column=gene_column)
    rep = validate(a, purpose="perturb")
    if rep.value_kind == "log_normalized" and "counts" in rep.layers:  # as validate's warning says
        log.info("X looks log-normalised and is read as is; layer 'counts' holds raw counts if you prefer them "
                 "(--layer counts / layer='counts': normalised to %g per cell and log1p-transformed here)",
                 target_sum)
    X = a.X
    if rep.value_kind in ("raw_counts", "normalized"):
        X = normalize_log1p(X, target_sum)
    names = pd.Index(a.var_names.astype(str))
    if names.has_duplicates:
        raise InputError(f"{int(names.duplicated().sum())} gene names are duplicated; make them unique "
                         "(adata.var_names_make_unique()) or pass a gene column of unique ids")
    genes = list(names) if genes is None else list(genes)
    idx = names.get_indexer(genes)
    present = idx >= 0
    import scipy.sparse as sp

    X = X.tocsc() if sp.issparse(X) else np.asarray(X)
    out = np.zeros((a.n_obs, len(genes)), dtype=np.float32)
    sub = X[:, idx[present]]
    out[:, present] = sub.toarray() if sp.issparse(sub) else sub
    return out, genes, present


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:  # every array read here, so that a damaged member fails inside _checked
        return {k: z[k] for k in z.files}


def _checked(src: Path, read):
    """``read()``, a damaged file of the model folder ``src`` raised as one :class:`CheckpointError`."""
    try:
        return read()
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, OSError, EOFError, RuntimeError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{src} holds a damaged perturbation model ({exc}); train it again with "
                              "`scmamba2 perturb train`") from None


def _vocab(genes: list[str], targets: list[str], base: ScMamba2 | None) -> GeneVocab:
    if base is None:
        return GeneVocab(list(dict.fromkeys(genes + targets)))
    if base.vocab is None:
        raise CheckpointError("the pretrained model has no vocabulary attached")
    target_tokens(targets, genes, base.vocab)  # raises on a target unknown to the pretrained vocabulary
    missing = [g for g, i in zip(genes, base.vocab.lookup(genes)) if i < 0]  # lookup: C1ORF159 is C1orf159
    if missing:
        log.info("%d panel genes are new to the pretrained vocabulary and get new tokens", len(missing))
    return base.vocab.extend(missing)


# train_perturbation lives in perturb_train.py, predict_perturbation and reverse_perturbation in
# perturb_predict.py (imported last: they use the above).
from .perturb_train import train_perturbation  # noqa: E402
from .perturb_predict import predict_perturbation, reverse_perturbation  # noqa: E402
