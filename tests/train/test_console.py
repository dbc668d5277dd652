"""What training shows: a step-bounded progress bar without "Epoch 0/-2", and the first step's time estimate."""

import logging
from types import SimpleNamespace

from scmamba2.train._lightning_parts import StepProgressBar
from scmamba2.train.throughput import LONG_RUN_S, Throughput


def test_progress_bar_names_the_step_budget_not_a_negative_epoch():
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=1000)
    bar.__dict__["trainer"] = bar._trainer
    text = bar._get_train_description(0)
    assert text.strip() == "Epoch 0 (1000 steps)" and "-" not in text


def test_first_step_estimate_warns_when_the_run_is_long(caplog):
    trainer = SimpleNamespace(max_steps=1000, global_step=1, accumulate_grad_batches=1)
    with caplog.at_level(logging.INFO, logger="scmamba2.train.throughput"):
        Throughput()._estimate(0.5, trainer)  # 999 x 0.5 s: 8 min
    assert [r.levelname for r in caplog.records] == ["INFO"] and "8 min" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scmamba2.train.throughput"):
        Throughput()._estimate(2 * LONG_RUN_S / 999, trainer)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "2.0 h" in caplog.text
