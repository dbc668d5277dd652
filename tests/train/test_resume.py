"""Exact resume: N steps straight == N/2-ish steps, crash, resume; atomic checkpoints; clear errors."""

import numpy as np
import pytest
import torch

from scmamba2 import TokenizerConfig, TrainConfig, pretrain
from scmamba2.errors import CheckpointError
from scmamba2.train import checkpoint as ckpt_mod
from scmamba2.train.checkpoint import atomic_torch_save, last_checkpoint_path, read_checkpoint
from scmamba2.train.plan import TrainingPlan

# Dropout on, so the dropout generator must continue exactly too.
TINY_MODEL = dict(d_model=32, n_layers=2, d_state=16, headdim=16, chunk_size=8, dropout=0.2)
TOK = TokenizerConfig(n_bins=11, max_len=24)  # cells have more genes than this: per-epoch resampling matters
N_STEPS = 10


def counts(n_cells=53, n_genes=40, seed=0):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n_cells)
    rate = np.full((n_cells, n_genes), 1.5)
    for k in range(3):
        rate[labels == k, k * 10 : (k + 1) * 10] += 8.0
    X = rng.poisson(rate).astype(np.float32)
    X[:, -1] += 1
    return ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
                      var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def config(every, **kw):
    # 48 training cells / batch 8 = 6 batches per epoch: 10 steps cross an epoch boundary.
    base = dict(max_steps=N_STEPS, batch_size=8, lr=3e-3, warmup_steps=3, val_fraction=0.1, val_every_n_steps=every,
                progress_bar=False, seed=7, log_every_n_steps=1)
    return TrainConfig(**{**base, **kw})


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    res = pretrain(counts(), out_dir=out, model_config=TINY_MODEL, tokenizer_config=TOK, train_config=config(4))
    return res


def crash_at(monkeypatch, step):
    original = TrainingPlan.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == step:
            raise Crash(f"simulated crash before step {step + 1}")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TrainingPlan, "training_step", training_step)


@pytest.mark.parametrize("every, crash, resumed_at, workers", [(4, 6, 4, 2), (6, 8, 6, 0)],
                         ids=["mid-epoch-2-workers", "epoch-boundary"])
def test_resume_gives_the_weights_of_a_straight_run(straight, tmp_path, monkeypatch, every, crash, resumed_at,
                                                    workers):
    data = counts()
    with monkeypatch.context() as m:
        crash_at(m, crash)
        with pytest.raises(Crash):
            pretrain(data, out_dir=tmp_path, model_config=TINY_MODEL, tokenizer_config=TOK, train_config=config(every))
    saved = read_checkpoint(last_checkpoint_path(tmp_path))
    assert saved["global_step"] == resumed_at
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))

    # DataLoader workers collate the resumed half: masks and resampling are seeded per batch, so no difference.
    res = pretrain(data, out_dir=tmp_path, model_config=TINY_MODEL, tokenizer_config=TOK,
                   train_config=config(every, num_workers=workers), resume=True)
    a, b = straight.model.state_dict(), res.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert res.val_loss_end == straight.val_loss_end
    # The metrics file holds the steps before the crash and after the resume, each once.
    import pandas as pd

    m = pd.read_csv(tmp_path / "logs" / "metrics.csv").dropna(subset=["train/loss"])
    assert sorted(m["step"]) == list(range(N_STEPS))


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """5 steps, then resumed to 10 (validation every 5): every training step and every validation has one row."""
    import pandas as pd

    data = counts()
    pretrain(data, out_dir=tmp_path, model_config=TINY_MODEL, tokenizer_config=TOK, train_config=config(5, max_steps=5))
    pretrain(data, out_dir=tmp_path, model_config=TINY_MODEL, tokenizer_config=TOK,
             train_config=config(5, max_steps=10), resume=True)
    m = pd.read_csv(tmp_path / "logs" / "metrics.csv")
    assert sorted(m.dropna(subset=["train/loss"])["step"]) == list(range(10))
    val = m.dropna(subset=["val/loss"])
    assert list(val["step"]) == [0, 4, 9], val  # before training, after step 5 and after step 10
    assert not val.duplicated(subset=[c for c in val if c.startswith("val/")]).any()


