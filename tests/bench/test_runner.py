"""`scmamba2 bench`: tasks found through the registry, arguments by signature, failures reported, run goes on."""

import hashlib
import json
import sys
import types

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scmamba2.bench import BenchResult, runner
from scmamba2.cli import app


@pytest.fixture
def folder(tmp_path):
    """A local data folder with one tiny dataset and its manifest."""
    root = tmp_path / "shared"
    root.mkdir()
    a = ad.AnnData(X=np.ones((6, 3), dtype=np.float32), obs=pd.DataFrame({"cell_type": list("aabbcc")},
                   index=[f"c{i}" for i in range(6)]))
    a.write_h5ad(root / "mini.h5ad")
    entry = {"file": "mini.h5ad", "title": "mini", "task": "annotation", "licence": ["MIT"], "sources": ["test"],
             "sha256": hashlib.sha256((root / "mini.h5ad").read_bytes()).hexdigest(), "n_obs": 6, "n_vars": 3,
             "obs_columns": {"cell_type": {}}}
    (root / "manifest.json").write_text(json.dumps({"files": [entry]}))
    return root


@pytest.fixture
def fake_tasks(monkeypatch):
    """Four task modules: one that works, one that raises, one that wants other data, one that does not exist."""
    seen = {}

    def good_run(data_dir, out_dir, *, seed=0, quick=False):
        seen.update(data_dir=data_dir, files=sorted(p.name for p in data_dir.iterdir()), seed=seed, quick=quick)
        res = BenchResult("good")
        with res.step("work"):
            res.tables["scores"] = pd.DataFrame({"method": ["scmamba2", "baseline"], "score": [0.5, 0.6]})
        return res

    def bad_run(adatas, seed=0):
        seen["adatas"] = {k: a.shape for k, a in adatas.items()}
        raise RuntimeError("boom in bad")

    mods = {"fake_good": good_run, "fake_bad": bad_run, "fake_other": good_run}
    for name, fn in mods.items():
        m = types.ModuleType(name)
        m.run = fn
        monkeypatch.setitem(sys.modules, name, m)
    sys.modules["fake_other"].DATASETS = ["some_other_set"]
    monkeypatch.setattr(runner, "TASKS", {"good": ("fake_good",), "bad": ("fake_bad",), "other": ("fake_other",),
                                          "absent": ("fake_absent_module",)})
    return seen


def test_failures_are_reported_and_the_run_goes_on(fake_tasks, folder, tmp_path):
    outcomes, paths = runner.run_benchmarks(["bad", "absent", "other", "good"], datasets=["local"],
                                            out_dir=tmp_path / "out", seed=3, quick=True, shared_dir=folder)
    assert [o.status for o in outcomes] == ["failed", "missing", "skipped", "ok"]
    assert "boom in bad" in outcomes[0].error and "RuntimeError" in outcomes[0].traceback
    assert fake_tasks["seed"] == 3 and fake_tasks["quick"] is True and fake_tasks["adatas"] == {"mini": (6, 3)}
    assert fake_tasks["files"] == ["mini.h5ad"]  # the task saw a folder holding the chosen dataset
    # a quick run never writes under the full results' names (the default --out holds the committed ones)
    assert (tmp_path / "out" / "good_quick.md").is_file() and not (tmp_path / "out" / "good.md").exists()
    assert paths["md"].name == "report_quick.md" and not (tmp_path / "out" / "report.md").exists()
    md = paths["md"].read_text()
    assert "boom in bad" in md and "fake_absent_module" in md and "some_other_set" in md and "0.600" in md


