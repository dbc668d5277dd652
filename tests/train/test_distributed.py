"""Distributed settings: strategies, the FSDP example configuration, and a real 2-process DDP run on CPU (gloo)."""

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from scmamba2.model import ModelConfig
from scmamba2.train.config import TrainConfig, load_run_config
from scmamba2.train.distributed import make_strategy

FSDP_EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "pretrain_fsdp.yaml"


def test_strategies():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from scmamba2.nn.bidirectional import BiMamba2Layer

    fsdp = make_strategy(TrainConfig(strategy="fsdp"))
    assert isinstance(fsdp, FSDPStrategy)
    assert fsdp.kwargs["auto_wrap_policy"].__class__.__name__ == "ModuleWrapPolicy"
    assert BiMamba2Layer in fsdp.kwargs["auto_wrap_policy"]._module_classes
    assert isinstance(make_strategy(TrainConfig(strategy="ddp")), DDPStrategy)
    assert make_strategy(TrainConfig()) == "auto" and make_strategy(TrainConfig(strategy="ddp_spawn")) == "ddp_spawn"
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        TrainConfig(accumulate_grad_batches=0)


def test_fsdp_example_config_passes_through(tmp_path):
    from scmamba2.train.trainer import make_trainer

    run = load_run_config(FSDP_EXAMPLE)
    train, data = run["train"], run["data"]
    assert (train.strategy, train.precision, train.accumulate_grad_batches) == ("fsdp", "bf16-mixed", 4)
    assert data.sources[0].startswith("soma://") and data.soma_gene_column == "feature_name"
    assert ModelConfig(vocab_size=100, **{**run["model"], "d_model": 32, "n_layers": 2}).gradient_checkpointing
    # The same settings on one CPU (bf16 autocast exists on CPU too): they reach the Lightning trainer.
    trainer = make_trainer(replace(train, strategy="auto", accelerator="cpu", devices=1), tmp_path, tensorboard=True)
    assert trainer.precision == "bf16-mixed" and trainer.accumulate_grad_batches == 4
    assert [type(lg).__name__ for lg in trainer.loggers] == ["CSVLogger", "TensorBoardLogger"]
    assert trainer.num_nodes == train.num_nodes == 8
    # Lightning counts val_check_interval in batches: validation every val_every_n_steps optimiser steps.
    small = replace(train, strategy="auto", accelerator="cpu", devices=1, num_nodes=1, max_steps=100_000)
    assert make_trainer(small, None, validate=True).val_check_interval == small.val_every_n_steps * 4


_DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import lightning.pytorch as pl
    from scmamba2._keys import CELL_INDEX
    from scmamba2.data.corpus import open_corpus
    from scmamba2.data.corpus_vocab import build_corpus_vocab
    from scmamba2.data.stream import CorpusDataset, CorpusLoader
    from scmamba2.data.tokenize import TokenizerConfig
    from scmamba2.model import ModelConfig, ScMamba2
    from scmamba2.train.config import TrainConfig
    from scmamba2.train.plan import TrainingPlan
    from scmamba2.train.trainer import make_trainer

    shards, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

    class Record(pl.Callback):
        def __init__(self):
            self.cells = []
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.cells += batch[CELL_INDEX].tolist()
        def on_train_end(self, trainer, pl_module):
            (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(
                {"cells": self.cells, "world": trainer.world_size, "steps": trainer.global_step,
                 "weight": sum(float(p.double().sum()) for p in pl_module.parameters())}))

    corpus = open_corpus([shards])
    vocab = build_corpus_vocab(corpus).vocab
    tok = TokenizerConfig(max_len=16)
    tcfg = TrainConfig(max_steps=steps, batch_size=8, warmup_steps=1, strategy="ddp", accelerator="cpu", devices=2,
                       num_workers=2, val_fraction=0.0, progress_bar=False, log_every_n_steps=1)
    ds = CorpusDataset(corpus, vocab, tok, batch_size=8, mask_ratio=0.4, block_size=6, buffer_size=10, seed=0)
    pl.seed_everything(0, verbose=False)
    model = ScMamba2(ModelConfig(vocab_size=len(vocab), d_model=32, n_layers=2, headdim=16, chunk_size=8,
                                 max_len=16), vocab=vocab, tokenizer_config=tok)
    trainer = make_trainer(tcfg, None, callbacks=[Record()])
    trainer.fit(TrainingPlan(model, tcfg), train_dataloaders=CorpusLoader(ds, num_workers=2))
""")


@pytest.mark.slow
def test_ddp_two_cpu_processes_two_workers_each(tmp_path):
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    shards, rng = tmp_path / "shards", np.random.default_rng(0)
    shards.mkdir()
    for k, n in enumerate((40, 25, 33)):
        x = sp.csr_matrix(rng.poisson(1.5, (n, 30)).astype(np.float32))
        ad.AnnData(x, obs=pd.DataFrame(index=[f"s{k}c{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"G{j}" for j in range(30)])).write_h5ad(shards / f"s{k}.h5ad")
    n_cells = 98
    steps = -(-n_cells // 2 // 8)  # one epoch: ceil(49 / 8) batches per rank
    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(script), str(shards), str(out), str(steps)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 and r["steps"] == steps for r in ranks)
    seen = ranks[0]["cells"] + ranks[1]["cells"]
    assert sorted(seen) == list(range(n_cells)), "the two ranks together saw each cell exactly once"
    assert ranks[0]["weight"] == pytest.approx(ranks[1]["weight"], rel=1e-6)  # gradients were all-reduced


def test_ddp_example_config_is_the_documented_setting():
    """configs/pretrain_ddp.yaml (the setting docs/scaling.md recommends) loads and validates."""
    run = load_run_config(FSDP_EXAMPLE.with_name("pretrain_ddp.yaml"))
    train = run["train"]
    assert (train.strategy, train.precision, train.batch_size, train.accumulate_grad_batches) == \
        ("ddp", "bf16-mixed", 16, 4)
    cfg = ModelConfig(vocab_size=100, **run["model"])
    assert (cfg.d_model, cfg.n_layers, cfg.gradient_checkpointing) == (1536, 36, True)
    assert run["tokenizer"].max_len == 1200
