"""Prediction from a trained perturbation model: :func:`predict_perturbation` (a perturbation's mean profile)
and :func:`reverse_perturbation` (rank the perturbations whose predicted profile best matches a query)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from .perturb import PerturbationModel, panel_matrix
from .perturb_correction import mean_correction

__all__ = ["predict_perturbation", "reverse_perturbation"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- predict
@torch.no_grad()
def predict_perturbation(
    model: PerturbationModel | str | Path,
    perturbations: Sequence[str],
    *,
    controls=None,
    control_group: str | None = None,
    n_controls: int = 256,
    correction: bool = True,
    relative_to_control: bool = True,
    generic_unseen: bool = False,
    batch_size: int = 64,
    seed: int = 0,
    device: str | None = None,
):
    """Predicted mean log1p-normalised expression of each perturbation: control level + baseline change +
    learned correction (see :mod:`scmamba2.tasks.perturb`).

    Parameters
    ----------
    model
        A :class:`PerturbationModel` or its directory.
    perturbations
        Names (``A``, ``A+B``, a condition; the control's label gives the control level).
    controls
        AnnData of control cells to predict from (e.g. a held-out cell type's controls); when it has the model's
        perturbation column (``obs[key]``), only its cells labelled as the model's control are used. The control
        level is their mean, and with a model trained with control matching on conditions every perturbation counts as
        unmeasured in their group. Default: the model's stored control cells and the training control mean
        (of ``control_group`` under control matching).
    n_controls
        At most this many control cells (seeded sample) to average the correction over.
    correction
        Add the learned correction (when training accepted it, at the scale validation chose) to perturbations
        the baseline has not seen; ``False``: the baseline alone (a seen perturbation always gets its own
        training effect).
    relative_to_control
        The correction is ``mean(correction(P)) - mean(correction(control))`` over the same cells (the
        correction's own bias on unperturbed cells cancels); ``False``: ``mean(correction(P))``.
    generic_unseen
        Targets never perturbed in training enter as the generic perturbation (see
        :meth:`PerturbationModel.tokens`) instead of their own token.

    Returns
    -------
    AnnData with one row per perturbation (``obs['perturbation']``: the canonical name, targets of a combination in
    sorted order, e.g. ``IRF1+STAT1`` for ``STAT1+IRF1``; ``obs['requested']``: the name as given; ``obs['n_controls']``, ``obs['source']``:
    ``seen`` (own training effect), ``baseline`` or ``baseline+correction``), the panel genes as ``var`` and
    the mean prediction in ``X``; ``uns['scmamba2_perturb']`` holds the control mean and the correction record.
    """
    import anndata as ad

    pm = model if isinstance(model, PerturbationModel) else PerturbationModel.load(model)
    perturbations = list(perturbations)  # read twice: names and obs['requested']
    names = [pm.canonical(p) for p in perturbations]
    for name in names:  # unknown targets / conditions fail before any work
        pm.tokens(name)
    group = None
    if controls is None:
        C = pm.controls
        if control_group is not None:
            if pm.control_groups is None:
                raise InputError("control_group needs a model trained with control matching (match_key)")
            C = C[pm.control_groups == str(control_group)]
            if not len(C):
                raise InputError(f"no stored control cell in group {control_group!r}; groups: "
                                 f"{sorted(set(pm.control_groups.tolist()))}")
            group = str(control_group)
        level = pm.effects.control_mean(group)
    else:
        controls = _control_cells(controls, pm.meta.key, pm.meta.control, pm.meta.kind)
        C, _, present = panel_matrix(controls, pm.meta.genes, target_sum=pm.meta.target_sum)
        _check_overlap(present, "controls")
        level = C.mean(0).astype(np.float64)
    rng = np.random.default_rng(seed)
    if len(C) > n_controls:
        C = C[np.sort(rng.choice(len(C), n_controls, replace=False))]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net, head = pm.model.to(dev).eval(), pm.head.to(dev).eval()
    panel_ids = net.vocab.lookup(pm.meta.genes)
    use_correction = correction and pm.corrected

    def mean_corr(name: str) -> np.ndarray:
        flag_pos, extra, cond = pm.tokens(name, generic_unseen)
        return mean_correction(net, head, C, panel_ids, flag_pos=flag_pos, extra_ids=extra, condition=cond,
                               batch_size=batch_size, device=dev)

    out = np.zeros((len(names), len(pm.meta.genes)), dtype=np.float32)
    source = []
    ctrl_corr = None
    for r, name in enumerate(names):
        new_context = controls is not None and pm.effects.by == "group"  # user's cells: a group never measured
        seen = name == pm.meta.control or (not new_context and pm.effects.is_seen(name, group))
        pred = level + (pm.effects.baseline(name, group) if seen else pm.effects.baseline(name, group, honest=new_context))
        if use_correction and not seen:
            if relative_to_control and ctrl_corr is None:
                ctrl_corr = mean_corr(pm.meta.control)
            scale = float(pm.meta.correction.get("scale", 1.0))
            pred = pred + scale * (mean_corr(name) - (ctrl_corr if relative_to_control else 0.0))
        source.append("seen" if seen else "baseline+correction" if use_correction else "baseline")
        out[r] = np.maximum(pred, 0.0)
    obs = pd.DataFrame({"perturbation": names, "requested": [str(p) for p in perturbations], "n_controls": len(C),
                        "source": source},
                       index=pd.Index(names).astype(str))
    if obs.index.has_duplicates:
        obs.index = [f"{n}-{i}" for i, n in enumerate(names)]
    res = ad.AnnData(X=out, obs=obs, var=pd.DataFrame(index=pd.Index(pm.meta.genes, dtype=str)))
    res.uns["scmamba2_perturb"] = {"control": pm.meta.control, "control_mean": pm.control_mean,
                                   "kind": pm.meta.kind, "correction_accepted": pm.corrected}
    return res


def _check_overlap(present: np.ndarray, what: str) -> None:
    if present.mean() < 0.5:
        raise InputError(f"{what} have only {int(present.sum())} of the model's {len(present)} panel genes; "
                         "check the gene names (symbols vs Ensembl ids; --gene-column)")


# ----------------------------------------------------------------------------------------------- reverse
def reverse_perturbation(
    query,
    model: PerturbationModel | str | Path,
    *,
    groupby: str | None = None,
    candidates: Sequence[str] | None = None,
    top_k: int = 8,
    predictions=None,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
    **predict_kwargs: Any,
) -> pd.DataFrame:
    """Rank candidate perturbations by how well their predicted profile matches each query profile.

    The score is the Pearson correlation of the changes from the control mean (predicted vs observed) over
    the panel genes measured in ``query``.

    Parameters
    ----------
    query
        AnnData of observed (or desired) cells; one query per cell, or per group mean with ``groupby``.
    candidates
        Perturbations to rank (default: every perturbation the model knows). The control may be listed, but
        its predicted change is zero, so its score is 0 (correlation undefined).
    predictions
        Precomputed :func:`predict_perturbation` output for the candidates (skips the prediction).

    Returns
    -------
    DataFrame with columns ``query``, ``rank`` (1 = best), ``perturbation``, ``score`` and ``source``: where the
    candidate's prediction comes from (:func:`predict_perturbation`'s ``obs['source']``: ``seen``, its own training
    effect; ``baseline``, a perturbation never observed, predicted from what training observed in general, so such
    candidates can tie with each other; ``baseline+correction``).
    """
    pm = model if isinstance(model, PerturbationModel) else PerturbationModel.load(model)
    if top_k < 1:
        raise InputError(f"top_k={top_k} must be >= 1")
    Q, _, present = panel_matrix(query, pm.meta.genes, layer=layer, use_raw=use_raw, gene_column=gene_column,
                                 target_sum=pm.meta.target_sum)
    _check_overlap(present, "query cells")
    if groupby is None:
        qnames, profiles = list(map(str, query.obs_names)), Q
    else:
        if groupby not in query.obs.columns:
            raise InputError(f"groupby {groupby!r} is not an obs column of the query; obs has: "
                             f"{list(query.obs.columns)}")
        g = query.obs[groupby].astype(str).to_numpy()
        qnames = sorted(set(g.tolist()))
        profiles = np.stack([Q[g == k].mean(0) for k in qnames])
    if predictions is None:
        candidates = list(candidates) if candidates is not None else pm.meta.perturbations
        predictions = predict_perturbation(pm, candidates, **predict_kwargs)
    P = np.asarray(predictions.X, dtype=np.float64)[:, present]
    base = pm.control_mean.astype(np.float64)[present]
    scores = _pearson_rows(profiles[:, present] - base, P - base)  # (n_queries, n_candidates)
    cand = predictions.obs["perturbation"].astype(str).to_numpy()
    source = (predictions.obs["source"].astype(str).to_numpy() if "source" in predictions.obs
              else np.full(len(cand), "given"))
    k = min(top_k, len(cand))
    rows = []
    for qi, qn in enumerate(qnames):
        order = np.argsort(-scores[qi], kind="stable")[:k]
        rows += [(qn, r + 1, cand[j], float(scores[qi, j]), source[j]) for r, j in enumerate(order)]
    return pd.DataFrame(rows, columns=["query", "rank", "perturbation", "score", "source"])


def _pearson_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``A`` with every row of ``B`` (0 where a row is constant)."""
    A = A - A.mean(1, keepdims=True)
    B = B - B.mean(1, keepdims=True)
    na, nb = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (A @ B.T) / np.outer(na, nb)
    return np.nan_to_num(out)


def _control_cells(adata, key: str, control: str, kind: str):
    """The control cells of ``adata``: those whose ``obs[key]`` (the model's perturbation column) reads as the
    control the way training read it (:func:`~scmamba2.data.perturb.parse_perturbations`: ``ctrl+ctrl`` and
    padded labels included; missing labels are no controls) when the file has that column, else every cell (a
    file of control cells)."""
    from ..data.perturb import parse_perturbations

    if key not in adata.obs:
        return adata
    labels = adata.obs[key]
    known = labels.notna().to_numpy()
    keep = np.zeros(adata.n_obs, dtype=bool)
    try:
        keep[known] = parse_perturbations(adata.obs[known], key, control, kind=kind).is_control
    except InputError:  # no control among the labelled cells
        pass
    labels = labels.astype(str).to_numpy()
    if not keep.any():
        raise InputError(f"controls: obs[{key!r}] has no cell labelled {control!r}, the model's control label "
                         f"(labels there: {sorted(set(labels.tolist()))[:8]}); give a file of control cells, or "
                         f"one whose obs[{key!r}] marks them as {control!r}")
    if not keep.all():
        log.info("controls: %d of %d cells are labelled %r in obs[%r]; the others are left out", int(keep.sum()),
                 len(keep), control, key)
    return adata[keep]
