"""make_trainer's bf16 check (a warning where bfloat16 would only be emulated, none where the CPU has it), and fit's
handling of SIGTERM."""

import logging

import pytest

from scmamba2.train import trainer
from scmamba2.train.config import TrainConfig


@pytest.mark.parametrize(("precision", "has_bf16", "warned"), [
    ("bf16-mixed", False, True),
    ("16-mixed", False, True),  # Lightning runs it as bfloat16 on a CPU
    ("bf16-mixed", True, False),
    ("32-true", False, False),
])
def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch, caplog, precision, has_bf16, warned):
    monkeypatch.setattr(trainer, "_cpu_has_bf16", lambda: has_bf16)
    with caplog.at_level(logging.WARNING, logger=trainer.__name__):
        trainer.make_trainer(TrainConfig(max_steps=1, precision=precision, accelerator="cpu", progress_bar=False))
    assert any("without bfloat16 instructions" in r.getMessage() for r in caplog.records) == warned


def test_cpu_flags_decide(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    real_path = trainer.Path
    monkeypatch.setattr(trainer, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    cpuinfo.write_text("flags\t\t: fpu sse avx512f avx512bw avx512_bf16\n")
    assert trainer._cpu_has_bf16()
    cpuinfo.write_text("flags\t\t: fpu sse avx512f avx512bw avx512vl\n")  # AVX512 without BF16: emulated only
    assert not trainer._cpu_has_bf16()


def test_sigterm_ends_training_with_status_143_and_says_how_to_resume(caplog):
    """Lightning stops on SIGTERM with an exception that exits with status 0 (a scheduler would read success)."""
    import logging

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from scmamba2.train.trainer import fit

    class Stopped:
        global_step = 7

        def fit(self, plan, **kwargs):
            raise SIGTERMException

    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stop:
        fit(Stopped(), None, resume_hint="continue with --resume")
    assert stop.value.code == 143
    assert "SIGTERM at step 7; continue with --resume" in caplog.text and isinstance(stop.value, SIGTERMException)


def test_training_shows_no_lightning_advert_nor_a_missing_validation_note(caplog, recwarn):
    """Lightning's litlogger tip and its note that a run without held-out cells skips validation are not the
    user's concern; its other messages stay."""
    import anndata as ad
    import numpy as np

    from scmamba2 import TokenizerConfig, pretrain

    X = np.random.default_rng(0).poisson(2.0, (24, 12)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        pretrain(ad.AnnData(X), model_config=dict(d_model=32, n_layers=1, d_state=16, headdim=16, chunk_size=8),
                 tokenizer_config=TokenizerConfig(n_bins=11, max_len=16),
                 train_config=TrainConfig(max_steps=1, batch_size=8, val_fraction=0.0, progress_bar=False))
    assert "litlogger" not in caplog.text
    assert "`max_steps=1` reached" in caplog.text  # Lightning's other lines are kept
    assert not [w for w in recwarn if "val_dataloader" in str(w.message)]
