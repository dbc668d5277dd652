"""Attention pooling: the mean at initialisation, weights over valid positions only, and it can learn to weight."""

import pytest
import torch

from scmamba2.nn.pooling import AttentionPool


def _states(seed=0, b=3, length=9, d=16):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(b, length, d, generator=g)
    pad = torch.zeros(b, length, dtype=torch.bool)
    pad[1, 6:] = True
    pad[2, 2:] = True
    return states, pad


def test_starts_as_the_mean_over_valid_positions():
    states, pad = _states()
    valid = (~pad).unsqueeze(-1).float()
    mean = (states * valid).sum(1) / valid.sum(1)
    torch.testing.assert_close(AttentionPool(16, 4)(states, pad), mean)


def test_padding_gets_no_weight_and_changes_nothing():
    torch.manual_seed(0)
    pool = AttentionPool(16, 4)
    torch.nn.init.normal_(pool.score.weight)
    states, pad = _states()
    w = pool.weights(states, pad).detach()
    assert float(w[pad].abs().max()) == 0.0
    torch.testing.assert_close(w.sum(1), torch.ones(3, 4))
    noisy = states.clone()
    noisy[pad] = 1e3 * torch.randn(int(pad.sum()), 16)  # whatever sits at padded positions
    torch.testing.assert_close(pool(noisy, pad), pool(states, pad))
    # a padded row equals the same row cut to its valid length
    torch.testing.assert_close(pool(states[2:, :2], None), pool(states, pad)[2:])


def test_each_head_pools_its_own_channels():
    torch.manual_seed(0)
    pool = AttentionPool(8, 2)
    with torch.no_grad():
        pool.score.bias.copy_(torch.tensor([0.0, 0.0]))
        pool.score.weight.zero_()
        pool.score.weight[1, 0] = 50.0  # head 1 attends to the position with the largest channel 0
    states = torch.zeros(1, 3, 8)
    states[0, :, 0] = torch.tensor([0.0, 1.0, 0.0])
    states[0, :, 4:] = torch.tensor([1.0, 2.0, 3.0]).unsqueeze(-1)
    out = pool(states)[0]
    torch.testing.assert_close(out[4:], torch.full((4,), 2.0), atol=1e-4, rtol=0)  # head 1: position 1 only
    torch.testing.assert_close(out[1:4], torch.zeros(3))  # head 0: the mean of zeros


def test_learns_to_weight_the_informative_position():
    # The target is the value at one marked position among noise: the mean cannot fit it, attention can.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    b, length, d = 64, 12, 8
    states = torch.randn(b, length, d, generator=g)
    where = torch.randint(0, length, (b,), generator=g)
    states[torch.arange(b), where, 0] = 4.0  # the marker channel
    target = states[torch.arange(b), where, 1:].mean(-1)
    pool = AttentionPool(d, 1)
    read = torch.nn.Linear(d, 1)
    opt = torch.optim.Adam([*pool.parameters(), *read.parameters()], lr=0.05)

    def loss():
        return torch.nn.functional.mse_loss(read(pool(states)).squeeze(-1), target)

    first = float(loss())
    for _ in range(300):
        opt.zero_grad()
        out = loss()
        out.backward()
        opt.step()
    assert float(loss()) < 0.2 * first


def test_bad_heads_are_refused():
    with pytest.raises(ValueError, match="pool_heads"):
        AttentionPool(10, 3)
