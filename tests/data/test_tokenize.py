"""tokenize(), TokenizedCells, TokenizerConfig and mask_values."""

import math
from fractions import Fraction

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scmamba2._keys import CLS_VALUE, MASK_VALUE
from scmamba2.data.preprocess import _sample_distinct, bin_values
from scmamba2.data.tokenize import TokenizedCells, TokenizerConfig, mask_values, tokenize
from scmamba2.data.vocab import GeneVocab
from scmamba2.errors import InputError


def _adata(dense, genes=None):
    genes = genes or [f"G{j}" for j in range(dense.shape[1])]
    return ad.AnnData(X=sp.csr_matrix(dense.astype(np.float32)), var=pd.DataFrame(index=genes))


def _random_counts(seed=0, n_cells=30, n_genes=40, p_zero=0.5):
    rng = np.random.default_rng(seed)
    dense = rng.poisson(3.0, size=(n_cells, n_genes)).astype(np.float32)
    dense[rng.random(dense.shape) < p_zero] = 0
    return dense


def _cell_dict(cells, i, **kw):
    g, v = cells.cell(i, **kw)
    return dict(zip(g[1:].tolist(), v[1:].tolist()))


def test_config_validation_and_round_trip():
    cfg = TokenizerConfig(n_bins=11, max_len=64, include_zeros="sample", n_zero_samples=5, gene_order="expression")
    assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg
    for bad in [
        {"gene_order": "alphabetical"},
        {"max_len": 1},
        {"n_bins": 1},
        {"include_zeros": "sample"},  # needs n_zero_samples
        {"n_zero_samples": 3},  # without include_zeros="sample"
        {"value_mode": "raw"},
        {"subsample": "first"},
    ]:
        with pytest.raises(InputError):
            TokenizerConfig(**bad)
    with pytest.raises(InputError, match="Unknown"):
        TokenizerConfig.from_dict({"n_bins": 5, "bogus": 1})


def test_cls_first_lengths_vocab_order_and_bins(tiny_counts):
    vocab = GeneVocab.from_adata(tiny_counts)
    cells = tokenize(tiny_counts, vocab, TokenizerConfig(n_bins=11))
    X = tiny_counts.X.toarray()
    assert len(cells) == 64
    np.testing.assert_array_equal(cells.lengths, (X != 0).sum(1) + 1)
    expected_bins = bin_values(tiny_counts.X, 11).toarray()
    for i in [0, 17, 63]:
        genes, values = cells.cell(i)
        assert genes[0] == vocab.cls_id and values[0] == CLS_VALUE
        assert genes.dtype == np.int64 and values.dtype == np.float32
        assert np.all(np.diff(genes[1:]) > 0)  # vocabulary order
        cols = vocab.lookup(tiny_counts.var_names)
        np.testing.assert_array_equal(genes[1:], cols[X[i] != 0])
        np.testing.assert_array_equal(values[1:], expected_bins[i][X[i] != 0])


def test_genes_outside_vocab_dropped_and_reordered_vocab():
    dense = _random_counts(1)
    adata = _adata(dense)
    # Vocabulary in another order, missing G0..G4, with an extra gene.
    vocab = GeneVocab(["EXTRA"] + [f"G{j}" for j in range(39, 4, -1)])
    cells = tokenize(adata, vocab, TokenizerConfig(n_bins=5, value_mode="continuous"))
    totals = dense.sum(1)  # continuous: normalised by the total over ALL columns
    for i in range(len(cells)):
        got = _cell_dict(cells, i)
        expected = {vocab[f"G{j}"]: np.log1p(dense[i, j] / totals[i] * 1e4) for j in range(5, 40) if dense[i, j] != 0}
        assert got.keys() == expected.keys()
        np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-5)
        assert list(got) == sorted(got)
    with pytest.raises(InputError, match="None of the"):
        tokenize(adata, GeneVocab(["X", "Y"]))
    with pytest.raises(InputError, match="gene_names"):
        tokenize(adata.X, vocab)
    bare = tokenize(adata.X, vocab, TokenizerConfig(value_mode="continuous"), gene_names=adata.var_names)
    np.testing.assert_array_equal(bare.gene_ids, cells.gene_ids)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicate_columns_keep_first():
    dense = np.array([[1, 2, 3], [4, 0, 6]], dtype=np.float32)
    cells = tokenize(_adata(dense, ["A", "B", "A"]), GeneVocab(["A", "B"]), TokenizerConfig(value_mode="continuous"))
    np.testing.assert_array_equal(cells.lengths, [3, 2])
    assert _cell_dict(cells, 1) == pytest.approx({4: np.log1p(4 / 10 * 1e4)})


