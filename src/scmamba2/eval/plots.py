"""Plots people look at, written as PNG files."""

from __future__ import annotations

from pathlib import Path


def umap_png(adata, *, use_rep: str, color: str | list[str], path: str | Path, seed: int = 0, title: str | None = None):
    """Compute a UMAP of ``obsm[use_rep]`` on a copy of ``adata`` and save it coloured by ``color`` to ``path``.

    Also returns the 2-D coordinates so that callers can store them (e.g. in ``obsm['X_umap_<rep>']``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    colors = [color] if isinstance(color, str) else list(color)
    missing = [c for c in colors if c not in adata.obs]
    if missing:
        raise KeyError(f"cannot colour the UMAP by {missing}: not in obs (available: {list(adata.obs.columns)})")
    a = adata.copy()
    sc.pp.neighbors(a, use_rep=use_rep, random_state=seed)
    sc.tl.umap(a, random_state=seed)
    fig, axes = plt.subplots(1, len(colors), figsize=(5.5 * len(colors), 4.5), squeeze=False)
    for ax, c in zip(axes[0], colors):
        sc.pl.umap(a, color=c, ax=ax, show=False, title=title or f"{use_rep}: {c}", frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return a.obsm["X_umap"]
