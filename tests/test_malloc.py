"""The glibc allocator tuning is opt-out and idempotent."""

import scmamba2._malloc as m


def test_opt_out_and_idempotent(monkeypatch):
    monkeypatch.setattr(m, "_done", False)
    monkeypatch.setenv("SCMAMBA2_MALLOC_TUNING", "0")
    assert m.tune_cpu_allocator() is False
    monkeypatch.delenv("SCMAMBA2_MALLOC_TUNING")
    first = m.tune_cpu_allocator()
    assert m.tune_cpu_allocator() is first  # a second call changes nothing