def test_gene_order_policies():
    dense = _random_counts(2)
    adata = _adata(dense)
    vocab = GeneVocab.from_adata(adata)
    base = tokenize(adata, vocab, TokenizerConfig(n_bins=7))
    expr = tokenize(adata, vocab, TokenizerConfig(n_bins=7, gene_order="expression"))
    rand = tokenize(adata, vocab, TokenizerConfig(n_bins=7, gene_order="random"))
    for i in range(len(base)):
        g0, v0 = base.cell(i)
        g1, v1 = expr.cell(i)
        assert np.all(np.diff(v1[1:]) <= 0)  # decreasing value
        ties = np.diff(v1[1:]) == 0
        assert np.all(np.diff(g1[1:])[ties] > 0)  # ties by vocabulary id
        g2, v2 = rand.cell(i)
        assert g2[0] == vocab.cls_id
        assert sorted(zip(g2[1:], v2[1:])) == list(zip(g0[1:], v0[1:]))  # same tokens
        np.testing.assert_array_equal(rand.cell(i)[0], g2)  # same cell -> same order
    assert any(not np.array_equal(rand.cell(i)[0], base.cell(i)[0]) for i in range(len(base)))


def test_max_len_random_subsampling_is_seeded():
    dense = _random_counts(3, n_cells=10, n_genes=60, p_zero=0.1)
    adata = _adata(dense)
    vocab = GeneVocab.from_adata(adata)
    cfg = TokenizerConfig(max_len=9)
    a, a2, b = (tokenize(adata, vocab, cfg, seed=s) for s in (1, 1, 2))
    full = tokenize(adata, vocab, TokenizerConfig(max_len=1000))
    assert np.all(a.lengths > 9)  # lengths are before truncation
    for i in range(len(a)):
        g, v = a.cell(i)
        assert len(g) == 9 and g[0] == vocab.cls_id and np.all(np.diff(g[1:]) > 0)
        np.testing.assert_array_equal(g, a2.cell(i)[0])
        assert set(_cell_dict(a, i).items()) <= set(_cell_dict(full, i).items())  # a subset of the cell
    assert any(not np.array_equal(a.cell(i)[0], b.cell(i)[0]) for i in range(len(a)))
    g_r1 = a.cell(0, rng=np.random.default_rng(5))[0]
    np.testing.assert_array_equal(g_r1, a.cell(0, rng=np.random.default_rng(5))[0])
    # a cell's seeded tokens depend on its contents, not its position: same after subset or reordering
    sub = a.subset([4, 2])
    np.testing.assert_array_equal(sub.cell(1)[0], a.cell(2)[0])
    np.testing.assert_array_equal(sub.cell_index, [4, 2])
    rev = tokenize(adata[::-1].copy(), vocab, cfg, seed=1)
    np.testing.assert_array_equal(rev.cell(len(a) - 1)[0], a.cell(0)[0])


def test_max_len_top_keeps_highest_values():
    dense = np.array([[5, 1, 9, 3, 9, 7]], dtype=np.float32)
    cells = tokenize(_adata(dense), GeneVocab([f"G{j}" for j in range(6)]),
                     TokenizerConfig(max_len=4, subsample="top", value_mode="continuous"))  # fmt: skip
    g, _ = cells.cell(0)
    np.testing.assert_array_equal(g, [1, 4 + 2, 4 + 4, 4 + 5])  # 9, 9, 7 in vocabulary order


