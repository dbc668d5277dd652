"""Classification metrics against scikit-learn and by hand; the confusion-matrix PNG."""

import numpy as np
import pytest

from scmamba2.eval.classification import classification_metrics, confusion_png


def test_metrics_match_sklearn_and_hand_counts():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    t = rng.choice(["a", "b", "c"], 200)
    p = np.where(rng.random(200) < 0.7, t, rng.choice(["a", "b", "c"], 200))
    m = classification_metrics(t, p)
    assert m["accuracy"] == pytest.approx((t == p).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))
    # class "a" by hand
    tp = ((t == "a") & (p == "a")).sum()
    f1_a = 2 * tp / ((t == "a").sum() + (p == "a").sum())
    assert m["per_class_f1"]["a"] == pytest.approx(f1_a)
    assert m["support"] == {c: int((t == c).sum()) for c in "abc"} and m["n_cells"] == 200


def test_unknown_counts_as_a_miss_not_a_class():
    t = np.array(["a", "a", "b", "b"])
    perfect = classification_metrics(t, t)
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    m = classification_metrics(t, np.array(["a", "unknown", "b", "b"]))
    assert m["accuracy"] == 0.75
    assert set(m["per_class_f1"]) == {"a", "b"}  # "unknown" is not averaged over
    assert m["per_class_f1"]["a"] == pytest.approx(2 / 3)  # precision 1, recall 1/2
    assert m["per_class_f1"]["b"] == 1.0


def test_shape_mismatch_and_empty():
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no cells"):
        classification_metrics([], [])


def test_confusion_png(tmp_path):
    t = np.array(["a", "a", "b", "b", "c"])
    p = np.array(["a", "b", "b", "unknown", "c"])
    path = confusion_png(t, p, tmp_path / "sub" / "cm.png", title="test")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
