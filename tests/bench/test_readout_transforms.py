"""The readout benchmark's decoded-profile transform: recovered from embed's profile-metric output exactly."""

import numpy as np
import torch

from scmamba2 import ModelConfig, ScMamba2
from scmamba2.bench.readout import _decoded_scaled
from scmamba2.tasks.embed import _readout_metric


def test_decoded_profile_is_recovered_from_the_profile_metric_embedding():
    torch.manual_seed(0)
    model = ScMamba2(ModelConfig(vocab_size=30, d_model=16, n_layers=1, d_state=8, headdim=16, chunk_size=8,
                                 profile_genes=40))
    z = np.random.default_rng(0).normal(size=(25, 16))
    e = z @ _readout_metric(model, None).numpy()  # what embed writes
    w = model.profile_head.decoder.weight.detach().double().numpy()
    b = model.profile_head.decoder.bias.detach().double().numpy()
    decoded = z @ w.T + b
    want = (decoded - decoded.mean(0)) / decoded.std(0)
    np.testing.assert_allclose(_decoded_scaled(e, model), want, atol=1e-8)
