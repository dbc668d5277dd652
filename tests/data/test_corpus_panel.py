"""The whole-profile panel of a streamed corpus: one pass block by block equals the in-memory rule."""

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmamba2._keys import PROFILE
from scmamba2.data.corpus import CorpusConfig, open_corpus
from scmamba2.data.corpus_panel import corpus_panel
from scmamba2.data.corpus_vocab import build_corpus_vocab
from scmamba2.data.panel import select_panel
from scmamba2.data.stream import CorpusDataset
from scmamba2.data.tokenize import TokenizedCells, TokenizerConfig, tokenize

CONT = TokenizerConfig(value_mode="continuous", max_len=16)


def _shards(folder, seed=0):
    """Three shards; the third did not measure genes G0-G5 (its columns are absent)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for k, (n, first) in enumerate(((30, 0), (22, 0), (26, 6))):
        genes = [f"G{j}" for j in range(first, 40)]
        lam = rng.gamma(0.5, 2.0, size=len(genes))
        x = sp.csr_matrix(rng.poisson(lam, (n, len(genes))).astype(np.float32))
        ad.AnnData(x, obs=pd.DataFrame(index=[f"s{k}c{i}" for i in range(n)]),
                   var=pd.DataFrame(index=genes)).write_h5ad(folder / f"s{k}.h5ad")
    return folder


def _in_memory(folder, vocab):
    """Every shard tokenised whole and concatenated, with its source index and measured genes."""
    parts, groups, measured = [], [], []
    for k in range(3):
        a = ad.read_h5ad(folder / f"s{k}.h5ad")
        parts.append(tokenize(a.X, vocab, CONT, gene_names=np.asarray(a.var_names)))
        groups.append(np.full(a.n_obs, k))
        m = np.zeros(len(vocab), dtype=bool)
        ids = vocab.lookup(list(a.var_names))
        m[ids[ids >= 0]] = True
        measured.append(m)
    offsets = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(p.offsets) for p in parts]))])
    cells = TokenizedCells(np.concatenate([p.gene_ids for p in parts]), np.concatenate([p.values for p in parts]),
                           offsets.astype(np.int64), CONT)
    return cells, np.concatenate(groups), np.stack(measured)


def test_streamed_panel_equals_the_in_memory_panel(tmp_path):
    folder = _shards(tmp_path / "shards")
    corpus = open_corpus([folder])
    vocab = build_corpus_vocab(corpus, min_shards=1).vocab
    ds = CorpusDataset(corpus, vocab, CONT, batch_size=8, block_size=7, buffer_size=8)  # blocks cut shards
    panel, measured = corpus_panel(ds, 12, min_cells=3, min_measured=0.5)
    cells, group, measured_all = _in_memory(folder, vocab)
    want = select_panel(cells, len(vocab), 12, group=group, measured=measured_all, min_cells=3, min_measured=0.5)
    np.testing.assert_array_equal(panel.ids, want.ids)
    np.testing.assert_allclose(panel.mean, want.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(panel.std, want.std, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(measured, measured_all[:, panel.ids])
    # the third shard's cells count only for the genes it measured: G0-G5 had 52 cells, the others 78
    names = [vocab.tokens[i] for i in panel.ids]
    assert any(int(n[1:]) < 6 for n in names) and not measured[2, [int(n[1:]) < 6 for n in names]].any()


def test_streamed_batches_carry_profile_targets_nan_where_unmeasured(tmp_path):
    folder = _shards(tmp_path / "shards")
    corpus = open_corpus([folder])
    vocab = build_corpus_vocab(corpus, min_shards=1).vocab
    ds = CorpusDataset(corpus, vocab, CONT, batch_size=8, block_size=7, buffer_size=1)
    panel, measured = corpus_panel(ds, 40, min_cells=1, min_measured=0.2)
    ds.set_panel(panel, measured)
    unmeasured = ~measured[2]
    assert unmeasured.any()
    shard_of = np.searchsorted(corpus.offsets, np.arange(corpus.n_cells), side="right") - 1
    seen = 0
    for batch in ds:
        target = batch[PROFILE].numpy()
        third = shard_of[batch["cell_index"].numpy()] == 2
        assert np.isnan(target[third][:, unmeasured]).all()
        assert np.isfinite(target[~third]).all() and np.isfinite(target[third][:, ~unmeasured]).all()
        seen += len(target)
    assert seen == corpus.n_cells


def test_streamed_pretraining_defaults_to_the_profile_objective(tmp_path):
    from scmamba2.model import ScMamba2
    from scmamba2.train.config import TrainConfig
    from scmamba2.train.pretrain import pretrain

    corpus = open_corpus([_shards(tmp_path / "shards")])
    # no tokenizer or profile settings: continuous values and the profile decoder, as for in-memory data
    res = pretrain(corpus, out_dir=tmp_path / "run", model_config=dict(d_model=32, n_layers=1, headdim=16,
                                                                     chunk_size=8),
                   train_config=TrainConfig(max_steps=3, batch_size=8, warmup_steps=1, gep_weight=0.0,
                                            mvc_weight=0.0, val_fraction=0.2, progress_bar=False),
                   data_config=CorpusConfig(block_size=8, buffer_size=8))
    assert "val/profile" in res.val_end and "val/profile_gene_mean" in res.val_end
    assert np.isfinite(res.val_end["val/profile"])
    loaded = ScMamba2.from_pretrained(tmp_path / "run")
    # 40 genes, fewer than the default 2,000 qualify: the panel shrinks to them
    assert loaded.profile_head is not None and loaded.config.profile_genes == len(loaded.profile_head.gene_ids) <= 40
    assert loaded.tokenizer_config.value_mode == "continuous"
