"""Cluster-balanced sampling: the weights that tilt pretraining towards rare cell states, and the sampler that
draws by them."""

import numpy as np
import pytest
import scipy.sparse as sp

from scmamba2 import TokenizerConfig
from scmamba2.data import balance
from scmamba2.data.balance import cluster_weights
from scmamba2.data.collate import LengthBucketSampler
from scmamba2.data.panel import select_panel
from scmamba2.data.tokenize import tokenize
from scmamba2.data.vocab import GeneVocab


def two_types(n_common=160, n_rare=40, n_genes=24, seed=0, extra=None):
    """Raw counts of a common type (genes 0-7 high) and a rare one (genes 8-15 high); the rare cells last; the cells
    ``extra`` also high on genes 16-23."""
    rng = np.random.default_rng(seed)
    rate = np.full((n_common + n_rare, n_genes), 0.5)
    rate[:n_common, :8] += 15
    rate[n_common:, 8:16] += 15
    if extra is not None:
        rate[extra, 16:24] += 15
    X = rng.poisson(rate).astype(np.float32)
    names = [f"g{j}" for j in range(n_genes)]
    vocab = GeneVocab(names)
    cells = tokenize(sp.csr_matrix(X), vocab, TokenizerConfig(value_mode="continuous"), gene_names=names)
    return cells, select_panel(cells, len(vocab), n_genes, min_cells=1), vocab


@pytest.fixture
def two_clusters(monkeypatch):
    monkeypatch.setattr(balance, "MAX_CLUSTERS", 2)  # one cluster a type


@pytest.mark.parametrize("exponent, ratio", [(1.0, 4.0), (0.5, 2.0)])
def test_rare_cells_weigh_their_cluster_share_to_the_minus_exponent(two_clusters, exponent, ratio):
    cells, panel, _ = two_types()
    w = cluster_weights(cells, panel, exponent=exponent)
    common, rare = w[:160], w[160:]
    assert np.allclose(common, common[0]) and np.allclose(rare, rare[0])  # the clusters are the two types
    assert rare[0] / common[0] == pytest.approx(ratio)  # shares 0.8 and 0.2
    assert w.mean() == pytest.approx(1.0)
    if exponent == 1.0:  # every cluster drawn equally often
        assert rare.sum() == pytest.approx(common.sum())


def test_no_balance_and_too_few_cells_give_uniform_weights():
    cells, panel, _ = two_types()
    assert np.array_equal(cluster_weights(cells, panel, exponent=0.0), np.ones(len(cells)))
    small, panel_small, _ = two_types(n_common=40, n_rare=10)  # 50 cells: one cluster, nothing to balance
    assert np.array_equal(cluster_weights(small, panel_small, exponent=1.0), np.ones(len(small)))


def test_each_source_is_clustered_on_its_measured_genes_and_keeps_its_share(two_clusters):
    # Source 0: 100 common cells, the last 20 of them also high on genes 16-23, which source 0 did not measure.
    # Source 1: 60 common cells and the 40 rare ones, every gene measured.
    cells, panel, _ = two_types(extra=slice(80, 100))
    source = np.r_[np.zeros(100, int), np.ones(100, int)]
    measured = np.ones((2, len(panel.ids)), dtype=bool)
    measured[0, np.isin(panel.ids, panel.ids[16:24])] = False
    w = cluster_weights(cells, panel, exponent=1.0, source=source, measured=measured)
    assert w[:100].mean() == pytest.approx(1.0) and w[100:].mean() == pytest.approx(1.0)
    assert w[100:160].sum() == pytest.approx(w[160:].sum())  # source 1: the two types drawn equally often
    # Source 0's two clusters split one population: the 20 cells that differ only in unmeasured genes are not
    # singled out (read on every gene, they would be a cluster of their own, weighted 4x the others).
    assert w[80:100].mean() / w[:80].mean() < 1.5
    ignored = cluster_weights(cells, panel, exponent=1.0, source=source)
    assert ignored[80:100].mean() / ignored[:80].mean() == pytest.approx(4.0)