def test_include_zeros_all():
    dense = _random_counts(4)
    adata = _adata(dense, [f"G{j}" for j in range(39)] + ["NOTINVOCAB"])
    vocab = GeneVocab([f"G{j}" for j in range(39)])
    none = tokenize(adata, vocab, TokenizerConfig(n_bins=9))
    full = tokenize(adata, vocab, TokenizerConfig(n_bins=9, include_zeros="all", max_len=100))
    np.testing.assert_array_equal(full.lengths, np.full(len(full), 40))
    for i in range(len(full)):
        d = _cell_dict(full, i)
        assert list(d) == list(range(4, 43))
        assert {k: v for k, v in d.items() if v != 0} == _cell_dict(none, i)


def test_include_zeros_sample():
    dense = _random_counts(5, n_cells=40, n_genes=30, p_zero=0.6)
    dense[0, :] = 0
    dense[0, :28] = 1  # only 2 zeros: fewer than n_zero_samples
    adata = _adata(dense)
    vocab = GeneVocab.from_adata(adata)
    cfg = TokenizerConfig(include_zeros="sample", n_zero_samples=5, max_len=100)
    cells, again, other = (tokenize(adata, vocab, cfg, seed=s) for s in (0, 0, 1))
    nnz = (dense != 0).sum(1)
    np.testing.assert_array_equal(cells.lengths, nnz + 1 + np.minimum(5, 30 - nnz))
    for i in range(len(cells)):
        g, v = cells.cell(i)
        assert np.all(np.diff(g[1:]) > 0)  # distinct, vocabulary order
        cols = g[1:] - 4
        np.testing.assert_array_equal(v[1:] == 0, dense[i, cols] == 0)  # zero tokens are real zeros
    np.testing.assert_array_equal(cells.gene_ids, again.gene_ids)
    assert not np.array_equal(cells.gene_ids, other.gene_ids)
    rev = tokenize(adata[::-1].copy(), vocab, cfg, seed=0)  # the same zeros whatever the cell order
    for i in range(len(cells)):
        np.testing.assert_array_equal(rev.cell(len(cells) - 1 - i)[0], cells.cell(i)[0])


def test_sample_distinct_exact_and_uniformish():
    n = np.array([0, 1, 5, 10, 10, 1000])
    k = np.array([3, 1, 4, 2, 10, 7])
    rows, vals = _sample_distinct(n, k, np.arange(6, dtype=np.uint64))
    np.testing.assert_array_equal(np.bincount(rows, minlength=6), np.minimum(k, n))
    for r in range(6):
        v = vals[rows == r]
        assert len(set(v.tolist())) == len(v) and np.all((v >= 0) & (v < max(n[r], 1)))
    hits = np.zeros(10)
    for trial in range(2000):  # 7 of 10 uses the complement path; each value should be picked ~70%
        r, v = _sample_distinct(np.array([10]), np.array([7]), np.array([trial], dtype=np.uint64))
        hits[v] += 1
    small = np.zeros(1000)
    for trial in range(500):  # 3 of 1000 (rejection path): roughly uniform over the range
        small[_sample_distinct(np.array([1000]), np.array([3]), np.array([trial], dtype=np.uint64))[1]] += 1
    assert small[:500].sum() == pytest.approx(750, abs=100)
    # a row's draws depend only on its key
    a = _sample_distinct(np.array([50, 40]), np.array([5, 5]), np.array([7, 8], dtype=np.uint64))
    b = _sample_distinct(np.array([40, 50]), np.array([5, 5]), np.array([8, 7], dtype=np.uint64))
    np.testing.assert_array_equal(a[1][a[0] == 0], b[1][b[0] == 1])
    assert np.all(np.abs(hits / 2000 - 0.7) < 0.05)


