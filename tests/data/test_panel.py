"""The gene panel of the whole-profile objective: its statistics, its targets and unmeasured genes."""

import numpy as np
import pytest
import scipy.sparse as sp

from scmamba2 import TokenizerConfig
from scmamba2._keys import GENES, PROFILE, VALUES
from scmamba2.data.collate import Collator, TokenizedDataset
from scmamba2.data.panel import panel_index, panel_targets, select_panel
from scmamba2.data.tokenize import tokenize
from scmamba2.data.vocab import GeneVocab
from scmamba2.errors import InputError


def counts(n_cells=80, n_genes=30, seed=0):
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.5, 2.0, size=n_genes) * rng.uniform(0.2, 3.0, size=(n_cells, 1))
    X = rng.poisson(rate).astype(np.float32)
    X[:, 0] += 1  # no empty cell
    return X


def log_norm(X, target_sum=1e4):
    return np.log1p(X / X.sum(1, keepdims=True) * target_sum)


def setup(n_genes=30):
    X = counts(n_genes=n_genes)
    names = [f"g{j}" for j in range(n_genes)]
    vocab = GeneVocab(names)
    cells = tokenize(sp.csr_matrix(X), vocab, TokenizerConfig(value_mode="continuous"), gene_names=names)
    return X, vocab, cells


