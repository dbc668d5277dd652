"""``scmamba2.integrate_harmony``: batch integration without training, the pretrained model's cell embedding
corrected for batch by Harmony (Korsunsky et al. 2019; ``harmonypy``).

The pretrained embedding carries cell state; Harmony removes what of it follows the batch. Nothing is trained, so
it takes the time of one embedding. Each embedding dimension is standardised first (``scale=True``), as the genes
are before a PCA: chosen on two sets the benchmark does not score, the Kang ctrl/stim files (scIB total 0.773 vs
0.768 unscaled on ``kang_muscat_ctrl_stim``, batch = sample; 0.633 vs 0.629 on ``kang_harmony_ctrl_stim``,
batch = condition; a 50- or 30-component PCA of the embedding before Harmony scored in between).

On the integration benchmark (``benchmarks/results/integrate.md``) it scored above Harmony on PCA on ifnb (total
0.760 vs 0.593) and level with it on Kang's 8 donors (0.697 vs 0.694); the bundled model was pretrained, without
labels, on cells of those experiments (see its model card).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .integrate import _silhouettes, batch_categories

log = logging.getLogger(__name__)

__all__ = ["integrate_harmony", "harmony", "standardise"]


def harmony(emb: np.ndarray, batch: np.ndarray, seed: int = 0) -> np.ndarray:
    """``emb`` corrected for ``batch`` by Harmony (harmonypy's defaults), float32."""
    try:
        import harmonypy
    except ImportError as e:  # a dependency of the package; only a broken install lacks it
        raise InputError("Harmony integration needs harmonypy: pip install harmonypy") from e
    import pandas as pd

    meta = pd.DataFrame({"batch": np.asarray(batch).astype(str)})
    ho = harmonypy.run_harmony(np.asarray(emb, dtype=np.float64), meta, ["batch"], random_state=seed, verbose=False)
    z = np.asarray(ho.Z_corr)
    return (z if z.shape[0] == len(meta) else z.T).astype(np.float32)


def standardise(emb: np.ndarray) -> np.ndarray:
    """Each dimension of ``emb`` centred and scaled to unit variance (a constant one only centred), float64."""
    emb = np.asarray(emb, dtype=np.float64)
    sd = emb.std(0)
    return (emb - emb.mean(0)) / np.where(sd > 1e-8, sd, 1.0)


def integrate_harmony(adata, batch_key: str, *, model=None, label_key: str | None = None,
                      key_added: str = "X_scmamba2", layer: str | None = None, use_raw: bool = False,
                      gene_column: str | None = None, seed: int = 0, scale: bool = True,
                      device: str | None = None, copy: bool = False):
    """Embed every cell with a pretrained model (default: the bundled one), then correct the embedding for
    ``obs[batch_key]`` with Harmony.

    Parameters
    ----------
    adata
        Cells x genes, raw counts (or log-normalised values) in ``X``, ``layers[layer]`` or ``raw``.
    batch_key
        ``obs`` column of each cell's batch.
    model
        A :class:`~scmamba2.ScMamba2` or checkpoint directory; default the bundled pretrained model.
    label_key
        ``obs`` column of cell types, for the label and batch silhouettes in ``uns`` only.
    seed
        Harmony's random state.
    scale
        Standardise each embedding dimension (zero mean, unit variance over the cells) before Harmony.

    Writes
    ------
    ``obsm[key_added]``
        The batch-corrected embedding.
    ``obsm[key_added + "_pretrained"]``
        The model's embedding before the correction (``embed``'s defaults).
    ``uns['scmamba2'][key_added]``
        The embedding settings and, under ``integration``, the method, batch key and names and, with
        ``label_key``, ``asw_label`` / ``asw_batch``.
    """
    from .embed import embed, load_model

    if label_key is not None and label_key not in adata.obs:
        raise InputError(f"label_key {label_key!r} is not an obs column; available: {list(adata.obs.columns)}")
    cats, codes = batch_categories(adata, batch_key)
    adata = adata.copy() if copy else adata
    net = load_model(model)
    raw_key = f"{key_added}_pretrained"
    embed(adata, net, key_added=raw_key, layer=layer, use_raw=use_raw, gene_column=gene_column, device=device,
          progress=False)
    log.info("Harmony on the %d-dimensional embedding of %d cells, %d batches", adata.obsm[raw_key].shape[1],
             adata.n_obs, len(cats))
    emb = np.asarray(adata.obsm[raw_key], dtype=np.float64)
    adata.obsm[key_added] = harmony(standardise(emb) if scale else emb, codes, seed=seed)
    info: dict[str, Any] = {"method": "pretrained embedding + Harmony", "batch_key": batch_key,
                            "batch_categories": cats, "seed": seed, "scaled": scale, "uncorrected_key": raw_key}
    if label_key is not None:
        info.update(_silhouettes(adata.obsm[key_added], adata.obs[label_key], adata.obs[batch_key]))
    adata.uns["scmamba2"][key_added] = {**adata.uns["scmamba2"][raw_key], "integration": info}
    return adata if copy else None
