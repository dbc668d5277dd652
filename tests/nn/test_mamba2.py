"""Mamba2Block: parameter layout, chunk-size invariance, causality, and (on a GPU) fused-kernel parity."""

import pytest
import torch

from scmamba2.nn import _kernels
from scmamba2.nn.mamba2 import Mamba2Block


def make_block(dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"d_model": 32, "d_state": 8, "headdim": 16, "chunk_size": 64, "use_kernels": False, **kw}
    return Mamba2Block(**kw).to(dtype)


def test_parameter_names_and_shapes():
    block = make_block(ngroups=2)
    names = {name: tuple(p.shape) for name, p in block.named_parameters()}
    d_inner, nheads, conv_dim = 64, 4, 64 + 2 * 2 * 8
    assert names == {
        "in_proj.weight": (2 * d_inner + 2 * 2 * 8 + nheads, 32),
        "conv1d.weight": (conv_dim, 1, 4),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (32, d_inner),
    }


def test_initialisation_ranges():
    block = make_block(d_model=256, headdim=8)  # 64 heads
    dt = torch.nn.functional.softplus(block.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    A = torch.exp(block.A_log)
    assert A.min() >= 1 and A.max() <= 16
    assert torch.equal(block.D, torch.ones(64))


def test_headdim_must_divide():
    with pytest.raises(ValueError, match="not divisible by headdim"):
        Mamba2Block(d_model=24, headdim=64)


def test_use_kernels_true_without_kernels_fails():
    if _kernels.HAS_KERNELS:
        pytest.skip("kernels are installed")
    with pytest.raises(RuntimeError, match="use_kernels=True"):
        Mamba2Block(d_model=32, headdim=16, use_kernels=True)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("length", [5, 50, 130])
def test_chunk_size_invariance(dtype, tol, length):
    block = make_block(dtype, ngroups=2)
    u = torch.randn(3, length, 32, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        block.chunk_size = 64
        y64 = block(u)
        block.chunk_size = 8
        y8 = block(u)
    assert y64.shape == (3, length, 32) and y64.dtype == dtype
    assert (y64 - y8).abs().max() < tol


def test_causality():
    block = make_block(torch.float64, chunk_size=8)
    u = torch.randn(2, 40, 32, dtype=torch.float64)
    t = 21
    u2 = u.clone()
    u2[:, t] += torch.randn(32, dtype=torch.float64)
    with torch.no_grad():
        y, y2 = block(u), block(u2)
    # Chunks before t's are untouched bit for bit; inside t's chunk (from 16) the factored scan's per-chunk
    # reference reads the whole chunk, so earlier positions there may move by rounding only.
    assert torch.equal(y[:, :16], y2[:, :16])
    torch.testing.assert_close(y[:, :t], y2[:, :t], rtol=0, atol=1e-12)
    assert (y[:, t] - y2[:, t]).abs().max() > 1e-6  # the change does reach position t ...
    assert (y[:, -1] - y2[:, -1]).abs().max() > 1e-12  # ... and later positions


def test_backward_reaches_every_parameter():
    block = make_block(chunk_size=8)
    block(torch.randn(2, 19, 32)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def _graph_names(t):
    names, todo, seen = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo += [nxt for nxt, _ in fn.next_functions]
    return names


def test_long_sequences_take_autograd_through_the_scan_with_the_same_gradients(monkeypatch):
    import scmamba2.nn.mamba2 as mamba2

    def run(length, limit):  # (whether the hand-written backward ran, the parameters' gradients)
        monkeypatch.setattr(mamba2, "MANUAL_BACKWARD_MAX_LEN", limit)
        block = make_block(dtype=torch.float64, chunk_size=8)
        out = block(torch.randn(2, length, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
        manual = any(n in ("SSDScanBackward", "FactoredScanBackward") for n in _graph_names(out))
        out.square().sum().backward()
        return manual, {n: p.grad for n, p in block.named_parameters()}

    assert run(16, 16)[0]  # up to the limit: the hand-written backward
    long_manual, long_grads = run(17, 16)
    assert not long_manual  # above it: autograd
    forced_manual, forced_grads = run(17, 10**9)  # the same long input through the hand-written backward
    assert forced_manual
    for n, g in forced_grads.items():
        torch.testing.assert_close(g, long_grads[n], rtol=1e-9, atol=1e-11)


def test_long_scans_use_long_chunks_with_the_same_output(monkeypatch):
    """Above MANUAL_BACKWARD_MAX_LEN the scan runs chunks of at least LONG_SCAN_CHUNK; the output is the same."""
    import scmamba2.nn.mamba2 as mamba2

    used = []
    real = mamba2.ssd_chunked
    monkeypatch.setattr(mamba2, "ssd_chunked", lambda *a, **k: used.append(a[5]) or real(*a, **k))
    monkeypatch.setattr(mamba2, "LONG_SCAN_CHUNK", 16)
    block = make_block(dtype=torch.float64, chunk_size=4).eval()
    u = torch.randn(2, 40, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    outs = []
    for limit in (10**9, 39):  # first every length is short, then 40 tokens are long
        monkeypatch.setattr(mamba2, "MANUAL_BACKWARD_MAX_LEN", limit)
        with torch.no_grad():
            outs.append(block(u))
    assert used == [4, 16]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and _kernels.HAS_KERNELS), reason="needs CUDA and mamba_ssm")
@pytest.mark.parametrize(("dtype", "fwd_tol", "grad_tol"), [(torch.float32, 2e-3, 5e-3), (torch.bfloat16, 3e-2, 6e-2)])
def test_fused_matches_pure(dtype, fwd_tol, grad_tol):
    torch.manual_seed(0)
    pure = Mamba2Block(d_model=128, d_state=64, headdim=64, chunk_size=64, use_kernels=False).cuda()
    fused = Mamba2Block(d_model=128, d_state=64, headdim=64, chunk_size=64, use_kernels=True).cuda()
    fused.load_state_dict(pure.state_dict())  # the same parameters drive both paths
    u = torch.randn(4, 300, 128, device="cuda")
    outs, grads = [], []
    for block in (pure, fused):
        x = u.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            y = block(x)
        y.float().square().mean().backward()
        outs.append(y.float())
        grads.append([x.grad.float()] + [p.grad.float() for p in block.parameters()])
        block.zero_grad()

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()

    assert rel(outs[1], outs[0]) < fwd_tol
    for g_fused, g_pure in zip(grads[1], grads[0]):
        assert rel(g_fused, g_pure) < grad_tol


@pytest.mark.parametrize(("length", "tile_len", "chunk_size"), [(103, 20, 8), (130, 37, 16), (64, 64, 8), (50, 3, 8)])
def test_tiled_inference_matches_untiled(length, tile_len, chunk_size):
    # Tile lengths that are not multiples of the chunk size, sequences that are not multiples of the tile:
    # the SSM state and the causal-conv context must both be carried across tiles.
    block = make_block(ngroups=2, chunk_size=chunk_size, tile_len=None).eval()
    u = torch.randn(2, length, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        untiled = block(u)
        block.tile_len = tile_len
        tiled = block(u)
    assert (tiled - untiled).abs().max() < 1e-5
    with torch.inference_mode():
        assert (block(u) - untiled).abs().max() < 1e-5


def test_tiling_is_off_when_recording_gradients():
    block = make_block(chunk_size=8, tile_len=10)
    calls = []
    original = block._mix
    block._mix = lambda *a: calls.append(a[0].shape[1]) or original(*a)
    u = torch.randn(1, 35, 32)
    block(u).sum().backward()  # training: one untiled call
    with torch.no_grad():
        block(u)  # inference: tiles of 10, 10, 10, 5
    assert calls == [35, 10, 10, 10, 5]


def test_fused_and_pure_share_parameter_names():
    # One module class serves both paths: the state dict of a block built for the kernels loads on the pure path.
    pure = make_block(use_kernels=False)
    auto = make_block(use_kernels=None, seed=1)
    assert list(pure.state_dict()) == list(auto.state_dict())
    auto.load_state_dict(pure.state_dict(), strict=True)


@pytest.mark.parametrize("length", [2, 11, 1300])  # 1300: the weight gradient's token blocks (1,024) split a row
@pytest.mark.parametrize("with_context", [False, True])
@pytest.mark.parametrize("conv_bias", [False, True])
def test_causal_conv_matches_conv1d_with_gradients(length, with_context, conv_bias):
    # The channels-last conv + silu (and its hand-written backward) against torch's depthwise conv1d.
    torch.manual_seed(3)
    block = make_block(torch.float64, conv_bias=conv_bias)
    xbc = torch.randn(2, length, block.conv_dim, dtype=torch.float64, requires_grad=True)  # 2: shorter than the kernel
    context = torch.randn(2, block.d_conv - 1, block.conv_dim, dtype=torch.float64) if with_context else None
    out = block._causal_conv_silu(xbc, context)
    assert out.is_contiguous()
    left = torch.zeros(2, block.d_conv - 1, block.conv_dim, dtype=torch.float64) if context is None else context
    ref = torch.nn.functional.conv1d(torch.cat([left, xbc], 1).transpose(1, 2), block.conv1d.weight,
                                     block.conv1d.bias, groups=block.conv_dim).transpose(1, 2)
    ref = torch.nn.functional.silu(ref)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    w = torch.randn_like(out)
    params = [xbc, block.conv1d.weight] + ([block.conv1d.bias] if conv_bias else [])
    got = torch.autograd.grad((out * w).sum(), params)
    want = torch.autograd.grad((ref * w).sum(), params)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # the inference path: the same multiply-adds, in place
        torch.testing.assert_close(block._causal_conv_silu(xbc, context), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("batch", "length", "block_tokens"), [(5, 7, 3), (5, 7, 16), (3, 2, 1), (2, 9, 100)])
def test_conv_weight_grads_by_blocks_match_the_whole_sums(batch, length, block_tokens):
    # Blocks inside a row (block_tokens < length), several rows a block with a partial last group, rows shorter
    # than the kernel: the same sums as over the whole tensors.
    from scmamba2.nn.causal_conv import _weight_grads

    torch.manual_seed(0)
    k, c = 4, 6
    g, x = torch.randn(batch, length, c, dtype=torch.float64), torch.randn(batch, length, c, dtype=torch.float64)
    d_w, d_b = _weight_grads(g, x, k, block_tokens=block_tokens)
    want = torch.zeros(c, k, dtype=torch.float64)
    for j in range(k):
        shift = k - 1 - j
        if shift < length:
            want[:, j] = (g[:, shift:] * x[:, : length - shift]).sum((0, 1))
    torch.testing.assert_close(d_w, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d_b, g.sum((0, 1)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("group_size", [None, 8])
def test_gated_norm_sum_matches_the_norms_with_gradients(group_size):
    # The summed gated norm (hand-written backward) against the module's own per-direction norms under autograd.
    from scmamba2.nn.mamba2 import GatedRMSNorm

    torch.manual_seed(4)
    norm = GatedRMSNorm(16, group_size=group_size).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    ys = [torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    z = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    out = norm.summed(ys, z)
    ref = norm(ys[0], z) + norm(ys[1], z)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(out)
    leaves = [*ys, z, norm.weight]
    got = torch.autograd.grad((out * w).sum(), leaves)
    want = torch.autograd.grad((ref * w).sum(), leaves)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda a, b, c: norm.summed([a, b], c), (*ys, z))
