"""embed(): obsm written, batch size and cell order never change an embedding, bad genes are an error."""

import numpy as np
import pytest
import torch

from scmamba2 import InputError, ModelConfig, ScMamba2, TokenizerConfig, embed
from scmamba2.data.vocab import GeneVocab


@pytest.fixture
def model(tiny_counts):
    torch.manual_seed(0)
    vocab = GeneVocab(list(tiny_counts.var_names))
    cfg = ModelConfig(vocab_size=len(vocab), d_model=32, n_layers=2, d_state=16, headdim=16, chunk_size=8,
                      n_bins=11, dropout=0.0, max_len=24)
    return ScMamba2(cfg, vocab=vocab, tokenizer_config=TokenizerConfig(n_bins=11, max_len=24)).eval()


def test_embed_writes_obsm_and_is_order_invariant(tiny_counts, model):
    a = tiny_counts.copy()
    embed(a, model, batch_size=64, progress=False)
    X = a.obsm["X_scmamba2"]
    assert X.shape == (a.n_obs, 32) and np.isfinite(X).all()
    assert "X_scmamba2" in a.uns["scmamba2"]
    # Different batch size and reversed cell order: the same embedding for every cell.
    b = tiny_counts[::-1].copy()
    embed(b, model, batch_size=5, progress=False)
    np.testing.assert_allclose(b.obsm["X_scmamba2"][::-1], X, atol=1e-5)
    # Cells differ from each other (the embedding is not constant).
    assert np.std(X, axis=0).mean() > 1e-3


def test_embed_copy_and_all_genes(tiny_counts, model):
    out = embed(tiny_counts, model, copy=True, all_genes=True, key_added="X_all", progress=False)
    assert "X_all" in out.obsm and "X_all" not in tiny_counts.obsm
    default = embed(tiny_counts, model, copy=True, progress=False).obsm["X_scmamba2"]
    assert not np.allclose(out.obsm["X_all"], default)  # zeros are read too


def test_embed_backed_anndata(tiny_counts, model, tmp_path):
    import anndata as ad

    tiny_counts.write_h5ad(tmp_path / "c.h5ad")
    backed = ad.read_h5ad(tmp_path / "c.h5ad", backed="r")
    with pytest.raises(InputError, match="to_memory"):  # anndata's own ValueError before
        embed(backed, model, copy=True, progress=False)
    embed(backed, model, progress=False)  # written into the object, as for one in memory
    ref = embed(tiny_counts, model, copy=True, progress=False)
    np.testing.assert_allclose(backed.obsm["X_scmamba2"], ref.obsm["X_scmamba2"], atol=1e-5)


def test_embed_rejects_unknown_genes(tiny_counts, model):
    other = tiny_counts.copy()
    other.var_names = [f"OTHER{i}" for i in range(other.n_vars)]
    with pytest.raises(InputError, match="OTHER"):
        embed(other, model, progress=False)


def test_embed_from_checkpoint_dir(tiny_counts, model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    a = embed(tiny_counts, model, copy=True, progress=False).obsm["X_scmamba2"]
    b = embed(tiny_counts, tmp_path / "m", copy=True, progress=False).obsm["X_scmamba2"]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_misspelt_bundled_name_lists_the_bundled_models(tiny_counts, tmp_path, monkeypatch):
    from scmamba2.errors import CheckpointError
    from scmamba2.pretrained import available

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="no such folder and no bundled model") as e:
        embed(tiny_counts, "scmamba2-pbmc-smal", progress=False)
    assert "did you mean 'scmamba2-pbmc-small'" in str(e.value) and all(n in str(e.value) for n in available())
    with pytest.raises(CheckpointError, match="no such folder; give the path of a checkpoint"):
        embed(tiny_counts, tmp_path / "nope", progress=False)  # a path: not taken for a bundled name
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a complete scmamba2 checkpoint: missing config.json"):
        embed(tiny_counts, tmp_path / "empty", progress=False)