def test_panel_is_the_most_variable_genes_with_their_moments():
    X, vocab, cells = setup()
    panel = select_panel(cells, len(vocab), 10, min_cells=1)
    L = log_norm(X)
    var = L.var(0)
    expected = np.sort(vocab.lookup([f"g{j}" for j in np.argsort(-var)[:10]]))
    assert np.array_equal(panel.ids, expected)
    cols = [int(np.flatnonzero(vocab.lookup([f"g{j}" for j in range(X.shape[1])]) == i)[0]) for i in panel.ids]
    np.testing.assert_allclose(panel.mean, L[:, cols].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(panel.std, L[:, cols].std(0), rtol=1e-4, atol=1e-5)


def test_targets_are_the_standardised_profile_zeros_included():
    X, vocab, cells = setup()
    panel = select_panel(cells, len(vocab), 12, min_cells=1)
    ds = TokenizedDataset(cells, panel=panel)
    L = log_norm(X)
    cols = [int(vocab.genes.index(vocab.tokens[i])) for i in panel.ids]
    z = (L[:, cols] - panel.mean) / panel.std
    for i in (0, 5, 79):
        np.testing.assert_allclose(ds[i][PROFILE], z[i], rtol=1e-4, atol=1e-4)
    batch = Collator(pad_id=vocab.pad_id)([ds[i] for i in range(4)])
    assert batch[PROFILE].shape == (4, 12)
    # Targets come from all of the cell's genes, not the max_len subsample the model reads.
    short = tokenize(sp.csr_matrix(X), vocab, TokenizerConfig(value_mode="continuous", max_len=4),
                     gene_names=vocab.genes)
    np.testing.assert_allclose(TokenizedDataset(short, panel=panel)[5][PROFILE], z[5], rtol=1e-4, atol=1e-4)


def test_unmeasured_genes_are_nan_and_left_out_of_the_statistics():
    X, vocab, cells = setup()
    n = len(cells)
    group = (np.arange(n) >= n // 2).astype(np.int64)
    measured = np.ones((2, len(vocab)), dtype=bool)
    gid = int(vocab.lookup(["g3"])[0])
    measured[1, gid] = False  # source 1 never measured g3
    panel = select_panel(cells, len(vocab), len(vocab.genes), group=group, measured=measured, min_cells=1)
    pos = int(np.flatnonzero(panel.ids == gid)[0])
    L = log_norm(X)
    np.testing.assert_allclose(panel.mean[pos], L[: n // 2, 3].mean(), rtol=1e-5)
    ds = TokenizedDataset(cells, panel=panel, source=group, measured=measured[:, panel.ids])
    assert np.isnan(ds[n - 1][PROFILE][pos]) and not np.isnan(ds[0][PROFILE][pos])
    assert np.isnan(ds[n - 1][PROFILE]).sum() == 1


def test_binned_values_are_refused_with_a_clear_message():
    X = counts()
    names = [f"g{j}" for j in range(X.shape[1])]
    vocab = GeneVocab(names)
    cells = tokenize(sp.csr_matrix(X), vocab, TokenizerConfig(value_mode="binned"), gene_names=names)
    with pytest.raises(InputError, match="continuous"):
        select_panel(cells, len(vocab), 5)


def test_panel_index_maps_ids_to_positions():
    idx = panel_index(np.array([5, 9, 7]), 12)
    assert idx[5] == 0 and idx[9] == 1 and idx[7] == 2 and (np.delete(idx, [5, 7, 9]) == -1).all()
    v = panel_targets(np.array([9, 4]), np.array([2.0, 3.0], dtype=np.float32), idx,
                      np.zeros(3, np.float32), np.ones(3, np.float32))
    assert v.tolist() == [0.0, 2.0, 0.0]


def test_dispersion_rule_is_the_seurat_like_normalised_dispersion():
    import pandas as pd

    X, vocab, cells = setup(n_genes=60)
    panel = select_panel(cells, len(vocab), 10, min_cells=1, rule="dispersion")
    L = log_norm(X)
    mean, var = L.mean(0), L.var(0)
    keep = np.flatnonzero(var > 0)
    disp = pd.Series(np.log(var[keep] / mean[keep]))
    bins = pd.cut(pd.Series(mean[keep]), np.linspace(mean[keep].min(), mean[keep].max(), 21), include_lowest=True)
    group = disp.groupby(bins, observed=True)
    z = ((disp - group.transform("mean")) / group.transform("std")).fillna(0.0).to_numpy()
    expected = np.sort(vocab.lookup([f"g{j}" for j in keep[np.argsort(-z, kind="stable")[:10]]]))
    assert np.array_equal(panel.ids, expected)


def test_dispersion_rule_keeps_a_rare_type_marker_that_variance_drops():
    rng = np.random.default_rng(1)
    n = 400
    a = (np.arange(n) % 2 == 0)[:, None]  # two abundant states: ten genes up tenfold in each
    fold = np.where(np.arange(20) < 10, np.where(a, 10.0, 1.0), np.where(a, 1.0, 10.0))
    abundant = rng.poisson(rng.uniform(5, 40, size=20) * fold).astype(np.float32)
    noise = rng.poisson(0.05, size=(n, 10)).astype(np.float32)  # rare single counts
    marker = np.zeros((n, 1), np.float32)
    marker[:8] = rng.poisson(30, size=(8, 1)) + 1  # strongly on in 2 % of the cells
    X = np.hstack([abundant, noise, marker])
    names = [f"g{j}" for j in range(31)]
    vocab = GeneVocab(names)
    cells = tokenize(sp.csr_matrix(X), vocab, TokenizerConfig(value_mode="continuous"), gene_names=names)
    m = vocab.lookup(["g30"])[0]
    assert m not in select_panel(cells, len(vocab), 5, min_cells=1).ids
    assert m in select_panel(cells, len(vocab), 5, min_cells=1, rule="dispersion").ids
    with pytest.raises(ValueError, match="panel rule"):
        select_panel(cells, len(vocab), 5, rule="nope")


def test_panel_view_fraction_reads_a_share_of_cells_through_their_panel_genes_only():
    X, vocab, cells = setup()
    panel = select_panel(cells, len(vocab), 8, min_cells=1)
    in_panel = set(panel.ids.tolist()) | {vocab.cls_id}
    full = TokenizedDataset(cells, panel=panel, resample=True, seed=3)
    mixed = TokenizedDataset(cells, panel=panel, resample=True, seed=3, panel_view_fraction=0.5)
    views = []
    for i in range(len(cells)):
        item, ref = mixed[i], full[i]
        np.testing.assert_array_equal(item[PROFILE], ref[PROFILE])  # the target never changes
        panel_only = set(item[GENES].tolist()) <= in_panel
        if panel_only:  # exactly the cell's panel tokens, with their values
            keep = np.isin(ref[GENES], panel.ids) | (ref[GENES] == vocab.cls_id)
            assert sorted(item[GENES].tolist()) == sorted(ref[GENES][keep].tolist())
        views.append(panel_only and not set(ref[GENES].tolist()) <= in_panel)
    assert 0.3 < np.mean(views) < 0.7  # about half of the 80 cells, drawn per cell
    again = TokenizedDataset(cells, panel=panel, resample=True, seed=3, panel_view_fraction=0.5)
    assert all(np.array_equal(again[i][GENES], mixed[i][GENES]) for i in range(len(cells)))  # seeded
    mixed.set_epoch(1)
    assert not all(np.array_equal(again[i][GENES], mixed[i][GENES]) for i in range(len(cells)))  # redrawn per epoch
    with pytest.raises(ValueError, match="panel_view_fraction needs"):
        TokenizedDataset(cells, panel=panel, panel_view_fraction=0.5)  # no resampling: a fixed view


def test_depth_thinning_reads_a_share_of_cells_as_shallower_counts():
    from scmamba2.data.collate import THIN_MIN

    X, vocab, cells = setup()
    panel = select_panel(cells, len(vocab), 8, min_cells=1)
    full = TokenizedDataset(cells, panel=panel, resample=True, seed=3)
    thin = TokenizedDataset(cells, panel=panel, resample=True, seed=3, depth_thinning=0.5)
    ts = cells.config.target_sum
    changed = []
    for i in range(len(cells)):
        item, ref = thin[i], full[i]
        np.testing.assert_array_equal(item[PROFILE], ref[PROFILE])  # the target never changes
        assert item[GENES][0] == vocab.cls_id and set(item[GENES][1:].tolist()) <= set(ref[GENES][1:].tolist())
        changed.append(not (np.array_equal(item[GENES], ref[GENES]) and np.array_equal(item[VALUES], ref[VALUES])))
        if not changed[-1]:
            continue
        # The values are log1p(k * ts / (keep * library)) of integer counts 1 <= k <= the cell's own count of that
        # gene, for one keep fraction in [THIN_MIN, 1): recover it from the smallest value (k_min = 1, 2 or 3).
        own = dict(zip(ref[GENES][1:], np.rint(np.expm1(ref[VALUES][1:].astype(np.float64)) * cells.library[i] / ts)))
        orig = np.array([own[g] for g in item[GENES][1:]])
        scaled = np.expm1(item[VALUES][1:].astype(np.float64))
        found = False
        for k_min in (1, 2, 3):
            k = scaled / scaled.min() * k_min
            keep = ts * k_min / (scaled.min() * cells.library[i])
            if np.allclose(k, np.rint(k), atol=1e-3) and np.all(np.rint(k) <= orig) and THIN_MIN - 1e-6 <= keep < 1:
                found = True
                break
        assert found, f"cell {i}: the thinned values are not those of integer counts <= the cell's own"
    assert 0.3 < np.mean(changed) < 0.7  # about half of the cells, drawn per cell
    again = TokenizedDataset(cells, panel=panel, resample=True, seed=3, depth_thinning=0.5)
    assert all(np.array_equal(again[i][VALUES], thin[i][VALUES]) for i in range(len(cells)))  # seeded
    with pytest.raises(ValueError, match="depth_thinning needs"):
        TokenizedDataset(cells, panel=panel, depth_thinning=0.5)  # no resampling