def test_resume_with_cluster_balance_gives_the_weights_of_a_straight_run(tmp_path, monkeypatch):
    """Weighted draws (with replacement, seeded by seed and epoch) replay exactly after a crash."""
    from scmamba2.data import balance

    monkeypatch.setattr(balance, "CELLS_PER_CLUSTER", 10)  # 48 training cells: 4 clusters
    tok = TokenizerConfig(value_mode="continuous", max_len=24)
    model = {**TINY_MODEL, "profile_genes": 20}
    data = counts()
    straight = pretrain(data, out_dir=tmp_path / "straight", model_config=model, tokenizer_config=tok,
                        train_config=config(4, cluster_balance=1.0))
    with monkeypatch.context() as m:
        crash_at(m, 6)
        with pytest.raises(Crash):
            pretrain(data, out_dir=tmp_path / "run", model_config=model, tokenizer_config=tok,
                     train_config=config(4, cluster_balance=1.0))
    res = pretrain(data, out_dir=tmp_path / "run", model_config=model, tokenizer_config=tok,
                   train_config=config(4, cluster_balance=1.0), resume=True)
    a, b = straight.model.state_dict(), res.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(CheckpointError, match="sampling settings"):  # other weights: another data order
        pretrain(data, out_dir=tmp_path / "run", model_config=model, tokenizer_config=tok,
                 train_config=config(4, cluster_balance=0.5, max_steps=N_STEPS + 2), resume=True)


def test_an_interrupted_write_leaves_the_last_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"w": torch.arange(5)}, path)

    def dies_half_way(obj, fh):
        fh.write(b"PK\x03\x04 partial bytes")
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        atomic_torch_save({"w": torch.arange(7)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["w"], torch.arange(5))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_truncated_or_missing_checkpoint_is_a_clear_error(tmp_path, straight):
    data = counts()
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        pretrain(data, out_dir=tmp_path, model_config=TINY_MODEL, tokenizer_config=TOK, train_config=config(4),
                 resume=True)
    good = last_checkpoint_path(straight.out_dir).read_bytes()
    path = last_checkpoint_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"last\.ckpt cannot be read.*truncated or corrupt"):
        pretrain(data, out_dir=tmp_path, model_config=TINY_MODEL, tokenizer_config=TOK, train_config=config(4),
                 resume=True)
    torch.save({"state_dict": {}}, path)  # readable, but not a training checkpoint
    with pytest.raises(CheckpointError, match="lacks optimizer_states"):
        read_checkpoint(path)


def test_resume_with_other_data_or_model_is_refused(tmp_path, straight):
    import shutil

    shutil.copytree(straight.out_dir / "checkpoints", tmp_path / "checkpoints")
    shutil.copytree(straight.out_dir / "logs", tmp_path / "logs")
    metrics = (tmp_path / "logs" / "metrics.csv").read_text()
    with pytest.raises(CheckpointError, match="another data order"):
        pretrain(counts(), out_dir=tmp_path, model_config=TINY_MODEL, tokenizer_config=TOK,
                 train_config=config(4, batch_size=6), resume=True)
    assert (tmp_path / "logs" / "metrics.csv").read_text() == metrics  # a refused resume leaves the run's logs
    with pytest.raises(CheckpointError, match="another data order.*seed"):
        pretrain(counts(), out_dir=tmp_path, model_config=TINY_MODEL, tokenizer_config=TOK,
                 train_config=config(4, seed=8), resume=True)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        pretrain(counts(), out_dir=tmp_path, model_config={**TINY_MODEL, "d_model": 48}, tokenizer_config=TOK,
                 train_config=config(4), resume=True)
    with pytest.raises(CheckpointError, match="does not fit the model"):  # another vocabulary: fewer genes
        pretrain(counts()[:, :-5].copy(), out_dir=tmp_path, model_config=TINY_MODEL, tokenizer_config=TOK,
                 train_config=config(4), resume=True)


def test_cli_resume_without_a_checkpoint_says_so(tmp_path):
    from typer.testing import CliRunner

    from scmamba2.cli import app

    counts().write_h5ad(tmp_path / "cells.h5ad")
    res = CliRunner().invoke(app, ["pretrain", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / "run"),
                                   "--resume", "--max-steps", "2"])
    assert res.exit_code == 1
    assert "no training checkpoint" in res.output and "last.ckpt" in res.output


