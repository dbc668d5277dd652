"""The pretrained model that ships in the package loads, reproduces its recorded embedding, and is the default
of ``embed``."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scmamba2 import embed
from scmamba2.pretrained import DEFAULT_MODEL, available, load, model_path


def reference():
    return json.loads((model_path() / "reference_embedding.json").read_text())


def reference_cells():
    ref = reference()
    X = sp.csr_matrix(np.asarray(ref["counts"], dtype=np.float32))
    return ad.AnnData(X, var=pd.DataFrame(index=ref["genes"])), np.asarray(ref["embedding"], dtype=np.float32)


def test_the_default_model_ships_with_its_card():
    assert DEFAULT_MODEL in available()
    path = model_path()
    for f in ("config.json", "model.safetensors", "vocab.json", "MODEL_CARD.md", "reference_embedding.json"):
        assert (path / f).is_file(), f
    size = sum(p.stat().st_size for p in path.iterdir())
    assert size <= 10 * 2**20, f"the bundled model is {size / 2**20:.1f} MB: the package allows 10 MB"
    card = (path / "MODEL_CARD.md").read_text()
    assert "scripts/build_pretrained.py" in card and "Zero-shot scores" in card


def test_loads_in_float32_and_reproduces_the_recorded_embedding():
    model = load()
    import torch

    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16 on disk, float32 in memory
    a, expected = reference_cells()
    embed(a, model, progress=False)
    np.testing.assert_allclose(a.obsm["X_scmamba2"], expected, rtol=1e-3, atol=1e-4)


def test_embed_without_a_model_uses_the_bundled_one():
    a, expected = reference_cells()
    embed(a, progress=False)
    np.testing.assert_allclose(a.obsm["X_scmamba2"], expected, rtol=1e-3, atol=1e-4)


def test_cli_embed_without_model(tmp_path):
    from typer.testing import CliRunner

    from scmamba2.cli import app

    a, expected = reference_cells()
    a.write_h5ad(tmp_path / "cells.h5ad")
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / "e.h5ad")])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "e.h5ad").obsm["X_scmamba2"], expected, rtol=1e-3, atol=1e-4)


def test_a_missing_bundled_model_is_a_clear_error():
    from scmamba2.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no bundled model"):
        model_path("no-such-model")
