import numpy as np
import pytest

from scmamba2.eval.knn import knn_label_transfer_scores, knn_per_class_f1


def _blobs(rng, centres, sizes, scale):
    X = np.concatenate([rng.normal(c, scale, size=(n, len(c))) for c, n in zip(centres, sizes)])
    y = np.repeat([f"type{i}" for i in range(len(sizes))], sizes)
    return X, y


def test_per_class_f1_averages_to_macro_f1():
    rng = np.random.default_rng(0)
    X, y = _blobs(rng, [(0, 0), (1.5, 0), (0, 1.5)], [120, 60, 40], scale=1.0)  # overlapping: F1 < 1
    per_class = knn_per_class_f1(X, y, seed=3)
    assert sorted(per_class) == ["type0", "type1", "type2"]
    assert max(per_class.values()) < 1.0
    assert np.mean(list(per_class.values())) == pytest.approx(knn_label_transfer_scores(X, y, seed=3)["kNN macro-F1"])


def test_per_class_f1_finds_the_type_an_embedding_blurs():
    rng = np.random.default_rng(1)
    X, y = _blobs(rng, [(0, 0), (10, 0), (0, 10)], [100, 100, 40], scale=0.5)
    assert knn_per_class_f1(X, y) == {"type0": 1.0, "type1": 1.0, "type2": 1.0}
    X[y == "type2"] = rng.normal((0, 0), 0.5, size=(40, 2))  # type2 now sits inside type0
    blurred = knn_per_class_f1(X, y)
    assert blurred["type1"] == 1.0
    assert blurred["type2"] < 0.5 and blurred["type0"] < 1.0