def test_cli_bench(fake_tasks, folder, tmp_path):
    cli = CliRunner()
    args = ["bench", "good", "bad", "--data", "mini", "--shared-dir", str(folder), "--out", str(tmp_path / "o")]
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "report.html").is_file() and "report:" in res.output
    assert cli.invoke(app, args + ["--strict"]).exit_code == 1
    res = cli.invoke(app, ["bench", "dance", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "unknown task" in res.output and "Traceback" not in res.output


def test_collect_builds_the_report_from_written_results(tmp_path, make_png):
    out = tmp_path / "results"
    res = BenchResult("perturb", tables={"t": pd.DataFrame({"method": ["ours", "mean"], "r": [0.5, 0.25]})},
                      figures={"a plot": make_png(out / "perturb_plot.png")}, notes=["we lose on x"])
    with res.step("fit"):
        pass
    res.write(out)
    assert json.loads((out / "perturb.json").read_text())["figures"]["a plot"] == "perturb_plot.png"
    result = CliRunner().invoke(app, ["bench", "perturb", "annotate", "--collect", "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "we lose on x" in md and "| ours | 0.500 |" in md and "perturb_plot.png" in md
    assert "no annotate.json" in md  # a task without results is reported missing, not dropped
    back = BenchResult.from_json(json.loads((out / "perturb.json").read_text()), out)
    assert back.figures["a plot"] == out / "perturb_plot.png" and back.tables["t"].equals(res.tables["t"])


def test_benchmark_script_names_a_missing_benchmark_dependency(tmp_path, monkeypatch):
    from scmamba2.bench import script

    def run(data_dir, out_dir, *, seed=0, quick=False):
        import scvi_not_installed  # noqa: F401

    monkeypatch.setitem(sys.modules, "scmamba2.bench.toy", types.SimpleNamespace(run=run))
    with pytest.raises(SystemExit, match=r"needs the package 'scvi_not_installed'.*\[bench\]"):
        script.main("toy", "Toy benchmark.", argv=["--out", str(tmp_path)])


def test_benchmark_script_main_writes_the_task_results(tmp_path, monkeypatch):
    from scmamba2.bench import script

    calls = {}

    def run(data_dir, out_dir, *, seed=0, quick=False):
        calls.update(data_dir=data_dir, seed=seed, quick=quick)
        res = BenchResult("toy", meta={"quick": quick})
        res.tables["t"] = pd.DataFrame({"method": ["ours"], "score": [1.0]})
        return res

    monkeypatch.setitem(sys.modules, "scmamba2.bench.toy", types.SimpleNamespace(run=run))
    md = script.main("toy", "Toy benchmark.\n\nmore", argv=["--out", str(tmp_path), "--seed", "3", "--quick",
                                                            "--data-dir", str(tmp_path / "d")])
    assert md == tmp_path / "toy_quick.md" and (tmp_path / "toy_quick.json").is_file()
    assert calls == {"data_dir": tmp_path / "d", "seed": 3, "quick": True}
    text = md.read_text()
    assert "Regenerate: `.venv/bin/python benchmarks/toy.py --quick`" in text and "| ours | 1.000 |" in text
    meta = json.loads((tmp_path / "toy_quick.json").read_text())["meta"]
    from scmamba2.bench.report import code_version

    assert meta["wall_minutes"] >= 0 and meta["code_version"] == code_version()  # the commit the figures came from


def test_public_sets_reach_only_the_tasks_that_read_them(tmp_path, monkeypatch):
    import scmamba2.datasets as ds
    from scmamba2.datasets import DatasetRecord, RemoteFile, registry

    recs = tuple(DatasetRecord(n, n, (t,), "MIT", "https://example.org", files=(RemoteFile("https://x/y", "y"),),
                               obs_keys={"cell_type": ("ct",)}) for n, t in (("pub_ann", "annotate"),
                                                                              ("pub_pert", "perturb")))
    monkeypatch.setattr(registry, "PUBLIC", recs)
    fetched = []

    def fake_get(name, **kw):
        fetched.append(name)
        p = tmp_path / "cache" / name / f"{name}.h5ad"
        p.parent.mkdir(parents=True)
        ad.AnnData(X=np.ones((4, 2), dtype=np.float32)).write_h5ad(p)
        return p

    monkeypatch.setattr(ds, "get", fake_get)
    seen = {}

    def run(data_dir, datasets, out_dir):
        seen["datasets"] = sorted(datasets)
        seen["files"] = sorted(p.name for p in data_dir.iterdir())
        return BenchResult("acc")

    acc, local_only = types.ModuleType("fake_acc"), types.ModuleType("fake_local_only")
    acc.run, acc.DATASETS, acc.accepts = run, ["a_local_set"], lambda r: "annotate" in r.tasks
    local_only.run, local_only.DATASETS = run, ["a_local_set"]
    monkeypatch.setitem(sys.modules, "fake_acc", acc)
    monkeypatch.setitem(sys.modules, "fake_local_only", local_only)
    monkeypatch.setattr(runner, "TASKS", {"acc": ("fake_acc",), "local_only": ("fake_local_only",)})
    outcomes, _ = runner.run_benchmarks(["acc", "local_only"], datasets=["pub_ann", "pub_pert"],
                                        out_dir=tmp_path / "out", shared_dir=tmp_path / "none")
    assert fetched == ["pub_ann"]  # no task reads pub_pert: never downloaded
    assert seen == {"datasets": ["pub_ann"], "files": ["pub_ann.h5ad"]}
    assert [o.status for o in outcomes] == ["ok", "skipped"] and "a_local_set" in outcomes[1].error


def test_annotate_split_of_a_public_set(monkeypatch, tmp_path):
    from scmamba2.bench import annotate

    s = {"n_query_donors": 1, "max_query_cells": None, "max_reference_cells": None}
    obs = pd.DataFrame({"cell_type": ["a"] * 10 + ["b"] * 10 + ["lonely"]}, index=[f"c{i}" for i in range(21)])
    a = ad.AnnData(X=np.ones((21, 3), dtype=np.float32), obs=obs)
    a.write_h5ad(tmp_path / "p.h5ad")
    ref, query, split = annotate._split(tmp_path / "p.h5ad", "p", 0, s)
    assert split["split"].startswith("stratified") and split["n_unlabeled_left_out"] == 1
    assert (ref.n_obs, query.n_obs) == (14, 6) and set(query.obs["cell_type"]) == {"a", "b"}
    a.obs["split"] = ["reference"] * 15 + ["query"] * 6
    a.write_h5ad(tmp_path / "p.h5ad")
    ref, query, split = annotate._split(tmp_path / "p.h5ad", "p", 0, s)
    assert split["split"] == "the dataset's own reference / query" and (ref.n_obs, query.n_obs) == (15, 6)


def test_annotate_split_with_fixed_query_donors(tmp_path):
    from scmamba2.bench import annotate

    donors = [f"d{i}" for i in range(6)]
    obs = pd.DataFrame({"cell_type": ["a", "b"] * 30, "donor": np.repeat(donors, 10),
                        "barcode": [f"b{i}" for i in range(60)], "condition": "ctrl"}, index=[f"c{i}" for i in range(60)])
    ad.AnnData(X=np.ones((60, 3), dtype=np.float32), obs=obs).write_h5ad(tmp_path / "kang_x.h5ad")
    s = {"n_query_donors": 2, "max_query_cells": 15, "max_reference_cells": 25}
    drawn = annotate._split(tmp_path / "kang_x.h5ad", "kang_x", 3, s)
    fixed = annotate._split(tmp_path / "kang_x.h5ad", "kang_x", 3, dict(s, query_donors=drawn[2]["query_donors"]))
    # the donors the seed draws, given as fixed: the very same cells
    assert list(fixed[0].obs_names) == list(drawn[0].obs_names) and list(fixed[1].obs_names) == list(drawn[1].obs_names)
    other = sorted(set(donors) - set(drawn[2]["query_donors"]))[:2]
    ref, query, split = annotate._split(tmp_path / "kang_x.h5ad", "kang_x", 3, dict(s, query_donors=other))
    assert split["query_donors"] == other and set(query.obs["donor"]) == set(other)
    assert not set(ref.obs["donor"]) & set(other) and (ref.n_obs, query.n_obs) == (25, 15)
    with pytest.raises(ValueError, match="not in the data"):
        annotate._split(tmp_path / "kang_x.h5ad", "kang_x", 3, dict(s, query_donors=["nobody"]))
    with pytest.raises(ValueError, match="a list of donors"):
        annotate._split(tmp_path / "kang_x.h5ad", "kang_x", 3, dict(s, query_donors="d0"))


def test_a_result_made_by_another_command_names_that_command():
    res = BenchResult("readout", meta={"command": ".venv/bin/python benchmarks/bundled_ablation.py --build"})
    text = res.to_markdown()
    assert "Regenerate: `.venv/bin/python benchmarks/bundled_ablation.py --build`" in text
    assert "benchmarks/readout.py" not in text


def test_bench_help_names_every_task():
    from scmamba2.bench.runner import TASKS

    text = " ".join(CliRunner().invoke(app, ["bench", "--help"], terminal_width=400).output.split())
    assert all(task in text for task in TASKS), text
