"""Long-sequence inference with shared projections: equal to the untiled layer and to one sweep per direction."""

import pytest
import torch

from scmamba2.nn import bidirectional
from scmamba2.nn.bidirectional import BiMamba2Layer, reverse_valid

D = 32


def make_layer(tile_len, bias=False):
    torch.manual_seed(0)
    layer = BiMamba2Layer(D, d_state=8, headdim=16, chunk_size=8, use_kernels=False, tile_len=tile_len).eval()
    if bias:  # the reference layout allows biases in both projections
        layer.block.in_proj.bias = torch.nn.Parameter(torch.randn(layer.block.in_proj.out_features) * 0.1)
        layer.block.out_proj.bias = torch.nn.Parameter(torch.randn(D) * 0.1)
    with torch.no_grad():  # decays that carry well across tiles, so that a lost state would show
        layer.block.A_log.fill_(-3.0)
    return layer


def per_direction(layer, x):
    """The sweep per direction (each tile projected twice), written out as the reference."""
    h = layer.norm(x)
    lengths = torch.full((x.shape[0],), x.shape[1])
    return x + layer.block(h) + reverse_valid(layer.block(reverse_valid(h, lengths)), lengths)


@pytest.mark.parametrize("length", [40, 37, 17])  # whole tiles, a short last tile, one token over a tile
@pytest.mark.parametrize("bias", [False, True])
def test_shared_sweeps_equal_the_untiled_layer_and_one_sweep_per_direction(length, bias):
    x = torch.randn(2, length, D)
    tiled, untiled = make_layer(16, bias), make_layer(None, bias)
    untiled.load_state_dict(tiled.state_dict())
    with torch.no_grad():
        got = tiled(x)
        assert torch.allclose(got, untiled(x), atol=1e-5, rtol=1e-4)
        assert torch.allclose(got, per_direction(tiled, x), atol=1e-5, rtol=1e-4)


def test_padded_batch_keeps_one_sweep_per_direction(monkeypatch):
    # Samples of different lengths do not hold the same positions in a tile in both directions: the per-direction
    # sweep runs, and every sample still equals running it alone (which takes the shared sweeps).
    layer = make_layer(16)
    x = torch.randn(2, 40, D)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[1, 30:] = True
    with torch.no_grad():
        alone = layer(x[1:, :30])
        monkeypatch.setattr(bidirectional, "shared_projection_sweeps",
                            lambda *a: pytest.fail("shared sweeps on a padded batch"))
        got = layer(x, mask)
    assert torch.allclose(got[1, :30], alone[0], atol=1e-5, rtol=1e-4)


def test_shared_sweeps_under_bfloat16_autocast_carry_float32_states(monkeypatch):
    # Under autocast the backward direction's carried state stays in the compute dtype, as the forward direction's
    # (conv_scan's) does, and the result stays bf16-close to the untiled layer under autocast.
    from scmamba2.nn import long_inference

    states = []
    exit_state = long_inference._exit_state
    monkeypatch.setattr(long_inference, "_exit_state", lambda *a: states.append(exit_state(*a)) or states[-1])
    tiled, untiled = make_layer(16), make_layer(None)
    untiled.load_state_dict(tiled.state_dict())
    x = torch.randn(1, 40, D)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = tiled(x), untiled(x)
    assert states and all(t.dtype == torch.float32 for s in states for t in s)
    assert float((got.float() - want.float()).norm() / want.float().norm()) < 2e-2
