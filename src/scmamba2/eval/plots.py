"""Plots people look at, written as PNG files."""

from __future__ import annotations

import textwrap
from pathlib import Path

from .._threads import keep_torch_threads
from ..data.files import atomic_path


@keep_torch_threads()
def umap_png(adata, *, use_rep: str, color: str | list[str] | None, path: str | Path, seed: int = 0,
             title: str | None = None):
    """Compute a UMAP of ``obsm[use_rep]`` on a copy of ``adata`` and save it coloured by ``color`` to ``path``
    (one panel per obs column; ``None`` or ``[]``: one uncoloured panel).

    Also returns the 2-D coordinates so that callers can store them (e.g. in ``obsm['X_umap_<rep>']``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    colors = [color] if isinstance(color, str) else list(color or []) or [None]
    missing = [c for c in colors if c is not None and c not in adata.obs]
    if missing:
        raise KeyError(f"cannot colour the UMAP by {missing}: not in obs (available: {list(adata.obs.columns)})")
    a = adata.copy()
    sc.pp.neighbors(a, use_rep=use_rep, random_state=seed)
    sc.tl.umap(a, random_state=seed)
    fig, axes = plt.subplots(1, len(colors), figsize=(5.5 * len(colors), 4.5), squeeze=False)
    for ax, c in zip(axes[0], colors):
        sc.pl.umap(a, color=c, ax=ax, show=False, title=title or (f"{use_rep}: {c}" if c else use_rep), frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return a.obsm["X_umap"]


@keep_torch_threads()
def umap_panels(adata, *, reps: dict[str, str], color: list[str], path: str | Path, seed: int = 0,
                title: str | None = None) -> dict[str, "object"]:
    """One row of UMAP panels per embedding (``reps``: row title -> ``obsm`` key), one column per ``color``.

    Returns the 2-D coordinates of each embedding (row title -> ``(n_cells, 2)`` array).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    missing = [c for c in color if c not in adata.obs] + [k for k in reps.values() if k not in adata.obsm]
    if missing:
        raise KeyError(f"cannot draw the UMAP panels: {missing} not in obs/obsm")
    fig, axes = plt.subplots(len(reps), len(color), figsize=(5.0 * len(color), 4.2 * len(reps)), squeeze=False)
    coords = {}
    for row, (name, key) in enumerate(reps.items()):
        a = adata.copy()
        sc.pp.neighbors(a, use_rep=key, random_state=seed)
        sc.tl.umap(a, random_state=seed)
        coords[name] = a.obsm["X_umap"]
        for ax, c in zip(axes[row], color):
            sc.pl.umap(a, color=c, ax=ax, show=False, title=textwrap.fill(f"{name}: {c}", 45), frameon=False,
                       legend_fontsize=7, size=max(120000 / a.n_obs / 10, 2))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return coords
