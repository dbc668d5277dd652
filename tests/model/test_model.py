"""ScMamba2: encode() contract, padding invariance, both directions, checkpoint round trips and errors."""

import json

import pytest
import torch

from scmamba2 import ModelConfig, ScMamba2
from scmamba2._keys import PAD_VALUE
from scmamba2.data.vocab import GeneVocab
from scmamba2.errors import CheckpointError

GENES = [f"G{i}" for i in range(40)]


def tiny_model(**kw) -> ScMamba2:
    torch.manual_seed(0)
    vocab = GeneVocab(GENES)
    cfg = ModelConfig(vocab_size=len(vocab), d_model=32, n_layers=2, d_state=16, headdim=16, chunk_size=8,
                      n_bins=11, dropout=0.0, **kw)
    return ScMamba2(cfg, vocab=vocab).eval()


def one_cell(n_genes=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    genes = torch.cat([torch.tensor([1]), torch.randperm(40, generator=g)[:n_genes] + 4])
    values = torch.cat([torch.tensor([0.0]), torch.randint(1, 11, (n_genes,), generator=g).float()])
    return genes, values


def pad_to(genes, values, length):
    n = len(genes)
    g = torch.zeros(length, dtype=torch.long)
    v = torch.full((length,), PAD_VALUE)
    g[:n], v[:n] = genes, values
    m = torch.arange(length) >= n
    return g[None], v[None], m[None]


def test_encode_shape_and_padding_invariance():
    model = tiny_model()
    genes, values = one_cell()
    with torch.no_grad():
        a = model.encode(*pad_to(genes, values, 14))
        b = model.encode(*pad_to(genes, values, 29))  # a length across several chunks of 8
    assert a.shape == (1, 14, 32) and b.shape == (1, 29, 32)
    torch.testing.assert_close(a[0, :14], b[0, :14], atol=1e-5, rtol=1e-5)


def test_cls_sees_the_last_gene():
    model = tiny_model()
    genes, values = one_cell()
    values2 = values.clone()
    values2[-1] = 1.0 if values[-1] != 1.0 else 2.0
    with torch.no_grad():
        a = model.encode(*pad_to(genes, values, 20))[0, 0]
        b = model.encode(*pad_to(genes, values2, 20))[0, 0]
    assert (a - b).abs().max() > 1e-4


def test_batched_equals_alone():
    model = tiny_model()
    cells = [one_cell(n, seed=n) for n in (3, 13, 30)]
    L = 31
    batch = [pad_to(g, v, L) for g, v in cells]
    G, V, M = (torch.cat([b[i] for b in batch]) for i in range(3))
    with torch.no_grad():
        together = model.encode(G, V, M)
        for k, (g, v) in enumerate(cells):
            alone = model.encode(g[None], v[None], torch.zeros(1, len(g), dtype=torch.bool))
            torch.testing.assert_close(together[k, : len(g)], alone[0], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors", "vocab.json"}
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model"]["d_model"] == 32 and "scmamba2_version" in meta
    loaded = ScMamba2.from_pretrained(tmp_path).eval()
    assert loaded.vocab == model.vocab and loaded.config == model.config
    genes, values = one_cell()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(*pad_to(genes, values, 16)), loaded.encode(*pad_to(genes, values, 16)),
                                   atol=0, rtol=0)


def test_load_errors_name_the_problem(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    (tmp_path / "vocab.json").rename(tmp_path / "vocab.bak")
    with pytest.raises(CheckpointError, match="missing vocab.json"):
        ScMamba2.from_pretrained(tmp_path)
    (tmp_path / "vocab.bak").rename(tmp_path / "vocab.json")
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["d_model"] = 64
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"gene_encoder\.embedding\.weight: checkpoint \(44, 32\) vs model \(44, 64\)"):
        ScMamba2.from_pretrained(tmp_path)
    meta["model"]["d_model"] = 32
    meta["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format 99"):
        ScMamba2.from_pretrained(tmp_path)
    meta["format_version"] = 1  # format 1 without a batch embedding means the same: it loads
    (tmp_path / "config.json").write_text(json.dumps(meta))
    ScMamba2.from_pretrained(tmp_path)


def test_format_1_batch_embedding_is_refused(tmp_path):
    model = tiny_model(n_batches=2, batch_embedding=True)
    model.save_pretrained(tmp_path)
    assert ScMamba2.from_pretrained(tmp_path).batch_encoder is not None
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["format_version"] = 1
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format-1 checkpoint with a batch embedding"):
        ScMamba2.from_pretrained(tmp_path)


def test_embedding_tables_start_small_and_pad_rows_zero():
    from scmamba2.nn.embeddings import TABLE_INIT_STD

    model = tiny_model()
    table = model.gene_encoder.embedding.weight.detach()
    pad = model.config.pad_id
    assert torch.count_nonzero(table[pad]) == 0
    rest = torch.cat([table[:pad], table[pad + 1:]])
    assert abs(float(rest.std()) - TABLE_INIT_STD) < 0.2 * TABLE_INIT_STD
    assert float(model.value_encoder.embedding.weight.std()) < 2 * TABLE_INIT_STD  # binned table, same init


def test_config_validation():
    with pytest.raises(ValueError, match="headdim"):
        ModelConfig(vocab_size=50, d_model=30, headdim=16)
    with pytest.raises(ValueError, match="value_mode"):
        ModelConfig(vocab_size=50, value_mode="ranks")
    with pytest.raises(ValueError, match="recompute_tokens"):
        ModelConfig(vocab_size=50, recompute_tokens=0)


def test_recompute_tokens_reaches_the_layers_and_keeps_the_gradients():
    # Recomputation (on by default above 8,192 tokens a batch) gives the same loss and gradients as none.
    assert ModelConfig(vocab_size=50).recompute_tokens == 8192
    genes, values, mask = pad_to(*one_cell(), 16)
    grads = []
    for tokens in (None, 8):
        model = tiny_model(recompute_tokens=tokens).train()
        assert [layer.recompute_tokens for layer in model.encoder.layers] == [tokens] * 2
        model.encode(genes.repeat(3, 1), values.repeat(3, 1), mask.repeat(3, 1)).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_continuous_mode_runs():
    model = tiny_model(value_mode="continuous")
    genes, values = one_cell()
    with torch.no_grad():
        out = model.encode(*pad_to(genes, values / 3.0, 16))
    assert torch.isfinite(out).all()


def test_token_heads_choose_the_per_token_outputs_and_a_profile_loss_runs_neither():
    from scmamba2._keys import GENES as G, MASK, PADDING_MASK, PROFILE, TARGET_VALUES, VALUES
    from scmamba2.train.config import TrainConfig
    from scmamba2.train.plan import TrainingPlan

    model = tiny_model(profile_genes=5)
    genes, values, pad = pad_to(*one_cell(), 16)
    batch = {G: genes.repeat(2, 1), VALUES: values.repeat(2, 1), PADDING_MASK: pad.repeat(2, 1)}
    with torch.no_grad():
        full = model(batch)
        none = model(batch, token_heads=())
        only_mvc = model(batch, token_heads=["mvc"])
    assert full.expr_pred.shape == full.mvc_pred.shape == (2, 16)
    assert none.expr_pred is None and none.mvc_pred is None and only_mvc.expr_pred is None
    torch.testing.assert_close(only_mvc.mvc_pred, full.mvc_pred)
    torch.testing.assert_close(none.profile_pred, full.profile_pred)  # per-cell heads always run
    with pytest.raises(ValueError, match="unknown head"):
        model(batch, token_heads=["gep"])

    calls = []
    model.expr_head.register_forward_hook(lambda *a: calls.append("expr"))
    model.mvc_head.register_forward_hook(lambda *a: calls.append("mvc"))
    batch = {**batch, MASK: torch.zeros_like(pad.repeat(2, 1)), TARGET_VALUES: batch[VALUES],
             PROFILE: torch.zeros(2, 5)}
    losses, _ = TrainingPlan(model, TrainConfig(gep_weight=0.0, mvc_weight=0.0))._losses(batch)
    assert calls == [] and set(losses) == {"profile", "loss"}  # the default pretraining: profile loss only
    losses, _ = TrainingPlan(model, TrainConfig())._losses(batch)
    assert sorted(calls) == ["expr", "mvc"] and {"gep", "mvc"} <= set(losses)