def test_same_seed_same_weights():
    cells, panel, _ = two_types(n_common=400, n_rare=0)  # one population: 8 clusters of noise, placed by the seed
    a = cluster_weights(cells, panel, exponent=0.5, seed=4)
    assert np.array_equal(a, cluster_weights(cells, panel, exponent=0.5, seed=4))
    assert not np.array_equal(a, cluster_weights(cells, panel, exponent=0.5, seed=5))


def test_a_few_outlying_cells_weigh_as_a_cluster_of_the_minimum_size(monkeypatch):
    monkeypatch.setattr(balance, "MAX_CLUSTERS", 2)
    cells, panel, _ = two_types(n_common=196, n_rare=4)  # 4 cells of their own: a cluster of 4
    w = cluster_weights(cells, panel, exponent=1.0)
    share = np.array([196, balance.MIN_CLUSTER_CELLS]) / 200
    assert w[-1] / w[0] == pytest.approx(share[0] / share[1])  # 4 cells counted as 10, not 4


def test_weights_refuse_a_negative_exponent_binned_values_and_unknown_sources():
    from scmamba2.errors import InputError

    cells, panel, vocab = two_types()
    with pytest.raises(ValueError, match="exponent=-0.5 must be >= 0"):
        cluster_weights(cells, panel, exponent=-0.5)
    with pytest.raises(ValueError, match="each a row of measured"):
        cluster_weights(cells, panel, exponent=0.5, source=np.full(len(cells), 2),
                        measured=np.ones((2, len(panel.ids)), dtype=bool))
    X = np.ones((4, 3), dtype=np.float32)
    binned = tokenize(sp.csr_matrix(X), vocab, TokenizerConfig(value_mode="binned"), gene_names=["g0", "g1", "g2"])
    with pytest.raises(InputError, match="value_mode='binned'"):
        cluster_weights(binned, panel, exponent=0.5)


def test_weighted_sampler_draws_by_weight_and_repeats_an_epoch():
    n = 400
    w = np.r_[np.full(200, 3.0), np.ones(199), 0.0]
    s = LengthBucketSampler(np.arange(n) % 50 + 1, batch_size=16, seed=1, weights=w)
    counts = np.zeros(n)
    for epoch in range(20):
        s.set_epoch(epoch)
        drawn = np.concatenate(list(s))
        assert len(drawn) == n  # an epoch is as long as without weights
        np.add.at(counts, drawn, 1)
    assert counts[-1] == 0  # weight 0: never drawn
    assert counts[:200].sum() / counts[200:].sum() == pytest.approx(3.0, rel=0.1)
    s.set_epoch(3)
    first = [list(b) for b in s]
    s.set_epoch(3)
    assert [list(b) for b in s] == first


def test_sampler_weights_are_checked():
    with pytest.raises(ValueError, match=r"have shape \(4,\), not one per item \(5,\)"):
        LengthBucketSampler(np.ones(5), batch_size=2, weights=np.ones(4))
    with pytest.raises(ValueError, match="hold negative values"):
        LengthBucketSampler(np.ones(3), batch_size=2, weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="hold NaN or infinite values"):
        LengthBucketSampler(np.ones(3), batch_size=2, weights=[1.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="are all zero"):
        LengthBucketSampler(np.ones(3), batch_size=2, weights=np.zeros(3))
    with pytest.raises(ValueError, match="need shuffle=True"):
        LengthBucketSampler(np.ones(3), batch_size=2, shuffle=False, weights=np.ones(3))


def test_weighted_draws_split_over_replicas():
    """Every replica draws the same weighted epoch and takes its own batches of it."""
    w = np.linspace(0.1, 3.0, 64)
    full = LengthBucketSampler(np.ones(64), batch_size=4, seed=2, weights=w)
    ranks = [LengthBucketSampler(np.ones(64), batch_size=4, seed=2, weights=w, num_replicas=2, rank=r) for r in (0, 1)]
    for s in (full, *ranks):
        s.set_epoch(5)
    batches = [list(b) for b in full]
    assert [list(b) for b in ranks[0]] == batches[0::2]
    assert [list(b) for b in ranks[1]] == batches[1::2]