def test_embed_follows_the_models_cell_pooling(tiny_counts, model):
    """A mean-pooling model's embedding is the mean of its valid encoder outputs, not the <cls> output, and
    still does not depend on the batch size."""
    from dataclasses import replace

    from scmamba2.data.collate import Collator, TokenizedDataset
    from scmamba2.data.prepare import prepare_cells

    mean_model = ScMamba2(replace(model.config, cell_pooling="mean"), vocab=model.vocab,
                          tokenizer_config=model.tokenizer_config)
    mean_model.load_state_dict(model.state_dict())
    mean_model.eval()
    a = embed(tiny_counts, mean_model, copy=True, batch_size=64, progress=False).obsm["X_scmamba2"]
    b = embed(tiny_counts, mean_model, copy=True, batch_size=3, progress=False).obsm["X_scmamba2"]
    np.testing.assert_allclose(a, b, atol=1e-5)
    cls_model = ScMamba2(replace(model.config, cell_pooling="cls"), vocab=model.vocab,
                         tokenizer_config=model.tokenizer_config)
    cls_model.load_state_dict(model.state_dict())
    cls = embed(tiny_counts, cls_model.eval(), copy=True, progress=False).obsm["X_scmamba2"]
    assert not np.allclose(a, cls, atol=1e-3)
    # Reference for cell 0, alone and unpadded: the mean over all of its positions.
    whole = replace(model.tokenizer_config, max_len=len(model.vocab) + 1)  # embed reads the whole cell
    cells = prepare_cells(tiny_counts[:1].copy(), model.vocab, whole, purpose="embed").cells
    one = Collator(pad_id=model.vocab.pad_id)([TokenizedDataset(cells)[0]])
    with torch.no_grad():
        states = mean_model.encode(one["genes"], one["values"], one["padding_mask"])
    np.testing.assert_allclose(a[0], states[0].mean(0).numpy(), atol=1e-5)


def test_embed_reads_the_whole_cell_by_default(tiny_counts, model):
    """Default: every expressed gene, whatever the model's training length; max_len subsamples (seeded)."""
    longest = int((np.asarray(tiny_counts.X.todense() if hasattr(tiny_counts.X, "todense") else tiny_counts.X) > 0)
                  .sum(1).max())
    assert longest + 1 > model.tokenizer_config.max_len  # the fixture has cells longer than the training length
    whole = embed(tiny_counts, model, copy=True, progress=False).obsm["X_scmamba2"]
    long_enough = embed(tiny_counts, model, copy=True, max_len=longest + 1, progress=False).obsm["X_scmamba2"]
    np.testing.assert_allclose(whole, long_enough, atol=1e-6)
    short = embed(tiny_counts, model, copy=True, max_len=6, progress=False).obsm["X_scmamba2"]
    assert not np.allclose(short, whole, atol=1e-3)
    again = embed(tiny_counts, model, copy=True, max_len=6, batch_size=4, progress=False).obsm["X_scmamba2"]
    np.testing.assert_allclose(short, again, atol=1e-5)


def test_profile_readout_keeps_the_decoders_distances(tiny_counts, model):
    """readout='profile' (the default with a linear profile decoder): distances between embedded cells equal the
    distances between the profiles the decoder predicts from the raw embeddings."""
    from scipy.spatial.distance import pdist

    torch.manual_seed(1)
    cfg = replace_config(model.config, profile_genes=12, cell_pooling="mean")
    m = ScMamba2(cfg, vocab=model.vocab, tokenizer_config=model.tokenizer_config).eval()
    prof = embed(tiny_counts, m, copy=True, progress=False)
    raw = embed(tiny_counts, m, copy=True, readout="raw", progress=False).obsm["X_scmamba2"]
    assert prof.uns["scmamba2"]["X_scmamba2"]["readout"] == "profile"
    with torch.no_grad():
        decoded = m.profile_head(torch.as_tensor(raw)).numpy()
    np.testing.assert_allclose(pdist(prof.obsm["X_scmamba2"]), pdist(decoded), rtol=1e-4, atol=1e-5)
    assert not np.allclose(pdist(raw), pdist(decoded), rtol=1e-2)
    with pytest.raises(InputError, match="readout"):
        embed(tiny_counts, model, copy=True, readout="profile", progress=False)  # no profile decoder


def replace_config(cfg, **kw):
    from dataclasses import replace

    return replace(cfg, **kw)


