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
