"""Perturbation data: GEARS labels, splits by whole perturbation, pairs and their batches."""

import numpy as np
import pandas as pd
import pytest
import torch

from scmamba2._keys import GENES, MASK, PADDING_MASK, PERT_FLAGS, TARGET_VALUES, VALUES, MASK_VALUE
from scmamba2.data.perturb import (PairCollator, PairDataset, control_pools, pair_item, parse_condition,
                                   parse_perturbations, split_perturbations)
from scmamba2.errors import InputError


def _obs(labels):
    return pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))])


def test_parse_gears_labels_to_canonical_names():
    assert parse_condition("ctrl") == ()
    assert parse_condition("A+ctrl") == ("A",) == parse_condition("ctrl+A")
    assert parse_condition("B+A") == ("A", "B")
    lab = parse_perturbations(_obs(["ctrl", "A+ctrl", "ctrl+A", "B+A", "A+B"]), "condition")
    assert lab.names.tolist() == ["ctrl", "A", "A", "A+B", "A+B"]
    assert lab.perturbations == ["A", "A+B"] and lab.targets("A+B") == ("A", "B")
    named = parse_perturbations(_obs(["non-targeting", "STAT1", "JAK2"]), "condition", "non-targeting")
    assert named.is_control.tolist() == [True, False, False]
    drug = parse_perturbations(_obs(["dmso", "drug+x"]), "condition", "dmso", kind="condition")
    assert drug.perturbations == ["drug+x"] and drug.genes == {}


def test_parse_errors_name_the_fix():
    with pytest.raises(InputError, match="control"):
        parse_perturbations(_obs(["A", "B"]), "condition", "ctrl")
    with pytest.raises(InputError, match="not in obs"):
        parse_perturbations(_obs(["ctrl"]), "perturbation")
    with pytest.raises(InputError, match="missing"):
        parse_perturbations(_obs(["ctrl", None]), "condition")


def _labels():
    singles = [f"G{i}" for i in range(10)]
    combos = [f"G{i}+G{j}" for i in range(10) for j in range(i + 1, 10) if (i + j) % 3 == 0]
    return parse_perturbations(_obs(["ctrl"] + singles + combos), "condition")


def test_split_holds_out_whole_perturbations_and_their_genes():
    lab = _labels()
    split = split_perturbations(lab, test_fraction=0.3, val_fraction=0.1, seed=3)
    assert split.equals(split_perturbations(lab, test_fraction=0.3, val_fraction=0.1, seed=3))
    assert not split.equals(split_perturbations(lab, test_fraction=0.3, val_fraction=0.1, seed=4))
    train_genes = {g for p in split.index[split.split == "train"] for g in lab.targets(p)}
    unseen = [lab.targets(p)[0] for p in split.index[split.category == "unseen_single"]]
    assert unseen and not set(unseen) & train_genes  # a held-out gene never carries a flag in training
    for p, row in split.iterrows():
        if row.split != "train" and row.category.startswith("combo_seen"):
            assert int(row.category[-1]) == sum(g in train_genes for g in lab.targets(p))
    assert {c for c in split.category if c.startswith("combo")} >= {"combo_seen1"}


def test_split_with_explicit_holdout():
    lab = _labels()
    split = split_perturbations(lab, holdout=["G3", "G1+G2"])
    assert set(split.index[split.split == "test"]) >= {"G3", "G1+G2"}
    assert all(split.loc[p, "split"] == "test" for p in split.index if "G3" in lab.targets(p))
    with pytest.raises(InputError, match="not in obs"):
        split_perturbations(lab, holdout=["NOPE"])
    # combinations with 0, 1 and 2 of their genes seen in training
    split = split_perturbations(lab, holdout=["G3", "G6", "G3+G6", "G0+G3", "G1+G2"])
    assert split.loc["G3+G6", "category"] == "combo_seen0"
    assert split.loc["G0+G3", "category"] == "combo_seen1"
    assert split.loc["G1+G2", "category"] == "combo_seen2"


def test_pairs_flag_targets_and_mask_the_panel():
    rng = np.random.default_rng(0)
    X = rng.random((6, 5)).astype(np.float32)
    is_ctrl = np.array([True, True, True, False, False, False])
    tokens = [(np.zeros(0, np.int64),) * 2, (np.array([2]), np.zeros(0, np.int64)), (np.array([0]), np.array([11]))]
    ds = PairDataset(X, np.array([0, 0, 0, 1, 1, 2]), tokens, control_pools(is_ctrl), np.arange(4, 9), 1, seed=0)
    batch = PairCollator(pad_id=0)([ds[i] for i in range(6)])
    assert batch[GENES].shape == (6, 7) and batch[PADDING_MASK][:5, 6].all() and not batch[PADDING_MASK][5].any()
    assert batch[PERT_FLAGS][3].tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert batch[PERT_FLAGS][5].tolist() == [0, 1, 0, 0, 0, 0, 1] and batch[GENES][5, 6] == 11
    assert batch[VALUES][5, 6] == MASK_VALUE  # a target outside the panel is unmeasured
    assert batch[MASK][:, 1:6].all() and not batch[MASK][:, 0].any() and not batch[MASK][:, 6].any()
    assert torch.allclose(batch[TARGET_VALUES][3, 1:6], torch.from_numpy(X[3]))
    controls = [r for r in range(6) if any(np.allclose(batch[VALUES][i, 1:6].numpy(), X[r]) for i in range(6))]
    assert set(controls) <= {0, 1, 2}  # inputs are control cells only


def test_control_matching_stays_in_group():
    is_ctrl = np.array([True, True, False, False])
    pools = control_pools(is_ctrl, np.array(["a", "b", "a", "b"]))
    assert pools[2].tolist() == [0] and pools[3].tolist() == [1]
    with pytest.raises(InputError, match="no control"):
        control_pools(is_ctrl, np.array(["a", "a", "a", "c"]))


def test_pair_item_without_target():
    item = pair_item(np.ones(3, np.float32), np.array([5, 6, 7]), 1, flag_pos=np.array([1]),
                     extra_ids=np.zeros(0, np.int64))
    assert item[GENES].tolist() == [1, 5, 6, 7] and item[PERT_FLAGS].tolist() == [0, 0, 1, 0]


def test_anonymised_pairs_hide_the_target_identity():
    X = np.ones((4, 3), np.float32)
    tokens = [(np.zeros(0, np.int64),) * 2, (np.array([1]), np.array([9]))]
    pools = control_pools(np.array([True, True, False, False]))
    ds = PairDataset(X, np.array([0, 0, 1, 1]), tokens, pools, np.arange(4, 7), 1, anonymise=1.0, mask_id=3)
    item = ds[2]
    assert item[GENES].tolist() == [1, 4, 5, 6, 3, 3] and item[PERT_FLAGS].tolist() == [0, 0, 0, 0, 1, 1]
    assert ds[0][GENES].tolist() == [1, 4, 5, 6]  # controls stay as they are
