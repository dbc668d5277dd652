"""The quickstart's verdict weighs both metrics against PCA (it read accuracy alone)."""

from scmamba2.quickstart import _verdict


def _s(acc, f1):
    return {"kNN accuracy": acc, "kNN macro-F1": f1}


def test_verdict_names_each_metric():
    pca = _s(0.80, 0.63)
    assert _verdict({"zero": _s(0.78, 0.57), "tuned": _s(0.81, 0.64)}, pca).startswith("scmamba2 is at or above PCA")
    assert _verdict({"zero": _s(0.78, 0.57), "tuned": _s(0.79, 0.60)}, pca).startswith("PCA wins")
    mixed = _verdict({"zero": _s(0.78, 0.57), "tuned": _s(0.807, 0.616)}, pca)
    assert mixed.startswith("Mixed") and "macro-F1: scmamba2 0.616 below PCA 0.630" in mixed
