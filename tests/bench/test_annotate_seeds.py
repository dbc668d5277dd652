"""benchmarks/annotate_seeds.py's bookkeeping: --keep runs only the missing splits, old rows are migrated, and the
summary groups the splits by how Kang's query donors were chosen (the annotation itself is faked)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "annotate_seeds.py"


@pytest.fixture
def seeds(monkeypatch):
    spec = importlib.util.spec_from_file_location("annotate_seeds_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = []

    def fake_run(name, seed, data_dir, kang_donors="heldout"):
        calls.append((name, seed, kang_donors))
        kang = name.startswith("kang")
        return {"dataset": name, "seed": seed, "mode": mod._mode(name, kang_donors),
                "query_donors": (["107", "1244", "1488"] if kang_donors == "heldout" else ["101", "107", "1015"])
                if kang else None, "scmamba2 macro-F1": 0.8 + seed / 100, "L1 macro-F1": 0.8,
                "scmamba2 accuracy": 0.9, "L1 accuracy": 0.9, "code_version": "test",
                "per-class F1": {"scmamba2": {"T": 0.9, "Mk": 0.1 * seed}, "L1": {"T": 0.8, "Mk": 0.3}}}

    monkeypatch.setattr(mod, "run", fake_run)
    return mod, calls


def _row(name, seed, diff, **extra):
    return {"dataset": name, "seed": seed, "query_donors": extra.pop("query_donors", None),
            "scmamba2 macro-F1": 0.8 + diff, "L1 macro-F1": 0.8, "scmamba2 accuracy": 0.9, "L1 accuracy": 0.9, **extra}


def test_keep_runs_only_missing_splits_and_migrates_old_rows(seeds, tmp_path):
    mod, calls = seeds
    old = [_row("pbmc3k_raw_labeled", 0, 0.01),  # before any mode: pbmc3k
           _row("kang_muscat_8donors", 1, 0.04, query_donors=["1016", "1039", "1256"]),  # before any mode: drawn
           _row("kang_muscat_8donors", 0, -0.03, query_donors=["107", "1244", "1488"],
                donors="107, 1244, 1488 (never seen in pretraining), cells redrawn")]  # the short-lived prose label
    (tmp_path / "annotate_seeds.json").write_text(json.dumps(old))
    argv = ["--keep", "--out", str(tmp_path), "--threads", "1", "--seeds", "0", "1", "--data-dir", str(tmp_path)]
    assert mod.main(argv) == 0
    # pbmc3k 0 and Kang held-out 0 were there; drawn Kang 1 is not a held-out split, so held-out 1 runs
    assert calls == [("pbmc3k_raw_labeled", 1, "heldout"), ("kang_muscat_8donors", 1, "heldout")]
    rows = json.loads((tmp_path / "annotate_seeds.json").read_text())
    assert sorted((r["dataset"][:4], r["mode"], r["seed"]) for r in rows) == [
        ("kang", "drawn", 1), ("kang", "heldout", 0), ("kang", "heldout", 1), ("pbmc", "-", 0), ("pbmc", "-", 1)]
    assert not any("donors" in r for r in rows) and not (tmp_path / "annotate_seeds.partial.json").exists()
    md = (tmp_path / "annotate_seeds.md").read_text()
    assert "drawn: 1016, 1039, 1256 (1016, 1039, 1256 seen in pretraining)" in md
    assert "fixed: 107, 1244, 1488 |" in md
    held = next(line for line in md.splitlines() if line.startswith("- kang") and "fixed to" in line)
    assert "-0.010 on average over 2 splits" in held and "ahead on 1." in held  # -0.03 and +0.01
    # per-class F1 over the rows that recorded it (the held-out Kang split run here, seed 1): largest gap first
    assert "- kang_muscat_8donors, heldout donors, mean F1 per cell type over 1 splits (scmamba2 vs L1): Mk 0.10 vs " \
           "0.30; T 0.90 vs 0.80." in md
    calls.clear()
    assert mod.main(argv) == 0 and calls == []  # nothing missing: the table is rebuilt
    assert "No split run in this sitting" in (tmp_path / "annotate_seeds.md").read_text()


def test_without_keep_the_json_is_replaced_at_the_end(seeds, tmp_path):
    mod, calls = seeds
    (tmp_path / "annotate_seeds.json").write_text(json.dumps([_row("pbmc3k_raw_labeled", 5, 0.0)]))
    mod.main(["--out", str(tmp_path), "--threads", "1", "--seeds", "2", "--datasets", "kang_muscat_8donors",
              "--kang-donors", "drawn", "--data-dir", str(tmp_path)])
    assert calls == [("kang_muscat_8donors", 2, "drawn")]
    rows = json.loads((tmp_path / "annotate_seeds.json").read_text())
    assert [(r["dataset"], r["mode"], r["seed"]) for r in rows] == [("kang_muscat_8donors", "drawn", 2)]