def test_resume_is_refused_before_the_data_are_read(tmp_path, straight, monkeypatch):
    """No checkpoint, another seed, another model: said before the data are read (CLI) or tokenised (API)."""
    import shutil

    from typer.testing import CliRunner

    from scmamba2.cli import app
    from scmamba2.data import io
    from scmamba2.train import pretrain as pretrain_mod

    counts().write_h5ad(tmp_path / "cells.h5ad")
    shutil.copytree(straight.out_dir / "checkpoints", tmp_path / "run" / "checkpoints")
    (tmp_path / "wide.yaml").write_text("model: {d_model: 48}\n")

    def no_reading(*args, **kwargs):
        raise AssertionError("the data were read")

    monkeypatch.setattr(io, "read", no_reading)
    monkeypatch.setattr(pretrain_mod, "prepare_cells", no_reading)
    for out, extra, needle in [("empty", [], "no training checkpoint"), ("run", ["--seed", "8"], "seed 7 then, 8 now"),
                               ("run", ["--seed", "7", "--config", str(tmp_path / "wide.yaml")],
                                "d_model 32 then, 48 now")]:
        res = CliRunner().invoke(app, ["pretrain", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / out),
                                       "--resume", *extra])
        assert res.exit_code == 1 and needle in res.output, res.output
    with pytest.raises(CheckpointError, match="d_model 32 then, 48 now"):
        pretrain(counts(), out_dir=tmp_path / "run", model_config={**TINY_MODEL, "d_model": 48},
                 tokenizer_config=TOK, train_config=config(4), resume=True)
    # settings of memory and speed only may change on resume (e.g. to fit another machine)
    from scmamba2.train.resume import check_resume

    check_resume(tmp_path / "run", config(4), {**TINY_MODEL, "gradient_checkpointing": True, "recompute_tokens": 16,
                                               "chunk_size": 4}, TOK)


def test_weight_average_is_what_is_kept_and_resumes_exactly(tmp_path, monkeypatch):
    """ema_decay: the saved model is the average of the weights after each step from the warm-up's end on,
    and a crashed run resumed from its checkpoint ends with the straight run's average (and raw weights)."""
    data = counts()
    steps_seen = []
    original = TrainingPlan.on_train_batch_end if hasattr(TrainingPlan, "on_train_batch_end") else None

    def record(self, outputs, batch, batch_idx):
        steps_seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        if original is not None:
            return original(self, outputs, batch, batch_idx)

    decay = 0.9  # 0.9 truncated integer buffers when they were averaged too
    model = {**TINY_MODEL, "profile_genes": 30}  # a profile decoder: its gene ids are an integer buffer
    tok = TokenizerConfig(value_mode="continuous", max_len=24)  # as the profile decoder needs
    with monkeypatch.context() as m:
        m.setattr(TrainingPlan, "on_train_batch_end", record, raising=False)
        ema = pretrain(data, out_dir=tmp_path / "ema", model_config=model, tokenizer_config=tok,
                       train_config=config(4, ema_decay=decay))
    # By hand: weights after step 3 (the warm-up's end) start the average; each later step mixes in.
    avg = None
    for w in steps_seen[3:]:
        avg = {k: v.clone() for k, v in w.items()} if avg is None else {
            k: (decay * avg[k] + (1 - decay) * w[k]) if avg[k].is_floating_point() else w[k] for k in w}
    got = ema.model.state_dict()
    for k in got:
        torch.testing.assert_close(got[k], avg[k], rtol=1e-5, atol=1e-6, msg=k)
    assert torch.equal(got["profile_head.gene_ids"], steps_seen[-1]["profile_head.gene_ids"])
    assert not torch.equal(got["encoder.layers.0.block.in_proj.weight"],
                           steps_seen[-1]["encoder.layers.0.block.in_proj.weight"])

    with monkeypatch.context() as m:
        crash_at(m, 6)
        with pytest.raises(Crash):
            pretrain(data, out_dir=tmp_path / "r", model_config=model, tokenizer_config=tok,
                     train_config=config(4, ema_decay=decay))
    with pytest.raises(CheckpointError, match="ema_decay"):  # its weights are the average: not without one
        pretrain(data, out_dir=tmp_path / "r", model_config=model, tokenizer_config=tok, train_config=config(4),
                 resume=True)
    res = pretrain(data, out_dir=tmp_path / "r", model_config=model, tokenizer_config=tok,
                   train_config=config(4, ema_decay=decay), resume=True)
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, got[k]), k
    assert res.val_loss_end == ema.val_loss_end


def test_weight_average_never_updated_keeps_the_trained_weights(tmp_path):
    """A run that ends before the warm-up does keeps its trained weights, not the initial copy of the average."""
    import pickle

    from scmamba2.train._lightning_parts import EMAWeights

    pickle.dumps(EMAWeights(0.9, start_step=3))  # ddp_spawn sends callbacks to its workers
    data = counts()
    plain = pretrain(data, model_config=TINY_MODEL, tokenizer_config=TOK, train_config=config(2, max_steps=3))
    ema = pretrain(data, model_config=TINY_MODEL, tokenizer_config=TOK,
                   train_config=config(2, max_steps=3, ema_decay=0.9))  # warm-up 3 steps: no update
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, ema.model.state_dict()[k]), k
    assert ema.val_loss_end == plain.val_loss_end != ema.val_loss_start
