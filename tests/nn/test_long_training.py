"""Training on sequences longer than a tile, tile-sized steps throughout: the untiled layer's outputs and gradients."""

import pytest
import torch

from scmamba2.nn.bidirectional import BiMamba2Layer

D = 32


def make_layer(tile_len, bias):
    torch.manual_seed(0)
    layer = BiMamba2Layer(D, d_state=8, headdim=16, chunk_size=8, use_kernels=False, tile_len=tile_len).double().train()
    if bias:
        layer.block.in_proj.bias = torch.nn.Parameter(torch.randn(layer.block.in_proj.out_features).double() * 0.1)
        layer.block.out_proj.bias = torch.nn.Parameter(torch.randn(D).double() * 0.1)
    with torch.no_grad():  # decays that carry across tiles, so that a lost state or its gradient would show
        layer.block.A_log.fill_(-3.0)
    return layer


@pytest.mark.parametrize("length", [40, 37, 17])
@pytest.mark.parametrize("bias", [False, True])
def test_tiled_training_equals_the_untiled_layer_with_gradients(length, bias):
    x = torch.randn(2, length, D, dtype=torch.float64)
    weights = torch.randn(2, length, D, dtype=torch.float64)
    results = []
    for tile_len in (None, 16):
        layer = make_layer(tile_len, bias)
        calls = []
        scan = layer.block.conv_scan
        layer.block.conv_scan = lambda xbc, dt, state=None: calls.append(tuple(xbc.shape[:2])) or scan(xbc, dt, state)
        leaf = x.clone().requires_grad_(True)
        out = layer(leaf)
        (out * weights).sum().backward()
        results.append((out.detach(), leaf.grad, {n: p.grad for n, p in layer.named_parameters()}))
        if tile_len is not None:  # each direction scans every tile once, on its own (batch 2, not the doubled 4)
            tiles = -(-length // 16)
            assert len(calls) == 2 * tiles and all(b == 2 and n <= 16 for b, n in calls)
    (o1, g1, p1), (o2, g2, p2) = results
    torch.testing.assert_close(o2, o1, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g2, g1, rtol=1e-8, atol=1e-10)
    for name in p1:
        torch.testing.assert_close(p2[name], p1[name], rtol=1e-8, atol=1e-10, msg=name)


def test_tiled_training_under_bfloat16_autocast_equals_the_whole_sequence_path():
    # The tiled path takes in_proj's output back to float32 like the whole-sequence path does, so under autocast the
    # two compute the same arithmetic between the projections: outputs and input gradients equal up to float32
    # rounding. The weight gradients of the projections are bfloat16 matmuls summed over tiles instead of over the
    # whole sequence at once: equal up to bfloat16 rounding.
    x = torch.randn(1, 40, D)
    results = []
    for tile_len in (None, 16):
        torch.manual_seed(0)
        layer = BiMamba2Layer(D, d_state=8, headdim=16, chunk_size=8, use_kernels=False, tile_len=tile_len).train()
        leaf = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(leaf)
        out.float().sum().backward()
        results.append((out.detach().float(), leaf.grad, [p.grad for p in layer.parameters()]))
    (o1, g1, p1), (o2, g2, p2) = results
    torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-5)
    for a, b in zip(p2, p1):
        assert float((a - b).norm() / b.norm()) < 1e-2