def test_subset_with_boolean_mask():
    cells = TokenizedCells(np.arange(6), np.ones(6, np.float32), np.array([0, 2, 2, 6]), TokenizerConfig())
    sub = cells.subset(np.array([True, False, True]))
    np.testing.assert_array_equal(sub.offsets, [0, 2, 6])
    np.testing.assert_array_equal(sub.gene_ids, [0, 1, 2, 3, 4, 5])
    assert len(cells.cell(1)[0]) == 1  # an empty cell is just <cls>
    with pytest.raises(IndexError):
        cells.cell(3)


def test_keep_genes_keeps_each_cells_chosen_tokens_in_order():
    # cells: [0, 5, 7], [], [5, 9], [7]; keep ids 5 and 7 (9 and 0 are dropped; the last cells end empty or not)
    cells = TokenizedCells(np.array([0, 5, 7, 5, 9, 7]), np.arange(6, dtype=np.float32), np.array([0, 3, 3, 5, 6]),
                           TokenizerConfig(), cell_index=np.array([10, 11, 12, 13]), library=np.arange(4.0))
    kept = cells.keep_genes(np.array([7, 5]))
    np.testing.assert_array_equal(kept.offsets, [0, 2, 2, 3, 4])
    np.testing.assert_array_equal(kept.gene_ids, [5, 7, 5, 7])
    np.testing.assert_array_equal(kept.values, [1, 2, 3, 5])
    np.testing.assert_array_equal(kept.cell_index, cells.cell_index)
    np.testing.assert_array_equal(kept.library, cells.library)
    for i in range(len(cells)):  # the same as dropping the other genes from each cell by hand
        g, v = cells.cell(i)
        keep = np.isin(g, [1, 5, 7])  # <cls> (id 1) stays first
        np.testing.assert_array_equal(kept.cell(i)[0], g[keep])
        np.testing.assert_array_equal(kept.cell(i)[1], v[keep])
    assert len(cells.keep_genes(np.array([], dtype=np.int64)).gene_ids) == 0


def _masking_inputs():
    lengths = torch.tensor([1, 2, 11, 30, 21, 7])
    L = int(lengths.max())
    padding = torch.arange(L)[None, :] >= lengths[:, None]
    values = torch.arange(6 * L, dtype=torch.float32).reshape(6, L) + 1
    return values, padding, lengths


@pytest.mark.parametrize("ratio", [0.15, 0.5, 1.0])
def test_mask_values_ratio_and_protection(ratio):
    values, padding, lengths = _masking_inputs()
    masked, mask = mask_values(values, padding, ratio, torch.Generator().manual_seed(0))
    n_genes = lengths - 1
    expected = [min(max(math.ceil(Fraction(str(ratio)) * n), 1), n) if n > 0 else 0 for n in n_genes.tolist()]
    assert mask.sum(1).tolist() == expected
    assert not mask[:, 0].any() and not mask[padding].any()
    assert torch.all(masked[mask] == MASK_VALUE)
    assert torch.equal(masked[~mask], values[~mask])
    assert not torch.equal(values, masked) or ratio == 0


def test_mask_values_deterministic():
    values, padding, _ = _masking_inputs()
    m1 = mask_values(values, padding, 0.3, torch.Generator().manual_seed(1))[1]
    m2 = mask_values(values, padding, 0.3, torch.Generator().manual_seed(1))[1]
    m3 = mask_values(values, padding, 0.3, torch.Generator().manual_seed(2))[1]
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    n1 = mask_values(values, padding, 0.3, np.random.default_rng(1))[1]
    assert torch.equal(n1, mask_values(values, padding, 0.3, np.random.default_rng(1))[1])
    none = mask_values(values, padding, 0.0, torch.Generator())[1]
    assert none.dtype == torch.bool and not none.any()
    # cls is maskable when not protected
    m = mask_values(values, padding, 1.0, torch.Generator(), protect_first=False)[1]
    assert m[:, 0].all()


