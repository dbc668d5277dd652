"""Corpus sources (h5ad shards, TileDB-SOMA), the streaming dataset's rank x worker split, corpus vocabulary."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scmamba2._keys import CELL_INDEX, GENES
from scmamba2.data.corpus import CorpusConfig, open_corpus
from scmamba2.data.corpus_vocab import build_corpus_vocab, shard_tokens
from scmamba2.data.stream import CorpusDataset, CorpusLoader
from scmamba2.data.tokenize import TokenizerConfig
from scmamba2.errors import InputError

TINY_MODEL = dict(d_model=32, n_layers=2, headdim=16, chunk_size=8)


def _write_shards(folder, sizes=(40, 25, 33), n_genes=30, seed=0):
    import anndata as ad

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(sizes):
        x = sp.csr_matrix(rng.poisson(1.5, (n, n_genes)).astype(np.float32))
        obs = pd.DataFrame({"kind": pd.Categorical(np.where(np.arange(n) % 3 == 0, "a", "b"))},
                           index=[f"s{k}c{i}" for i in range(n)])
        var = pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
        ad.AnnData(x, obs=obs, var=var).write_h5ad(folder / f"s{k}.h5ad")
    return folder


def _cells(batches):
    return [int(c) for b in batches for c in b[CELL_INDEX]]


def test_two_ranks_two_workers_see_each_cell_once(tmp_path):
    corpus = open_corpus([_write_shards(tmp_path / "shards")])
    vocab = build_corpus_vocab(corpus).vocab
    tok = TokenizerConfig(max_len=16)
    kw = dict(batch_size=7, block_size=6, buffer_size=10, heldout_cells=8, seed=3, mask_ratio=0.3)
    per_rank = []
    for rank in range(2):
        ds = CorpusDataset(corpus, vocab, tok, world_size=2, rank=rank, **kw)
        per_rank.append(list(CorpusLoader(ds, num_workers=2)))
    held = {int(it[CELL_INDEX]) for it in ds.heldout()}
    seen = _cells(per_rank[0]) + _cells(per_rank[1])
    assert len(seen) == len(set(seen)), "a cell was seen twice in one epoch"
    assert set(seen) | held == set(range(corpus.n_cells)) and not set(seen) & held
    assert len(per_rank[0]) == len(per_rank[1]) == len(ds)  # DDP ranks stay in step
    assert all(b[GENES].shape[0] <= 7 for b in per_rank[0] + per_rank[1])

    # Same seed, ranks and workers: the same batches (cells and masked values). A rank's cells do not depend
    # on the number of workers (only their mixing does); a new epoch reshuffles.
    ds1 = CorpusDataset(corpus, vocab, tok, world_size=2, rank=1, **kw)
    again = list(CorpusLoader(ds1, num_workers=2))
    assert _cells(again) == _cells(per_rank[1])
    assert all(np.array_equal(a["values"], b["values"]) for a, b in zip(again, per_rank[1]))
    assert sorted(_cells(CorpusLoader(ds1, num_workers=0))) == sorted(_cells(per_rank[1]))
    ds1.set_epoch(1)
    nxt = list(ds1)
    assert sorted(_cells(nxt)) != sorted(_cells(per_rank[1])) or _cells(nxt) != _cells(per_rank[1])
    assert len(set(_cells(nxt))) == len(_cells(nxt))


def test_loader_resumes_mid_epoch(tmp_path):
    corpus = open_corpus([_write_shards(tmp_path / "shards")])
    vocab = build_corpus_vocab(corpus).vocab
    kw = dict(batch_size=5, block_size=8, buffer_size=12, seed=1, mask_ratio=0.3)
    full = CorpusLoader(CorpusDataset(corpus, vocab, TokenizerConfig(max_len=16), **kw), num_workers=2)
    straight = list(full) + list(full)[:3]  # one epoch and the start of the next
    loader = CorpusLoader(CorpusDataset(corpus, vocab, TokenizerConfig(max_len=16), **kw), num_workers=2)
    loader.load_state_dict({**loader.state_dict(), "batches_consumed": 7})
    resumed = list(loader)
    assert _cells(resumed) == _cells(straight[7:len(straight) - 3])
    assert all(np.array_equal(a["values"], b["values"]) for a, b in zip(resumed, straight[7:]))


@pytest.mark.parametrize("change", [dict(num_workers=1), dict(block_size=4), dict(batch_size=6),
                                    dict(buffer_size=5), dict(world_size=2, rank=0)])
def test_resume_with_another_epoch_layout_is_refused(tmp_path, change):
    from scmamba2.errors import CheckpointError

    corpus = open_corpus([_write_shards(tmp_path / "shards")])
    vocab = build_corpus_vocab(corpus).vocab
    kw = dict(batch_size=5, block_size=8, buffer_size=12, seed=1, mask_ratio=0.3, heldout_cells=8)
    saved = CorpusLoader(CorpusDataset(corpus, vocab, TokenizerConfig(max_len=16), **kw), num_workers=2)
    state = {**saved.state_dict(), "batches_consumed": 7}
    workers = change.pop("num_workers", 2)
    other = CorpusLoader(CorpusDataset(corpus, vocab, TokenizerConfig(max_len=16), **{**kw, **change}),
                         num_workers=workers)
    assert other.dataset.n_cells == saved.dataset.n_cells  # the older check alone would let it through
    with pytest.raises(CheckpointError, match="laid out differently"):
        other.load_state_dict(state)


def test_obs_filter_and_backed_reads(tmp_path):
    import anndata as ad

    folder = _write_shards(tmp_path / "shards", sizes=(12, 9))
    corpus = open_corpus([folder], obs_filter="kind == 'a'")
    assert corpus.sizes.tolist() == [4, 3]
    full = ad.read_h5ad(folder / "s0.h5ad")
    rows = np.flatnonzero(full.obs["kind"] == "a")
    assert (corpus.shards[0].read(np.arange(4)) != full.X[rows]).nnz == 0
    with pytest.raises(InputError, match="obs filter"):
        open_corpus([folder], obs_filter="no_such_column == 1")
    with pytest.raises(InputError, match="not a corpus source|does not exist"):
        open_corpus([tmp_path / "missing.h5ad"])


def test_vocabulary_over_shards_harmonises_ids_and_reports_drops(tmp_path):
    import anndata as ad

    def write(name, var):
        x = sp.csr_matrix(np.ones((3, len(var)), dtype=np.float32))
        ad.AnnData(x, var=var).write_h5ad(tmp_path / name)

    # Symbols with Ensembl ids; one symbol repeated, one name a special token.
    write("a.h5ad", pd.DataFrame({"gene_ids": ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003",
                                               "ENSG00000000004"]}, index=["CD3E", "MS4A1", "LYZ", "<pad>"]))
    # Ensembl ids only (versioned): two map to symbols learnt from a.h5ad, one is unknown.
    write("b.h5ad", pd.DataFrame(index=["ENSG00000000001.5", "ENSG00000000003.2", "ENSG00000000099"]))
    # The same id under a newer symbol, and one id in two columns.
    write("c.h5ad", pd.DataFrame({"gene_ids": ["ENSG00000000002", "ENSG00000000050", "ENSG00000000050"]},
                                 index=["MS4A1-NEW", "NKG7", "NKG7-dup"]))
    var_c = pd.DataFrame({"gene_ids": ["ENSG00000000060", "ENSG00000000061"]}, index=["GNLY", "GNLY2"])
    write("d.h5ad", var_c)
    corpus = open_corpus([tmp_path])
    cv = build_corpus_vocab(corpus)
    genes = cv.vocab.genes
    assert genes[:3] == ["CD3E", "MS4A1", "LYZ"]
    assert "ENSG00000000099" in genes and "ENSG00000000099" in cv.report.kept_as_id
    assert "MS4A1-NEW" not in genes and cv.report.renamed == {"MS4A1-NEW": "MS4A1", "NKG7-dup": "NKG7"}
    assert cv.report.dropped["repeated gene within a shard (first column kept)"] == ["c.h5ad: NKG7-dup"]
    assert cv.report.mapped_from_id == 2
    assert [g.split(": ")[1] for g in cv.report.dropped["special-token name"]] == ["<pad>"]
    # Shard b reads into the symbol vocabulary.
    assert shard_tokens(corpus.shards[1].var(), cv.aliases).tolist() == ["CD3E", "LYZ", "ENSG00000000099"]
    # min_shards drops the genes of a single shard, saying why.
    strict = build_corpus_vocab(corpus, min_shards=2)
    assert set(strict.vocab.genes) == {"CD3E", "MS4A1", "LYZ"}
    assert "GNLY" in strict.report.dropped["in fewer than 2 shards"]
    assert json.loads(json.dumps(strict.report.to_dict()))["dropped"]["in fewer than 2 shards"]["count"] == 4


def test_pretrain_streams_shards_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from scmamba2.cli import app

    folder = _write_shards(tmp_path / "shards", sizes=(30, 30))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model: {d_model: 32, n_layers: 2, headdim: 16, chunk_size: 8}\n"
        "tokenizer: {max_len: 24}\n"
        "train: {batch_size: 8, warmup_steps: 1, val_every_n_steps: 2, progress_bar: false, num_workers: 1,\n"
        "        log_every_n_steps: 1}\n"
        "data: {block_size: 8, buffer_size: 16, obs_filter: \"kind == 'b'\"}\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["pretrain", str(folder), "--out", str(out), "--config", str(cfg),
                                   "--max-steps", "2", "--seed", "2"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["n_train_cells"] + summary["n_val_cells"] == 40 and summary["steps"] == 2
    metrics = pd.read_csv(out / "logs" / "metrics.csv")
    assert metrics["cells_per_s"].dropna().gt(0).any() and metrics["tokens_per_s"].dropna().gt(0).any()
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "data_config.json").read_text())["obs_filter"] == "kind == 'b'"


def test_which_inputs_are_streamed(tmp_path):
    folder = _write_shards(tmp_path / "shards", sizes=(5, 5))
    one, two = str(folder / "s0.h5ad"), str(folder / "s1.h5ad")
    auto = CorpusConfig()
    assert not auto.streams([one]) and auto.streams([one, two]) and auto.streams([str(folder)])
    assert not auto.streams([one, str(tmp_path / "x.csv")])  # only h5ad files can be streamed
    assert auto.streams(["soma://some/experiment"]) and CorpusConfig(sources=[one]).streams([])
    assert CorpusConfig(stream=True).streams([one]) and not CorpusConfig(stream=False).streams([one, two])
    tenx = tmp_path / "sample" / "outs" / "filtered_feature_bc_matrix"  # one data set, read as a file
    tenx.mkdir(parents=True)
    (tenx / "matrix.mtx.gz").write_bytes(b"")
    assert not auto.streams([str(tmp_path / "sample")]) and not auto.streams([str(tenx)])


def test_cli_streams_several_h5ad_files(tmp_path):
    from typer.testing import CliRunner

    from scmamba2.cli import app

    folder = _write_shards(tmp_path / "shards", sizes=(20, 20))
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: {d_model: 32, n_layers: 2, headdim: 16, chunk_size: 8}\ntokenizer: {max_len: 24}\n"
                   "train: {batch_size: 8, warmup_steps: 1, val_every_n_steps: 2, progress_bar: false}\n"
                   "data: {block_size: 8, buffer_size: 16}\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["pretrain", str(folder / "s0.h5ad"), str(folder / "s1.h5ad"), "--out", str(out),
                                   "--config", str(cfg), "--max-steps", "1"])
    assert res.exit_code == 0, res.output
    assert (out / "vocab_report.json").is_file()  # the corpus path: a vocabulary over both shards
    assert json.loads((out / "vocab_report.json").read_text())["n_shards"] == 2


def test_soma_experiment_from_shared_data_pretrains(tmp_path, shared_data):
    tio = pytest.importorskip("tiledbsoma.io")
    import anndata as ad

    from scmamba2.train.config import TrainConfig
    from scmamba2.train.pretrain import pretrain

    h5ad = shared_data / "pbmc3k_raw_labeled.h5ad"
    uri = tio.from_h5ad(str(tmp_path / "pbmc3k"), h5ad, "RNA", var_id_name="feature_name", X_layer_name="raw")
    corpus = open_corpus([f"soma://{uri}"], obs_filter="cell_type == 'B'")
    full = ad.read_h5ad(h5ad)
    b_cells = np.flatnonzero(full.obs["cell_type"] == "B")
    assert corpus.n_cells == len(b_cells)
    assert (corpus.shards[0].read(np.arange(10, 30)) != full.X[b_cells[10:30]]).nnz == 0

    tcfg = TrainConfig(max_steps=2, batch_size=16, warmup_steps=1, val_every_n_steps=2, progress_bar=False)
    res = pretrain(corpus, out_dir=tmp_path / "model", model_config=TINY_MODEL,
                   tokenizer_config=TokenizerConfig(max_len=64), train_config=tcfg,
                   data_config=CorpusConfig(block_size=64, buffer_size=128, max_val_cells=32))
    assert res.n_train_cells + res.n_val_cells == len(b_cells) and res.n_val_cells >= 32
    assert np.isfinite(res.val_loss_end) and (tmp_path / "model" / "model.safetensors").is_file()
    report = json.loads((tmp_path / "model" / "vocab_report.json").read_text())
    assert report["n_genes"] == full.n_vars


def test_corpus_config_rejects_unknown_options():
    with pytest.raises(InputError, match="Unknown data option"):
        CorpusConfig.from_dict({"sourcez": ["x"]})
    assert CorpusConfig(sources="a.h5ad").sources == ["a.h5ad"]


def test_streamed_pretraining_resumes_exactly(tmp_path, monkeypatch):
    import torch

    from scmamba2.train.config import TrainConfig
    from scmamba2.train.plan import TrainingPlan
    from scmamba2.train.pretrain import pretrain

    corpus = open_corpus([_write_shards(tmp_path / "shards", sizes=(14, 12, 10))])  # 36 cells: 5 batches/epoch
    kw = dict(model_config={**TINY_MODEL, "dropout": 0.2}, tokenizer_config=TokenizerConfig(max_len=12),
              data_config=CorpusConfig(block_size=5, buffer_size=8))
    tcfg = TrainConfig(max_steps=7, batch_size=8, warmup_steps=2, val_fraction=0.0, val_every_n_steps=3,
                       progress_bar=False, num_workers=2, seed=5)
    straight = pretrain(corpus, out_dir=tmp_path / "a", train_config=tcfg, **kw).model

    original = TrainingPlan.training_step

    class Crash(RuntimeError):
        pass

    def crash(self, batch, batch_idx):
        if self.global_step == 4:
            raise Crash("simulated crash before step 5")  # the step-3 checkpoint stays
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TrainingPlan, "training_step", crash)
    with pytest.raises(Crash):
        pretrain(corpus, out_dir=tmp_path / "b", train_config=tcfg, **kw)
    monkeypatch.setattr(TrainingPlan, "training_step", original)
    resumed = pretrain(corpus, out_dir=tmp_path / "b", train_config=tcfg, resume=True, **kw).model
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_soma_experiment_written_by_from_h5ad_is_read_with_its_own_names(tmp_path, tiny_counts, caplog):
    """tiledbsoma.io.from_h5ad writes X layer 'data' and genes in 'var_id', not Census's 'raw' / 'feature_name':
    the only candidates are used (and logged); an explicit wrong name is still an error naming the options."""
    tio = pytest.importorskip("tiledbsoma.io")
    import logging

    h5ad = tmp_path / "c.h5ad"
    tiny_counts.write_h5ad(h5ad)
    uri = tio.from_h5ad(str(tmp_path / "exp"), str(h5ad), "RNA")
    with caplog.at_level(logging.INFO, logger="scmamba2.data.soma"):
        corpus = open_corpus([f"soma://{uri}"])
    assert corpus.n_cells == tiny_counts.n_obs
    assert list(corpus.shards[0].var().index) == list(tiny_counts.var_names)
    assert (corpus.shards[0].read(np.arange(5)) != tiny_counts.X[:5]).nnz == 0
    assert "'data'" in caplog.text and "'var_id'" in caplog.text
    with pytest.raises(InputError, match="--soma-layer"):
        open_corpus([f"soma://{uri}"], soma_layer="counts")
    with pytest.raises(InputError, match="--soma-gene-column"):
        open_corpus([f"soma://{uri}"], soma_gene_column="symbols")


@pytest.mark.parametrize("option", ["panel_view_fraction", "cluster_balance"])
def test_streamed_pretraining_refuses_in_memory_only_options(tmp_path, option):
    from scmamba2.train.config import TrainConfig
    from scmamba2.train.pretrain import pretrain

    corpus = open_corpus([_write_shards(tmp_path / "shards", sizes=(6, 6))])
    with pytest.raises(InputError, match=f"{option} is not supported when streaming"):
        pretrain(corpus, train_config=TrainConfig(max_steps=1, progress_bar=False, **{option: 0.2}))


def test_held_out_blocks_too_coarse_for_the_corpus(tmp_path, caplog):
    """Validation holds out whole blocks: one block cannot be split (a clear error, not a ValueError), and a hold-out
    far above the asked share is said."""
    import logging

    tok = TokenizerConfig(max_len=16)
    one = open_corpus([_write_shards(tmp_path / "one", sizes=(30,))])
    vocab = build_corpus_vocab(one).vocab
    with pytest.raises(InputError, match="data.block_size"):
        CorpusDataset(one, vocab, tok, batch_size=4, block_size=1024, heldout_cells=3, seed=0)
    two = open_corpus([_write_shards(tmp_path / "two", sizes=(30, 30))])
    with caplog.at_level(logging.WARNING, logger="scmamba2.data.stream"):
        ds = CorpusDataset(two, vocab, tok, batch_size=4, block_size=1024, heldout_cells=6, seed=0)
    assert "holds out 30 of 60 cells (50%; 6 asked for)" in caplog.text and ds.n_cells == 30
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scmamba2.data.stream"):
        CorpusDataset(two, vocab, tok, batch_size=4, block_size=5, heldout_cells=6, seed=0)  # two blocks: 10 cells
    assert "holds out" not in caplog.text
