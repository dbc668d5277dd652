"""The YAML run configuration keeps pretraining's default objective unless it says otherwise."""

import pytest

from scmamba2.train.config import load_run_config


def _load(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return load_run_config(p)


def test_absent_sections_are_none(tmp_path):
    run = _load(tmp_path, "model: {d_model: 32, n_layers: 1}\n")
    assert run["tokenizer"] is None and run["train"] is None  # each command's own defaults


@pytest.mark.parametrize(
    "text, value_mode, weights",
    [
        ("tokenizer: {max_len: 128}\ntrain: {lr: 0.003}\n", "continuous", (0.0, 0.0)),
        ("tokenizer: {n_bins: 21}\ntrain: {lr: 0.003}\n", "binned", (1.0, 1.0)),  # n_bins: binned values
        ("train: {lr: 0.003}\n", None, (0.0, 0.0)),
        ("tokenizer: {value_mode: binned}\ntrain: {lr: 0.003}\n", "binned", (1.0, 1.0)),
        ("model: {profile_genes: 0}\ntrain: {lr: 0.003}\n", None, (1.0, 1.0)),
        ("train: {gep_weight: 0.5}\n", None, (0.5, 0.0)),
    ],
)
def test_objective_defaults(tmp_path, text, value_mode, weights):
    run = _load(tmp_path, text)
    assert (None if run["tokenizer"] is None else run["tokenizer"].value_mode) == value_mode
    assert (run["train"].gep_weight, run["train"].mvc_weight) == weights
    assert run["train"].lr == 0.003 or "gep_weight: 0.5" in text  # the section's own settings are kept
