"""The readout benchmark's decoded-profile transform: recovered from embed's profile-metric output exactly."""

import numpy as np
import torch

from scmamba2 import ModelConfig, ScMamba2
from scmamba2.bench.readout import _decoded_scaled
from scmamba2.tasks.embed import _readout_metric


def _model(seed, d_model=16):
    torch.manual_seed(seed)
    return ScMamba2(ModelConfig(vocab_size=30, d_model=d_model, n_layers=1, d_state=8, headdim=d_model,
                                chunk_size=8, profile_genes=40))


def _want(model, z):
    w = model.profile_head.decoder.weight.detach().double().numpy()
    b = model.profile_head.decoder.bias.detach().double().numpy()
    decoded = z @ w.T + b
    return (decoded - decoded.mean(0)) / decoded.std(0)


def test_decoded_profile_is_recovered_from_the_profile_metric_embedding():
    model = _model(0)
    z = np.random.default_rng(0).normal(size=(25, 16))
    e = z @ _readout_metric(model, None).numpy()  # what embed writes
    np.testing.assert_allclose(_decoded_scaled(e, [model]), _want(model, z), atol=1e-8)


def test_models_side_by_side_decode_block_by_block():
    a, b = _model(0), _model(1, d_model=8)
    rng = np.random.default_rng(1)
    za, zb = rng.normal(size=(25, 16)), rng.normal(size=(25, 8))
    e = np.hstack([za @ _readout_metric(a, None).numpy(), zb @ _readout_metric(b, None).numpy()])
    np.testing.assert_allclose(_decoded_scaled(e, [a, b]), np.hstack([_want(a, za), _want(b, zb)]), atol=1e-8)
