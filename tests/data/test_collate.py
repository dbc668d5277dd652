"""Collator, TokenizedDataset and LengthBucketSampler."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from scmamba2._keys import (
    BATCH,
    CELL_INDEX,
    GENES,
    LABELS,
    MASK,
    MASK_VALUE,
    PAD_VALUE,
    PADDING_MASK,
    TARGET_VALUES,
    VALUES,
)
from scmamba2.data.collate import Collator, LengthBucketSampler, TokenizedDataset
from scmamba2.data.tokenize import TokenizedCells, TokenizerConfig


def _items(lengths, seed=0, extra=True):
    rng = np.random.default_rng(seed)
    items = []
    for k, n in enumerate(lengths):
        genes = np.concatenate([[1], rng.integers(4, 100, n - 1)]).astype(np.int64)
        values = np.concatenate([[0.0], rng.integers(1, 51, n - 1)]).astype(np.float32)
        item = {GENES: genes, VALUES: values}
        if extra:
            item.update({BATCH: k % 2, LABELS: k % 3, CELL_INDEX: 10 + k})
        items.append(item)
    return items


def _cells(lengths, seed=0, max_len=1200):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    genes = np.concatenate([np.sort(rng.choice(np.arange(4, 500), n, replace=False)) for n in lengths])
    values = rng.integers(1, 51, offsets[-1]).astype(np.float32)
    return TokenizedCells(genes, values, offsets, TokenizerConfig(max_len=max_len))


def test_collator_pads_and_returns_keys():
    items = _items([3, 7, 1])
    batch = Collator(pad_id=0)(items)
    assert set(batch) == {GENES, VALUES, TARGET_VALUES, PADDING_MASK, MASK, BATCH, LABELS, CELL_INDEX}
    assert batch[GENES].shape == (3, 7) and batch[GENES].dtype == torch.int64
    assert batch[VALUES].dtype == torch.float32 and batch[PADDING_MASK].dtype == torch.bool
    expected_pad = torch.tensor([[False] * 3 + [True] * 4, [False] * 7, [False] + [True] * 6])
    assert torch.equal(batch[PADDING_MASK], expected_pad)
    assert torch.all(batch[GENES][expected_pad] == 0) and torch.all(batch[VALUES][expected_pad] == PAD_VALUE)
    for i, it in enumerate(items):
        n = len(it[GENES])
        assert batch[GENES][i, :n].tolist() == it[GENES].tolist()
        assert batch[VALUES][i, :n].tolist() == it[VALUES].tolist()
    assert not batch[MASK].any() and torch.equal(batch[VALUES], batch[TARGET_VALUES])
    assert batch[CELL_INDEX].tolist() == [10, 11, 12] and batch[LABELS].tolist() == [0, 1, 2]
    plain = Collator(pad_id=0)(_items([2, 2], extra=False))
    assert BATCH not in plain and LABELS not in plain and CELL_INDEX not in plain


def test_collator_max_len_pad_multiple_and_errors():
    batch = Collator(pad_id=0, max_len=4, pad_to_multiple=8)(_items([3, 7]))
    assert batch[GENES].shape == (2, 8)
    assert batch[PADDING_MASK].sum(1).tolist() == [5, 4]
    mixed = _items([2, 3])
    del mixed[0][LABELS]
    with pytest.raises(ValueError, match="labels"):
        Collator(pad_id=0)(mixed)


def test_collator_masking_deterministic():
    items = _items([20, 50, 5, 33])
    c1, c2 = Collator(0, mask_ratio=0.25, seed=3), Collator(0, mask_ratio=0.25, seed=3)
    first = [c1(items)[MASK] for _ in range(3)]
    assert all(torch.equal(a, c2(items)[MASK]) for a in first)  # same sequence of calls, same masks
    assert not torch.equal(first[0], first[1])  # the stream advances
    c1.reseed(3)
    assert torch.equal(c1(items)[MASK], first[0])
    batch = c1(items)
    mask, pad = batch[MASK], batch[PADDING_MASK]
    assert not mask[:, 0].any() and not (mask & pad).any()
    assert torch.all(batch[VALUES][mask] == MASK_VALUE)
    assert torch.all(batch[TARGET_VALUES][mask] != MASK_VALUE)
    assert torch.equal(batch[VALUES][~mask], batch[TARGET_VALUES][~mask])
    assert mask.sum(1).tolist() == [5, 13, 1, 8]  # ceil(0.25 * genes)
    other = Collator(0, mask_ratio=0.25, seed=4)(items)[MASK]
    assert not torch.equal(other, first[0])


def test_worker_init_fn_gives_distinct_streams():
    c = Collator(0, mask_ratio=0.5, seed=0)
    items = _items([40, 40])
    c.worker_init_fn(0)
    m0 = c(items)[MASK]
    c.worker_init_fn(1)
    m1 = c(items)[MASK]
    c.worker_init_fn(0)
    assert torch.equal(c(items)[MASK], m0) and not torch.equal(m0, m1)


def test_dataset_items_and_resample():
    cells = _cells([30, 5, 12], max_len=8)
    ds = TokenizedDataset(cells, batch=[0, 1, 0], labels=[2, 2, 1])
    item = ds[0]
    assert set(item) == {GENES, VALUES, CELL_INDEX, BATCH, LABELS}
    assert len(item[GENES]) == 8 and item[LABELS] == 2 and item[CELL_INDEX] == 0
    np.testing.assert_array_equal(ds[0][GENES], item[GENES])  # deterministic without resample
    rs = TokenizedDataset(cells, resample=True, seed=1)
    e0 = rs[0][GENES]
    np.testing.assert_array_equal(rs[0][GENES], e0)
    rs.set_epoch(1)
    assert not np.array_equal(rs[0][GENES], e0)
    with pytest.raises(ValueError):
        TokenizedDataset(cells, labels=[1, 2])
    loader = DataLoader(ds, batch_size=2, collate_fn=Collator(pad_id=0))
    batches = list(loader)
    assert batches[0][GENES].shape == (2, 8) and batches[1][GENES].shape == (1, 8)


def _padding_fraction(batches, lengths):
    padded = sum(len(b) * lengths[b].max() for b in batches)
    return 1 - lengths.sum() / padded


def test_sampler_covers_every_index_once_and_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(6.0, 0.8, 5000).astype(int), 2, 4000)
    sampler = LengthBucketSampler(lengths, batch_size=32, bucket_size_multiplier=50, seed=0)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = [np.array(b) for b in sampler]
        assert len(batches) == len(sampler) == 157
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(5000))
    random_batches = np.array_split(rng.permutation(5000), 157)
    bucketed = _padding_fraction(batches, lengths)
    assert bucketed < 0.25 * _padding_fraction(random_batches, lengths)
    sampler.set_epoch(0)
    e0 = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != e0


def test_sampler_no_shuffle_drop_last_and_replicas():
    lengths = np.array([5, 1, 4, 2, 3, 9, 7])
    fixed = LengthBucketSampler(lengths, batch_size=3, shuffle=False)
    assert list(fixed) == [[1, 3, 4], [2, 0, 6], [5]] and len(fixed) == 3
    dropped = LengthBucketSampler(lengths, batch_size=3, drop_last=True, seed=1)
    batches = list(dropped)
    assert len(batches) == len(dropped) == 2 and all(len(b) == 3 for b in batches)
    assert len(set(sum(batches, []))) == 6
    reps = [list(LengthBucketSampler(np.arange(100), 10, seed=2, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(r) == 3 for r in reps)
    flat = [i for r in reps for b in r for i in b]
    assert len(flat) == len(set(flat)) == 90


def test_token_budget_batches_cover_every_item_within_budget():
    from scmamba2.data.collate import token_budget_batches

    lengths = np.random.default_rng(0).lognormal(5, 1, 300).astype(int) + 1
    batches = token_budget_batches(lengths, max_tokens=2000, max_batch_size=16)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(300))
    for b in batches:
        longest = max(lengths[b])
        assert len(b) <= 16
        assert len(b) == 1 or len(b) * longest <= 2000
    assert any(len(b) == 1 and lengths[b[0]] > 2000 for b in batches)  # long items still get a batch