def test_a_panel_input_model_reads_only_its_panel_genes(tiny_counts, model):
    """``input_genes="panel"``: the encoder reads only the profile panel's genes, so shuffling the counts among
    the other genes (each cell's total, which normalises every value, unchanged) leaves the embedding as it is;
    the same weights reading every gene do see the change."""
    from dataclasses import replace

    panel = np.arange(4, 4 + tiny_counts.n_vars // 2)  # vocabulary ids of the first half of the genes
    models = {}
    for reads in ("panel", "all"):
        m = ScMamba2(replace(model.config, value_mode="continuous", profile_genes=len(panel), input_genes=reads),
                     vocab=model.vocab, tokenizer_config=TokenizerConfig(value_mode="continuous", max_len=24))
        m.load_state_dict(models["panel"].state_dict() if models else m.state_dict())
        m.profile_head.set_panel(panel, np.zeros(len(panel)), np.ones(len(panel)))
        models[reads] = m.eval()
    other = tiny_counts.copy()
    X = other.X.toarray() if hasattr(other.X, "toarray") else np.array(other.X)
    X[:, len(panel):] = np.random.default_rng(0).permuted(X[:, len(panel):], axis=1)
    other.X = X
    for reads, same in (("panel", True), ("all", False)):
        a = embed(tiny_counts, models[reads], copy=True, readout="raw", progress=False).obsm["X_scmamba2"]
        b = embed(other, models[reads], copy=True, readout="raw", progress=False).obsm["X_scmamba2"]
        assert np.allclose(a, b, atol=1e-5) == same, reads
    with pytest.raises(ValueError, match="profile_genes"):
        ModelConfig(vocab_size=10, input_genes="panel")


def test_embed_under_bfloat16_autocast_writes_float32_close_to_float32(tiny_counts):
    # A caller's autocast (bf16 matmuls, e.g. on a GPU or a CPU with bf16 instructions) must not break embed: the
    # profile readout's product came back in bfloat16, which numpy cannot take.
    torch.manual_seed(1)
    vocab = GeneVocab(list(tiny_counts.var_names))
    cfg = ModelConfig(vocab_size=len(vocab), d_model=32, n_layers=2, d_state=16, headdim=16, chunk_size=8,
                      dropout=0.0, value_mode="continuous", profile_genes=12)
    m = ScMamba2(cfg, vocab=vocab, tokenizer_config=TokenizerConfig(value_mode="continuous", max_len=24)).eval()
    ref = embed(tiny_counts, m, copy=True, progress=False).obsm["X_scmamba2"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = embed(tiny_counts, m, copy=True, progress=False).obsm["X_scmamba2"]
    assert got.dtype == np.float32
    assert 0 < np.linalg.norm(got - ref) / np.linalg.norm(ref) < 3e-2


def test_several_models_sit_side_by_side_and_share_the_tokenised_cells(tiny_counts, model):
    torch.manual_seed(1)
    other = ScMamba2(model.config, vocab=model.vocab, tokenizer_config=model.tokenizer_config).eval()
    a, b = (embed(tiny_counts, m, progress=False, copy=True).obsm["X_scmamba2"] for m in (model, other))
    both = embed(tiny_counts, (model, other), progress=False, copy=True)
    np.testing.assert_allclose(both.obsm["X_scmamba2"], np.hstack([a, b]), rtol=1e-5, atol=1e-6)
    assert list(both.uns["scmamba2"]["X_scmamba2"]["member_dims"]) == [a.shape[1], b.shape[1]]


def test_several_batch_aware_models_are_refused_before_any_work(tiny_counts, model):
    dsbn = ScMamba2(replace_config(model.config, dsbn=True, n_batches=2), vocab=model.vocab,
                    tokenizer_config=model.tokenizer_config).eval()
    tiny_counts.obs["b"] = ["x", "y"] * (tiny_counts.n_obs // 2) + ["x"] * (tiny_counts.n_obs % 2)
    with pytest.raises(InputError, match="several of the models"):
        embed(tiny_counts, [dsbn, dsbn], batch_key="b", batch_categories=["x", "y"], progress=False)
    with pytest.raises(InputError, match="batch_categories"):  # the batch check of a member comes before embedding
        embed(tiny_counts, [model, dsbn], batch_key="b", progress=False)
    assert "X_scmamba2" not in tiny_counts.obsm