@pytest.mark.parametrize("value_mode", ["continuous", "binned"])
def test_log_normalized_input_gives_the_values_of_raw_counts(value_mode):
    from scmamba2.data.prepare import prepare_cells

    dense = _random_counts(seed=3, n_cells=40, n_genes=60, p_zero=0.6)
    dense[:, 0] += 1  # no empty cell
    counts = _adata(dense)
    logn = _adata(np.log1p(dense / dense.sum(1, keepdims=True) * 1e4))
    vocab = GeneVocab(list(counts.var_names))
    cfg = TokenizerConfig(value_mode=value_mode, max_len=100)
    a = prepare_cells(counts, vocab, cfg).cells
    b = prepare_cells(logn, vocab, cfg).cells
    assert prepare_cells(logn, vocab, cfg).report.value_kind == "log_normalized"
    np.testing.assert_array_equal(a.gene_ids, b.gene_ids)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-5)  # not log-transformed twice


def _reference_tokens(dense, names, vocab, cfg):
    """Slow per-cell tokens: first column of each vocabulary gene, non-zeros, by id; bins over the kept genes."""
    first = {}
    for j, g in enumerate(names):
        if g in vocab and vocab[g] not in first:
            first[vocab[g]] = j
    ids = sorted(first)
    genes, values, lengths = [], [], []
    for row in dense:
        g = [i for i in ids if row[first[i]] != 0]
        x = np.array([row[first[i]] for i in g], dtype=np.float64)
        if cfg.value_mode == "binned":
            v = [_reference_bin(x, k, cfg.n_bins) for k in range(len(x))]
        elif len(x):
            v = np.log1p(x * (cfg.target_sum / row.astype(np.float64).sum()))
        else:
            v = []
        genes += g
        values += list(np.asarray(v, dtype=np.float64).astype(np.float32))
        lengths.append(len(g))
    return np.array(genes, dtype=np.int64), np.array(values, dtype=np.float32), np.array(lengths)


def _reference_bin(x, k, n_bins):
    """The documented rule for value x[k] of a cell (mid-rank; the cell's largest value at n_bins - 1)."""
    m, r_lo, r_hi = len(x), int(np.sum(x < x[k])), int(np.sum(x <= x[k]))
    return n_bins - 1 if r_hi == m else 1 + ((n_bins - 2) * (r_lo + r_hi - 1)) // (2 * (m - 1))


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("value_mode", ["binned", "continuous"])
@pytest.mark.parametrize("vocab_kind", ["same_order", "reordered"])
def test_tokens_equal_slow_reference(monkeypatch, threads, value_mode, vocab_kind):
    from scmamba2.data import _binning

    dense = _random_counts(seed=7, n_cells=60, n_genes=45, p_zero=0.6)
    dense[5] = 0  # an empty cell
    dense[6, 3] = 400  # a value above the counting table
    names = [f"G{j}" for j in range(45)]
    names[20] = "G3"  # a repeated gene: its first column is used
    if vocab_kind == "same_order":
        vocab = GeneVocab([f"G{j}" for j in range(40)])  # G40..G44 are dropped
    else:
        vocab = GeneVocab(["EXTRA"] + [f"G{j}" for j in range(44, 9, -1)])  # ids decrease with the column
    X = sp.csr_matrix(dense)
    X.data[::7] = 0  # stored zeros are not tokens
    dense = X.toarray()
    adata = ad.AnnData(X=X, var=pd.DataFrame(index=names))
    if threads > 1:
        monkeypatch.setattr(_binning, "_PARALLEL_NNZ", 0)
        monkeypatch.setattr(_binning, "_n_threads", lambda: threads)
    cfg = TokenizerConfig(value_mode=value_mode, n_bins=7)
    cells = tokenize(adata, vocab, cfg)
    genes, values, lengths = _reference_tokens(dense, names, vocab, cfg)
    np.testing.assert_array_equal(cells.lengths - 1, lengths)
    np.testing.assert_array_equal(cells.gene_ids, genes)
    np.testing.assert_array_equal(cells.values, values)  # bit-identical, also for continuous values
