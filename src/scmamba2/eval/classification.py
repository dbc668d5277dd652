"""Classification metrics (accuracy, macro-F1, per-class F1) and a confusion-matrix PNG for label transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.files import atomic_path


def classification_metrics(y_true, y_pred, *, labels: Sequence[str] | None = None) -> dict:
    """Accuracy, macro-F1 and per-class F1 of predicted labels (scikit-learn).

    Parameters
    ----------
    y_true, y_pred
        True and predicted labels, one per cell (compared as strings). A prediction that is not a true class
        (e.g. ``"unknown"`` from a confidence threshold) counts as a miss of the true class.
    labels
        The classes the macro average runs over; default: every class in ``y_true``.

    Returns
    -------
    dict
        ``accuracy``, ``macro_f1``, ``per_class_f1`` (class -> F1), ``support`` (class -> true cells) and
        ``n_cells``.
    """
    from sklearn.metrics import accuracy_score, f1_score

    t = np.asarray(y_true).astype(str)
    p = np.asarray(y_pred).astype(str)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape[0]} labels but y_pred has {p.shape[0]}")
    if t.size == 0:
        raise ValueError("no cells to score")
    classes = list(labels) if labels is not None else sorted(set(t))
    per_class = f1_score(t, p, labels=classes, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(t, p)),
        "macro_f1": float(np.mean(per_class)),
        "per_class_f1": {c: float(f) for c, f in zip(classes, per_class)},
        "support": {c: int((t == c).sum()) for c in classes},
        "n_cells": int(t.size),
    }


def confusion_png(y_true, y_pred, path: str | Path, *, labels: Sequence[str] | None = None,
                  title: str | None = None) -> Path:
    """Draw the row-normalised confusion matrix (true class per row, predicted per column) into ``path``.

    Columns are the true classes followed by any predicted label that is not one (e.g. ``"unknown"``); each
    cell shows the fraction of the row's cells, and the row label the number of true cells.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    t = np.asarray(y_true).astype(str)
    p = np.asarray(y_pred).astype(str)
    rows = list(labels) if labels is not None else sorted(set(t))
    cols = rows + sorted(set(p) - set(rows))
    cm = confusion_matrix(t, p, labels=cols)[: len(rows)]  # (true classes, predicted labels)
    support = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, support, out=np.zeros(cm.shape, dtype=float), where=support > 0)

    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(cols), 1.2 + 0.5 * len(rows)))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if cm[i, j]:
                ax.text(j, i, f"{frac[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r} (n={int(s)})" for r, s in zip(rows, support[:, 0])], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of the true class")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out
