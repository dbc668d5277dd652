"""Perturbation baselines and metrics on tiny data with known answers."""

import numpy as np
import pytest

from scmamba2.eval.perturb_baselines import LinearPerturbation, pca_gene_embedding
from scmamba2.eval.perturb_metrics import deg_weights, perturbation_metrics, top_expressed, weighted_mse
from scmamba2.tasks.perturb_effects import EffectTable


def test_deg_weighted_mse_known_answer():
    # gene 0: means 1 -> 3, gene 1: 1 -> 2, both with variance 2 in each group of 2 cells: |t| = sqrt(2), sqrt(2)/2
    ctrl = np.array([[0.0, 0.0], [2.0, 2.0]])
    pert = np.array([[2.0, 1.0], [4.0, 3.0]])
    w = deg_weights(pert, ctrl)
    np.testing.assert_allclose(w, [2 / 3, 1 / 3])
    assert weighted_mse(np.array([4.0, 5.0]), pert.mean(0), w) == pytest.approx(2 / 3 * 1 + 1 / 3 * 9)
    m = perturbation_metrics(np.array([4.0, 5.0]), pert.mean(0), ctrl.mean(0), weights=w, expressed_idx=[0, 1])
    assert m["wmse"] == pytest.approx(11 / 3) and m["l2_top1000"] == pytest.approx(np.sqrt(10))
    np.testing.assert_allclose(deg_weights(ctrl, ctrl), [0.5, 0.5])  # nothing differs: uniform


def test_deg_weighted_mse_punishes_a_prediction_collapsed_on_the_mean():
    rng = np.random.default_rng(0)
    ctrl = rng.normal(0, 1, (200, 50))
    own = np.zeros(50)
    own[:3] = -3.0  # this perturbation: three genes of its own
    shared = np.zeros(50)
    shared[10:20] = 0.5  # what every perturbation shares
    pert = ctrl + own + shared
    w = deg_weights(pert, ctrl)
    right, collapsed = own + shared, shared  # the mean of many perturbations keeps only the shared part
    assert weighted_mse(right, pert.mean(0), w) < 0.05 < weighted_mse(collapsed, pert.mean(0), w)


def test_top_expressed():
    X = np.array([[1.0, 5.0, 3.0], [1.0, 5.0, 3.0]])
    assert top_expressed(X, 2).tolist() == [1, 2] and top_expressed(X, 10).tolist() == [1, 2, 0]


def test_linear_ridge_baseline_transfers_through_co_expression():
    # Two modules of five genes: perturbing a gene of module A raises all of A by 1, likewise for B.
    genes = [f"g{j}" for j in range(10)]
    module = np.repeat([0, 1], 5)
    train = [0, 1, 2, 3, 5, 6, 7, 8]  # g4 and g9 held out: never perturbed, but they move with their module
    E = np.stack([(module == module[j]).astype(float) for j in train])
    lin = LinearPerturbation(n_components=10, ridge=0.1).fit(E, [[genes[j]] for j in train], genes)
    assert lin.G.shape == (10, 8)
    np.testing.assert_allclose(lin.G[4], lin.G[0], atol=1e-9)  # same co-expression, same embedding
    for held, mod in ((4, 0), (9, 1)):
        pred = lin.predict([genes[held]])
        assert pred[module == mod].min() > 0.9 and np.abs(pred[module != mod]).max() < 0.1
    # a target that is not a measured gene gets the intercept: the mean training effect (0.5 everywhere)
    np.testing.assert_allclose(lin.predict(["NOTMEASURED"]), E.mean(0), atol=1e-9)
    assert not lin.has_embedding(["NOTMEASURED"]) and lin.has_embedding(["g4"])


def test_linear_ridge_is_the_closed_form_with_an_unpenalised_intercept():
    rng = np.random.default_rng(1)
    E = rng.normal(size=(6, 12))
    genes = [f"g{j}" for j in range(12)]
    targets = [[genes[j]] for j in range(6)]
    lin = LinearPerturbation(n_components=3, ridge=0.1).fit(E, targets, genes)
    G = pca_gene_embedding(E, 3)
    D = np.column_stack([np.ones(6), G[:6]])
    P = 0.1 * np.diag([0.0, 1, 1, 1])
    W = np.linalg.solve(D.T @ D + P, D.T @ E)
    np.testing.assert_allclose(lin.predict(["g7"]), np.concatenate([[1.0], G[7]]) @ W, atol=1e-10)
    # lambda only shrinks the embedding coefficients: with a huge one every prediction is the mean effect
    big = LinearPerturbation(n_components=3, ridge=1e9).fit(E, targets, genes)
    np.testing.assert_allclose(big.predict(["g7"]), E.mean(0), atol=1e-6)


def test_effect_table_baselines():
    # cells x 2 genes; control mean (1, 1); A: +2 on gene 0, B: +4 on gene 1, A+B measured too
    X = np.array([[1, 1], [1, 1], [3, 1], [3, 1], [1, 5], [9, 9]], dtype=float)
    names = np.array(["ctrl", "ctrl", "A", "A", "B", "A+B"])
    t = EffectTable.from_cells(X, names, None, "ctrl", targets={"A": ["A"], "B": ["B"], "A+B": ["A", "B"],
                                                                "C": ["C"], "A+C": ["A", "C"]})
    np.testing.assert_allclose(t.baseline("A"), [2, 0])  # seen: its own effect
    np.testing.assert_allclose(t.baseline("A+B"), [8, 8])  # seen combination: its own effect
    np.testing.assert_allclose(t.baseline("A+B", honest=True), [2, 4])  # as if unseen: additive
    np.testing.assert_allclose(t.baseline("C"), [1, 2])  # unseen single: mean single effect
    np.testing.assert_allclose(t.baseline("A", honest=True), [0, 4])  # leave A out: the mean of the others (B)
    np.testing.assert_allclose(t.baseline("A+C"), [3, 2])  # A's effect + the mean for the never-seen C
    assert t.is_seen("A") and not t.is_seen("C") and t.is_seen("ctrl")
    np.testing.assert_allclose(t.control_mean(), [1, 1])


def test_effect_table_by_group_leaves_one_group_out():
    X = np.array([[0, 0], [10, 10], [2, 0], [14, 10], [0, 0], [1, 0]], dtype=float)
    names = np.array(["ctrl", "ctrl", "stim", "stim", "ctrl", "stim"])
    groups = np.array(["a", "b", "a", "b", "c", "c"])
    t = EffectTable.from_cells(X, names, groups, "ctrl", by="group")
    np.testing.assert_allclose(t.baseline("stim", "a"), [2, 0])  # measured in a: own effect
    np.testing.assert_allclose(t.baseline("stim", "a", honest=True), [2.5, 0])  # mean over b (4) and c (1)
    np.testing.assert_allclose(t.baseline("stim", None), [7 / 3, 0])  # a new group: mean over all groups
    assert t.is_seen("stim", "b") and not t.is_seen("stim", None)
    np.testing.assert_allclose(t.control_mean("b"), [10, 10])
    again = EffectTable.from_arrays(t.arrays())
    np.testing.assert_allclose(again.baseline("stim", "a", honest=True), [2.5, 0])
