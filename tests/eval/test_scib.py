"""The scib-metrics Benchmarker wrapper: a mixed embedding scores better on batch correction than a shifted one."""

import numpy as np
import pandas as pd
import pytest

from scmamba2.errors import InputError
from scmamba2.eval.scib import AGGREGATES, scib_benchmark


def _adata(n=120):
    import anndata as ad

    rng = np.random.default_rng(0)
    lab, bat = rng.integers(0, 3, n), rng.integers(0, 2, n)
    good = rng.normal(0, 3, (3, 10))[lab] + rng.normal(0, 1, (n, 10))
    a = ad.AnnData(np.zeros((n, 5), np.float32),
                   obs=pd.DataFrame({"b": bat.astype(str), "l": lab.astype(str)}, index=[f"c{i}" for i in range(n)]))
    a.obsm["mixed"], a.obsm["shifted"] = good, good + 6.0 * bat[:, None]
    return a


def _check(df):
    assert list(df.index) == ["mixed", "shifted"] and list(df.columns[-3:]) == list(AGGREGATES)
    assert df.loc["mixed", "Batch correction"] > df.loc["shifted", "Batch correction"] + 0.2
    assert df.loc["mixed", "Total"] > df.loc["shifted", "Total"]
    np.testing.assert_allclose(df["Total"], 0.4 * df["Batch correction"] + 0.6 * df["Bio conservation"], rtol=1e-6)


def test_fast_metric_set():
    a = _adata()
    df = scib_benchmark(a, "b", "l", ["mixed", "shifted"], pre_integrated_key="shifted", metrics="fast")
    assert "iLISI" in df.columns and "KBET" not in df.columns
    _check(df)


@pytest.mark.slow
def test_full_metric_set():
    a = _adata()
    df = scib_benchmark(a, "b", "l", ["mixed", "shifted"], pre_integrated_key="shifted", metrics="full")
    assert "KBET" in df.columns and "Isolated labels" in df.columns
    _check(df)


def test_bad_keys():
    a = _adata()
    with pytest.raises(InputError, match="obsm has no"):
        scib_benchmark(a, "b", "l", ["nope"], pre_integrated_key="shifted")
    with pytest.raises(InputError, match="no column"):
        scib_benchmark(a, "batchx", "l", ["mixed"], pre_integrated_key="shifted")


def test_batch_metric_set_without_labels():
    a = _adata()
    df = scib_benchmark(a, "b", None, ["mixed", "shifted"], pre_integrated_key="shifted", metrics="batch")
    assert "Bio conservation" not in df.columns and "Total" not in df.columns and "iLISI" in df.columns
    assert df.loc["mixed", "Batch correction"] > df.loc["shifted", "Batch correction"] + 0.2
    with pytest.raises(InputError, match="metrics='batch'"):
        scib_benchmark(a, "b", None, ["mixed"], pre_integrated_key="shifted", metrics="fast")
