"""Prediction from a trained perturbation model: :func:`predict_perturbation` (a perturbation's mean profile)
and :func:`reverse_perturbation` (rank the perturbations whose predicted profile best matches a query)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .._keys import CONDITION
from ..data.perturb import PairCollator, pair_item
from ..errors import InputError
from .perturb import PerturbationModel, panel_matrix

__all__ = ["predict_perturbation", "reverse_perturbation"]


# ----------------------------------------------------------------------------------------------- predict
@torch.no_grad()
def predict_perturbation(
    model: PerturbationModel | str | Path,
    perturbations: Sequence[str],
    *,
    controls=None,
    control_group: str | None = None,
    n_controls: int = 256,
    relative_to_control: bool = True,
    generic_unseen: bool = False,
    batch_size: int = 64,
    seed: int = 0,
    device: str | None = None,
):
    """Predicted mean log1p-normalised expression of each perturbation.

    Parameters
    ----------
    model
        A :class:`PerturbationModel` or its directory.
    perturbations
        Names (``A``, ``A+B``, a condition; the control's label gives the model's unperturbed prediction).
    controls
        AnnData of control cells to predict from (e.g. a held-out cell type's controls); default the model's
        stored control cells, restricted to ``control_group`` under control matching.
    n_controls
        At most this many control cells (seeded sample) per perturbation.
    relative_to_control
        Report the observed mean of the control cells used plus the model's predicted change,
        ``mean(model(P)) - mean(model(control))`` over the same cells (the model's own bias cancels);
        ``False``: the raw mean model output.
    generic_unseen
        Targets never perturbed in training enter as the generic perturbation (see
        :meth:`PerturbationModel.tokens`) instead of their own token.

    Returns
    -------
    AnnData with one row per perturbation (``obs['perturbation']``, ``obs['n_controls']``), the panel genes
    as ``var`` and the mean prediction in ``X``; ``uns['scmamba2_perturb']`` holds the control mean.
    """
    import anndata as ad

    pm = model if isinstance(model, PerturbationModel) else PerturbationModel.load(model)
    names = [pm.canonical(p) for p in perturbations]
    if controls is None:
        C = pm.controls
        if control_group is not None:
            if pm.control_groups is None:
                raise InputError("control_group needs a model trained with control matching (match_key)")
            C = C[pm.control_groups == str(control_group)]
            if not len(C):
                raise InputError(f"no stored control cell in group {control_group!r}; groups: "
                                 f"{sorted(set(pm.control_groups.tolist()))}")
    else:
        C, _, present = panel_matrix(controls, pm.meta.genes, target_sum=pm.meta.target_sum)
        _check_overlap(present, "controls")
    rng = np.random.default_rng(seed)
    if len(C) > n_controls:
        C = C[np.sort(rng.choice(len(C), n_controls, replace=False))]
    net = pm.model
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(dev).eval()
    vocab = net.vocab
    panel_ids = vocab.lookup(pm.meta.genes)
    collate = PairCollator(vocab.pad_id)
    out = np.zeros((len(names), len(pm.meta.genes)), dtype=np.float32)
    n_panel = len(panel_ids)

    def mean_output(name: str) -> np.ndarray:
        flag_pos, extra, cond = pm.tokens(name, generic_unseen)
        total = np.zeros(n_panel, dtype=np.float64)
        for s in range(0, len(C), batch_size):
            items = [pair_item(c, panel_ids, vocab.cls_id, flag_pos=flag_pos, extra_ids=extra)
                     for c in C[s:s + batch_size]]
            for it in items if cond is not None else ():
                it[CONDITION] = cond
            batch = {k: v.to(dev) for k, v in collate(items).items()}
            total += net(batch).expr_pred[:, 1:1 + n_panel].double().sum(0).cpu().numpy()
        return total / len(C)

    if relative_to_control:
        base = C.mean(0).astype(np.float64) - mean_output(pm.meta.control)
    else:
        base = np.zeros(n_panel)
    for r, name in enumerate(names):
        out[r] = np.maximum(mean_output(name) + base, 0.0)
    obs = pd.DataFrame({"perturbation": names, "n_controls": len(C)}, index=pd.Index(names).astype(str))
    if obs.index.has_duplicates:
        obs.index = [f"{n}-{i}" for i, n in enumerate(names)]
    res = ad.AnnData(X=out, obs=obs, var=pd.DataFrame(index=pd.Index(pm.meta.genes, dtype=str)))
    res.uns["scmamba2_perturb"] = {"control": pm.meta.control, "control_mean": pm.control_mean,
                                   "kind": pm.meta.kind}
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
    DataFrame with columns ``query``, ``rank`` (1 = best), ``perturbation``, ``score``.
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
    k = min(top_k, len(cand))
    rows = []
    for qi, qn in enumerate(qnames):
        order = np.argsort(-scores[qi], kind="stable")[:k]
        rows += [(qn, r + 1, cand[j], float(scores[qi, j])) for r, j in enumerate(order)]
    return pd.DataFrame(rows, columns=["query", "rank", "perturbation", "score"])


def _pearson_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``A`` with every row of ``B`` (0 where a row is constant)."""
    A = A - A.mean(1, keepdims=True)
    B = B - B.mean(1, keepdims=True)
    na, nb = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (A @ B.T) / np.outer(na, nb)
    return np.nan_to_num(out)

