"""The quickstart's verdict weighs both metrics against PCA (it read accuracy alone)."""

from scmamba2.quickstart import _verdict


def _s(acc, f1):
    return {"kNN accuracy": acc, "kNN macro-F1": f1}


def test_verdict_names_each_metric():
    pca = _s(0.80, 0.63)
    z, t = "X_scmamba2_zeroshot", "X_scmamba2"
    assert _verdict({z: _s(0.78, 0.57), t: _s(0.81, 0.64)}, pca).startswith("scmamba2 is at or above PCA")
    assert _verdict({z: _s(0.78, 0.57), t: _s(0.79, 0.60)}, pca).startswith("PCA wins")
    mixed = _verdict({z: _s(0.78, 0.62), t: _s(0.807, 0.616)}, pca)
    assert mixed.startswith("Mixed") and "macro-F1: scmamba2 (zero-shot) 0.620 below PCA 0.630" in mixed
    assert "accuracy: scmamba2 (fine-tuned) 0.807 at or above" in mixed  # each figure names its embedding
