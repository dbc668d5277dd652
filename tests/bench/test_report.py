"""The combined report: markdown, JSON and a static HTML page that renders in headless Chromium."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from scmamba2.bench import BenchResult
from scmamba2.bench.report import TaskOutcome, build_report
from scmamba2.bench.result import Step

REPO = Path(__file__).resolve().parents[2]


def fake_outcomes(out: Path, elsewhere: Path, write_png) -> list[TaskOutcome]:
    ann = BenchResult("annotate", meta={"seed": 7})
    ann.tables["kNN accuracy"] = pd.DataFrame({"method": ["scmamba2", "PCA"], "accuracy": [0.812, 0.845]})
    ann.figures["UMAP of the query"] = write_png(out / "annotate_umap.png")
    ann.figures["confusion matrix"] = write_png(elsewhere / "confusion.png", rgb=(30, 30, 200))
    ann.notes.append("PCA wins on this small set <b>by 3 points</b>")
    ann.steps += [Step("fine-tune", 12.5, 20.1), Step("baseline", 1.0, 1.5)]
    per = BenchResult("perturb")
    per.tables["Pearson delta"] = pd.DataFrame({"method": ["scmamba2", "mean"], "pearson": [0.41, float("nan")]})
    per.figures["predicted vs true"] = write_png(out / "perturb_scatter.png", w=64, h=64, rgb=(20, 160, 60))
    return [TaskOutcome("annotate", "ok", ann, wall_s=14.0, cpu_s=22.0, datasets=["pbmc3k_raw_labeled"]),
            TaskOutcome("integrate", "failed", error="RuntimeError: out of memory", traceback="Traceback ...\nboom"),
            TaskOutcome("multiomics", "missing", error="no module scmamba2.bench.multiomics"),
            TaskOutcome("perturb", "ok", per, wall_s=3.0, cpu_s=4.0)]


@pytest.fixture
def report(tmp_path, make_png):
    out = tmp_path / "results"
    outs = fake_outcomes(out, tmp_path / "elsewhere", make_png)
    paths = build_report(outs, out, run={"command": "scmamba2 bench --seed 7", "seed": 7, "quick": True,
                                         "datasets": ["pbmc3k_raw_labeled"]})
    return out, paths, outs


def test_markdown_states_results_failures_and_machine(report):
    out, paths, _ = report
    md = paths["md"].read_text()
    for needle in ("0.812", "0.845", "RuntimeError: out of memory", "missing", "seed: 7", "cores", "torch",
                   "fine-tune", "PCA wins on this small set"):
        assert needle in md, needle
    links = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(links) == 3
    assert all((out / link).is_file() for link in links), links  # the outside figure was copied in


def test_json_has_every_number_and_figure(report):
    out, paths, outs = report
    data = json.loads(paths["json"].read_text())
    assert [t["status"] for t in data["tasks"]] == ["ok", "failed", "missing", "ok"]
    ann = data["tasks"][0]["result"]
    assert ann["tables"]["kNN accuracy"][1]["accuracy"] == 0.845
    fig = ann["figures"]["confusion matrix"]
    assert fig["sha256"] == hashlib.sha256((out / fig["path"]).read_bytes()).hexdigest()
    assert data["environment"]["versions"]["torch"] and data["run"]["seed"] == 7


def test_html_is_self_contained_and_escaped(report):
    _, paths, _ = report
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "<b>by 3 points</b>" not in page and "&lt;b&gt;by 3 points" in page
    assert "RuntimeError: out of memory" in page


def test_page_renders_in_chromium(report, browser, tmp_path):
    out, paths, _ = report
    shot = browser.screenshot(paths["html"], tmp_path / "report.png")
    assert shot.stat().st_size > 5_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    imgs = browser.images(paths["html"])
    assert len(imgs) == 3
    assert all(i["complete"] and i["width"] > 0 for i in imgs), imgs
    assert sorted(i["width"] for i in imgs) == [48, 48, 64]


def test_browser_check_catches_a_broken_image(report, browser):
    out, paths, _ = report
    broken = out / "broken.html"
    broken.write_text(paths["html"].read_text().replace("</body>", "<img src='no_such.png' alt='x'></body>"))
    imgs = browser.images(broken)
    assert [i["width"] > 0 for i in imgs] == [True, True, True, False]


def test_committed_report_renders(browser, tmp_path):
    page = REPO / "benchmarks" / "results" / "report.html"
    if not page.is_file():
        pytest.skip("no benchmarks/results/report.html yet (run `scmamba2 bench --out benchmarks/results`)")
    browser.screenshot(page, tmp_path / "committed.png")
    imgs = browser.images(page)
    assert all(i["complete"] and i["width"] > 0 for i in imgs), [i for i in imgs if not i["width"]]


@pytest.mark.slow
def test_bench_over_shared_data_renders(shared_data, browser, tmp_path):
    """The issue's end-to-end check: every task on the local sets (quick), one report, every figure loads."""
    from scmamba2.bench.runner import run_benchmarks

    outcomes, paths = run_benchmarks(datasets=["local"], out_dir=tmp_path / "results", quick=True,
                                     shared_dir=shared_data)
    assert paths["md"].is_file() and paths["html"].is_file()
    browser.screenshot(paths["html"], tmp_path / "report.png")
    imgs = browser.images(paths["html"])
    n_figures = sum(len(o.result.figures) for o in outcomes if o.result is not None)
    assert len(imgs) == n_figures and all(i["width"] > 0 for i in imgs)
