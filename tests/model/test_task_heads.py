"""Task parts of the model: classifier, DAB with gradient reversal, DSBN, flags, adapt()."""

import pytest
import torch

from scmamba2._keys import BATCH, GENES, LABELS, PADDING_MASK, PERT_FLAGS, VALUES
from scmamba2.data.vocab import GeneVocab
from scmamba2.model import ModelConfig, ScMamba2
from scmamba2.nn.heads import reverse_gradient
from scmamba2.train.losses import elastic_cell_similarity

GENES_N = 12


def _model(**kw):
    vocab = GeneVocab([f"g{i}" for i in range(GENES_N)])
    cfg = ModelConfig(vocab_size=len(vocab), d_model=32, n_layers=1, headdim=16, chunk_size=8, n_bins=5,
                      dropout=0.0, **kw)
    torch.manual_seed(0)
    return ScMamba2(cfg, vocab=vocab).eval()


def _batch(b=4, length=7):
    g = torch.Generator().manual_seed(1)
    genes = torch.randint(4, 4 + GENES_N, (b, length), generator=g)
    genes[:, 0] = 1
    values = torch.randint(0, 5, (b, length), generator=g).float()
    pad = torch.zeros(b, length, dtype=torch.bool)
    pad[0, 5:] = True
    return {GENES: genes, VALUES: values, PADDING_MASK: pad, BATCH: torch.tensor([0, 1, 0, 1][:b]),
            LABELS: torch.tensor([0, 1, 2, 0][:b])}


def test_reverse_gradient_flips_sign():
    x = torch.randn(3, requires_grad=True)
    (reverse_gradient(x, 0.5) * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), -1.0))


def test_heads_shapes_and_dab_reverses_encoder_gradient():
    m = _model(n_classes=3, n_batches=2, dab=True, dab_alpha=1.0)
    out = m(_batch())
    assert out.class_logits.shape == (4, 3) and out.batch_logits.shape == (4, 2)
    # The discriminator's loss gradient on the cell embedding is the negation of the plain one.
    emb = out.cell_emb.detach().requires_grad_(True)
    torch.nn.functional.cross_entropy(m.batch_discriminator(emb), _batch()[BATCH]).backward()
    g_rev = emb.grad.clone()
    emb.grad = None
    torch.nn.functional.cross_entropy(m.batch_discriminator.mlp(emb), _batch()[BATCH]).backward()
    assert torch.allclose(g_rev, -emb.grad)


def test_dsbn_normalises_each_domain_over_valid_tokens():
    m = _model(n_batches=2, dsbn=True).train()
    b = _batch()
    x = torch.randn(4, 7, 32) * 3 + 5
    y = m.dsbn(x, b[BATCH], b[PADDING_MASK])
    for d in (0, 1):
        sel = (b[BATCH] == d).unsqueeze(1) & ~b[PADDING_MASK]
        assert torch.allclose(y[sel].mean(0), torch.zeros(32), atol=1e-4)
    assert torch.equal(y[0, 5:], x[0, 5:])  # padding untouched
    with pytest.raises(ValueError, match="batch"):
        m({k: v for k, v in b.items() if k != BATCH})


def test_batch_embedding_conditions_the_decoders_not_the_embedding():
    model = _model(n_batches=2, batch_embedding=True)
    b = _batch()
    swapped = {**b, BATCH: 1 - b[BATCH]}
    with torch.no_grad():
        out, out_swapped = model(b), model(swapped)
    torch.testing.assert_close(out.cell_emb, out_swapped.cell_emb)  # the embedding does not see the batch
    torch.testing.assert_close(out.states, out_swapped.states)
    assert not torch.allclose(out.expr_pred, out_swapped.expr_pred)  # the decoders do
    assert not torch.allclose(out.mvc_pred, out_swapped.mvc_pred)
    with pytest.raises(ValueError, match="batch indices"):
        model({k: v for k, v in b.items() if k != BATCH})
    # an unknown batch (-1) is decoded with the mean of the batch vectors
    unknown = {**b, BATCH: torch.tensor([-1, 1, -1, 1])}
    torch.testing.assert_close(model.batch_vectors(unknown[BATCH])[0], model.batch_encoder.weight.mean(0))
    torch.testing.assert_close(model.batch_vectors(unknown[BATCH])[1], model.batch_encoder.weight[1])
    with torch.no_grad():
        torch.testing.assert_close(model(unknown).cell_emb, out.cell_emb)


def test_pert_flag_changes_output():
    m = _model(n_pert_flags=2)
    b = _batch()
    base = m(b).expr_pred
    flags = torch.zeros_like(b[GENES])
    flags[:, 3] = 1
    flagged = m({**b, PERT_FLAGS: flags}).expr_pred
    assert not torch.allclose(base, flagged)
    assert torch.allclose(base, m({**b, PERT_FLAGS: torch.zeros_like(flags)}).expr_pred)


def test_config_rejects_batch_parts_without_batches():
    with pytest.raises(ValueError, match="n_batches"):
        ModelConfig(vocab_size=10, dab=True)


def test_adapt_keeps_backbone_and_grows_vocab():
    m = _model()
    vocab2 = m.vocab.extend(["p1", "p2", "g0"])
    assert len(vocab2) == len(m.vocab) + 2 and vocab2["g3"] == m.vocab["g3"]
    m2 = m.adapt(vocab=vocab2, n_classes=3).eval()
    assert m2.config.vocab_size == len(vocab2) and m2.classifier is not None
    b = _batch()
    assert torch.allclose(m.encode_batch(b), m2.encode_batch(b), atol=1e-6)
    w = m2.gene_encoder.embedding.weight
    assert torch.equal(w[: len(m.vocab)], m.gene_encoder.embedding.weight)
    with pytest.raises(ValueError, match="append"):
        m.adapt(vocab=GeneVocab(["x", "y"]))


def test_ecs_lower_when_similarities_are_far_from_threshold():
    clustered = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    middling = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    assert elastic_cell_similarity(clustered, 0.6) < elastic_cell_similarity(middling, 0.6)
