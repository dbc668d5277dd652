"""The pretrained models that ship in the package load, reproduce their recorded embeddings, and are the default
of ``embed`` side by side."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scmamba2 import embed
from scmamba2.pretrained import DEFAULT_EMBEDDING, DEFAULT_MODEL, PACKAGE_LIMIT_BYTES, available, load, model_path


def reference(name=DEFAULT_MODEL):
    return json.loads((model_path(name) / "reference_embedding.json").read_text())


def reference_cells(name=DEFAULT_MODEL):
    ref = reference(name)
    X = sp.csr_matrix(np.asarray(ref["counts"], dtype=np.float32))
    return ad.AnnData(X, var=pd.DataFrame(index=ref["genes"])), np.asarray(ref["embedding"], dtype=np.float32)


def default_embedding():
    """The default model's check cells and embed's default embedding of them: the default model's recorded
    embedding, then each other build's (checked against its own recorded cells below)."""
    cells, expected = reference_cells()
    parts = [expected]
    for name in DEFAULT_EMBEDDING[1:]:
        parts.append(embed(cells, name, progress=False, copy=True).obsm["X_scmamba2"])
    return cells, np.hstack(parts)


def test_the_bundled_models_ship_with_their_cards_within_the_size_limit():
    assert DEFAULT_EMBEDDING[0] == DEFAULT_MODEL and set(DEFAULT_EMBEDDING) <= set(available())
    for name in DEFAULT_EMBEDDING:
        path = model_path(name)
        for f in ("config.json", "model.safetensors", "vocab.json", "MODEL_CARD.md", "reference_embedding.json"):
            assert (path / f).is_file(), (name, f)
        card = (path / "MODEL_CARD.md").read_text()
        assert "scripts/build_pretrained.py" in card and f"--name {name}" in card and "Zero-shot scores" in card
    vocabs = {(model_path(name) / "vocab.json").read_text() for name in DEFAULT_EMBEDDING}
    assert len(vocabs) == 1  # one vocabulary: validate's overlap note for the default model holds for every build
    size = sum(p.stat().st_size for p in model_path().parent.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert size <= PACKAGE_LIMIT_BYTES, f"the bundled models take {size / 2**20:.1f} MB: the package allows 10 MB"


@pytest.mark.parametrize("name", DEFAULT_EMBEDDING)
def test_each_build_loads_in_float32_and_reproduces_its_recorded_embedding(name):
    model = load(name)
    import torch

    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16 on disk, float32 in memory
    a, expected = reference_cells(name)
    embed(a, model, progress=False)
    np.testing.assert_allclose(a.obsm["X_scmamba2"], expected, rtol=1e-3, atol=1e-4)
    a, _ = reference_cells(name)
    embed(a, name, progress=False)  # a bundled model's name means that build alone
    np.testing.assert_allclose(a.obsm["X_scmamba2"], expected, rtol=1e-3, atol=1e-4)


def test_the_builds_differ():
    _, both = default_embedding()
    d = both.shape[1] // len(DEFAULT_EMBEDDING)
    assert np.abs(both[:, :d] - both[:, d:2 * d]).max() > 0.1  # two seeds, not one model twice


@pytest.mark.parametrize("model", [None, "bundled"])
def test_embed_without_a_model_puts_the_bundled_builds_side_by_side(model):
    a, expected = default_embedding()
    embed(a, model, progress=False)
    np.testing.assert_allclose(a.obsm["X_scmamba2"], expected, rtol=1e-3, atol=1e-4)
    info = a.uns["scmamba2"]["X_scmamba2"]
    assert list(info["members"]) == list(DEFAULT_EMBEDDING) and sum(info["member_dims"]) == expected.shape[1]


def test_bundled_inside_a_list_means_both_builds():
    a, expected = default_embedding()
    model = load()
    embed(a, ["bundled", model], progress=False)
    d = expected.shape[1] // 2
    np.testing.assert_allclose(a.obsm["X_scmamba2"], np.hstack([expected, expected[:, :d]]), rtol=1e-3, atol=1e-4)


def test_a_list_of_models_is_their_embeddings_side_by_side_in_its_order():
    a, expected = default_embedding()
    d = expected.shape[1] // 2
    embed(a, [model_path(n) for n in reversed(DEFAULT_EMBEDDING)], progress=False)
    np.testing.assert_allclose(a.obsm["X_scmamba2"], np.hstack([expected[:, d:], expected[:, :d]]),
                               rtol=1e-3, atol=1e-4)


def test_cli_embed_without_model(tmp_path):
    from typer.testing import CliRunner

    from scmamba2.cli import app

    a, expected = default_embedding()
    a.write_h5ad(tmp_path / "cells.h5ad")
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / "e.h5ad")])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "e.h5ad").obsm["X_scmamba2"], expected, rtol=1e-3, atol=1e-4)


def test_cli_embed_with_repeated_model_options(tmp_path):
    from typer.testing import CliRunner

    from scmamba2.cli import app

    a, expected = default_embedding()
    d = expected.shape[1] // 2
    a.write_h5ad(tmp_path / "cells.h5ad")
    args = ["embed", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / "e.h5ad"),
            "--model", DEFAULT_EMBEDDING[1], "--model", str(model_path())]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "e.h5ad").obsm["X_scmamba2"],
                               np.hstack([expected[:, d:], expected[:, :d]]), rtol=1e-3, atol=1e-4)


def test_a_missing_bundled_model_is_a_clear_error():
    from scmamba2.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no bundled model"):
        model_path("no-such-model")


def test_an_empty_list_of_models_is_a_clear_error():
    from scmamba2.errors import InputError

    a, _ = reference_cells()
    with pytest.raises(InputError, match="names no model"):
        embed(a, [], progress=False)
