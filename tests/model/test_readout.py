"""The cell embedding reads every gene: its receptive field, and the profile decoder's checkpoint round trip."""

import numpy as np
import pytest
import torch

from scmamba2 import ModelConfig, ScMamba2
from scmamba2._keys import GENES, PADDING_MASK, VALUES
from scmamba2.data.vocab import GeneVocab

CFG = dict(d_model=32, n_layers=2, d_state=16, headdim=16, chunk_size=16, dropout=0.0)


def far_share(pooling: str, length: int = 201, near: int = 50, seed: int = 0) -> float:
    """Share of the cell embedding's input gradient (|d emb / d token embedding|, summed) that comes from the
    genes at positions > ``near`` of a ``length - 1``-gene cell."""
    torch.manual_seed(seed)
    model = ScMamba2(ModelConfig(vocab_size=length + 4, cell_pooling=pooling, **CFG)).eval()
    genes = torch.arange(4, length + 3).unsqueeze(0)
    genes = torch.cat([torch.ones(1, 1, dtype=torch.long), genes], 1)  # <cls> first
    values = torch.rand(1, length, generator=torch.Generator().manual_seed(seed)) * 3
    x = (model.gene_encoder(genes) + model.value_encoder(values)).detach().requires_grad_(True)
    pad = torch.zeros(1, length, dtype=torch.bool)
    emb = model.cell_embedding(model.encoder(x, pad), pad)
    share = []
    directions = torch.randn(4, emb.shape[1], generator=torch.Generator().manual_seed(seed))
    for r in directions:  # a few random output directions, so no coordinate is favoured
        (g,) = torch.autograd.grad(emb[0] @ r, x, retain_graph=True)
        per_pos = g[0].abs().sum(-1)
        share.append(float(per_pos[near + 1:].sum() / per_pos.sum()))
    return float(np.mean(share))


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_pooled_readouts_see_genes_far_from_cls(pooling):
    assert far_share(pooling) >= 0.3


def test_attention_pooling_starts_as_the_mean():
    torch.manual_seed(0)
    a = ScMamba2(ModelConfig(vocab_size=20, cell_pooling="attention", **CFG))
    m = ScMamba2(ModelConfig(vocab_size=20, cell_pooling="mean", **CFG))
    states, pad = torch.randn(2, 5, 32), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    torch.testing.assert_close(a.cell_embedding(states, pad), m.cell_embedding(states, pad))


def test_cls_readout_sees_mostly_its_neighbours():
    # The reason for the mean: the <cls> output hears far genes only through the decayed scan state.
    assert far_share("cls") < far_share("mean") / 2


def test_mean_is_the_default():
    assert ModelConfig(vocab_size=10).cell_pooling == "mean"


def test_old_configs_without_the_field_keep_cls():
    d = ModelConfig(vocab_size=10).to_dict()
    del d["cell_pooling"], d["profile_genes"], d["profile_hidden"]
    assert ModelConfig.from_dict(d).cell_pooling == "cls"


@pytest.mark.parametrize("hidden", [0, 24])
def test_profile_head_round_trip(tmp_path, hidden):
    vocab = GeneVocab([f"g{i}" for i in range(20)])
    model = ScMamba2(ModelConfig(vocab_size=len(vocab), profile_genes=6, profile_hidden=hidden, **CFG), vocab=vocab)
    model.profile_head.set_panel(np.arange(4, 10), np.linspace(0, 1, 6), np.linspace(1, 2, 6))
    batch = {GENES: torch.tensor([[1, 5, 7, 9]]), VALUES: torch.tensor([[0.0, 1.0, 2.0, 0.5]]),
             PADDING_MASK: torch.zeros(1, 4, dtype=torch.bool)}
    model.eval()
    out = model(batch)
    assert out.profile_pred.shape == (1, 6)
    model.save_pretrained(tmp_path)
    back = ScMamba2.from_pretrained(tmp_path).eval()
    assert back.profile_head.gene_ids.tolist() == list(range(4, 10))
    torch.testing.assert_close(back.profile_head.gene_std, model.profile_head.gene_std)
    torch.testing.assert_close(back(batch).profile_pred, out.profile_pred)
    with pytest.raises(ValueError, match="panel"):
        model.profile_head.set_panel(np.arange(3), np.zeros(3), np.ones(3))


def test_attention_pooling_round_trip(tmp_path):
    vocab = GeneVocab([f"g{i}" for i in range(20)])
    model = ScMamba2(ModelConfig(vocab_size=len(vocab), cell_pooling="attention", pool_heads=2, **CFG), vocab=vocab)
    torch.nn.init.normal_(model.pool.score.weight)  # a trained pooling, not the mean it starts as
    batch = {GENES: torch.tensor([[1, 5, 7, 9], [1, 6, 0, 0]]), VALUES: torch.tensor([[0.0, 1.0, 2.0, 0.5]] * 2),
             PADDING_MASK: torch.tensor([[False] * 4, [False, False, True, True]])}
    model.eval()
    out = model(batch).cell_emb
    model.save_pretrained(tmp_path)
    back = ScMamba2.from_pretrained(tmp_path).eval()
    assert back.config.cell_pooling == "attention" and back.config.pool_heads == 2
    torch.testing.assert_close(back(batch).cell_emb, out)
    mean = ScMamba2(ModelConfig(vocab_size=len(vocab), cell_pooling="mean", **CFG), vocab=vocab).eval()
    mean.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("pool.")})
    assert not torch.allclose(mean(batch).cell_emb, out)  # the pooling weights matter
