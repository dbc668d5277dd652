"""``scmamba2.transfer_modality``: predict protein of RNA-only cells from a CITE-seq reference, by nearest
neighbours in a pretrained model's cell embedding (default: the bundled model); nothing is trained.

Each query cell's prediction is the distance-weighted mean of the CLR protein values of its ``n_neighbors``
nearest reference cells in the embedding (``embed``'s defaults: every expressed gene, profile metric). The
number of neighbours and the weighting were chosen by 5-fold cross-validation within the training cells of the
multi-omics benchmark (``benchmarks/results/multiomics.md``: k in 5 / 15 / 30, uniform or distance weights, and a
ridge regression on the embedding).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..data.multiomics import PROT, RNA, clr, read_multiomics
from ..errors import InputError

log = logging.getLogger(__name__)

__all__ = ["transfer_modality"]


def transfer_modality(reference, query, *, model=None, n_neighbors: int = 15, protein_key: str | None = None,
                      key_added: str = "scmamba2_pred_prot", layer: str | None = None, use_raw: bool = False,
                      gene_column: str | None = None, device: str | None = None) -> None:
    """Predict the protein (CLR scale) of each ``query`` cell from its RNA, by its nearest ``reference`` cells.

    Parameters
    ----------
    reference
        Paired RNA + protein counts: a MuData (``rna`` and ``prot``), an AnnData of RNA counts with protein counts
        in ``obsm`` (see ``protein_key``), or the path of either.
    query
        AnnData of RNA counts (``X``, ``layers[layer]`` or ``raw``).
    model
        A :class:`~scmamba2.ScMamba2` or checkpoint directory; default the bundled pretrained model.
    n_neighbors
        Reference cells averaged per query cell (distance-weighted).
    protein_key
        ``obsm`` key of the reference's protein counts in an AnnData (see :func:`read_multiomics`).
    layer, use_raw, gene_column
        Where the query's counts and gene names are (the reference's RNA is read from its ``X``).

    Writes
    ------
    ``query.obsm[key_added]``
        ``(n_cells, n_proteins)`` float32 CLR values (Seurat's per-cell centred log-ratio).
    ``query.uns[key_added + '_names']``
        The protein names, one per column.
    ``query.uns['scmamba2'][key_added]``
        The method, ``n_neighbors`` and the number of reference cells.
    """
    from sklearn.neighbors import KNeighborsRegressor

    from .embed import embed, load_model

    if n_neighbors < 1:
        raise InputError(f"n_neighbors={n_neighbors} must be at least 1")
    if hasattr(query, "mod"):
        raise InputError("transfer_modality takes the query's RNA AnnData: pass mdata.mod['rna'] (the CLI reads the "
                         "rna modality of an .h5mu itself)")
    md = read_multiomics(reference, protein_key=protein_key)
    if PROT not in md.mods:
        raise InputError(f"the reference has the modalities {list(md.mods)}, no protein: transfer_modality predicts "
                         "protein from a CITE-seq reference")
    if md.n_obs < n_neighbors:
        raise InputError(f"the reference has {md.n_obs} paired cells, fewer than n_neighbors={n_neighbors}")
    net = load_model(model)
    ref_rna = md.mods[RNA].copy()
    embed(ref_rna, net, key_added="_ref", device=device, progress=False)
    q = query.copy()
    embed(q, net, key_added="_q", layer=layer, use_raw=use_raw, gene_column=gene_column, device=device,
          progress=False)
    target = clr(md.mods[PROT].X)
    knn = KNeighborsRegressor(n_neighbors=n_neighbors, weights="distance").fit(ref_rna.obsm["_ref"], target)
    query.obsm[key_added] = knn.predict(q.obsm["_q"]).astype(np.float32)
    query.uns[f"{key_added}_names"] = np.asarray(md.mods[PROT].var_names, dtype=object)
    info: dict[str, Any] = {"method": "kNN in the pretrained embedding", "scale": "clr", "n_neighbors": n_neighbors,
                            "n_reference_cells": int(md.n_obs)}
    query.uns.setdefault("scmamba2", {})[key_added] = info
    log.info("protein of %d query cells from their %d nearest of %d reference cells", query.n_obs, n_neighbors,
             md.n_obs)
