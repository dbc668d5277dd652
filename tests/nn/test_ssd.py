"""The chunked SSD scan against the naive sequential recurrence (written here: the test is the reference)."""

import pytest
import torch

from scmamba2.nn.ssd import ssd_chunked


def ssd_reference(x, dt, A, B, C, initial_state=None):
    """Naive recurrence S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T, y_t = S_t C_t, one position at a time."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    Bh = B.repeat_interleave(h // g, dim=2)  # (b, l, h, n): head i uses group i // (h // g)
    Ch = C.repeat_interleave(h // g, dim=2)
    state = torch.zeros(b, h, p, n, dtype=x.dtype) if initial_state is None else initial_state.clone()
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]  # (b, h, 1, 1)
        update = (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]  # (b, h, p, n)
        state = decay * state + update
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    return torch.stack(ys, dim=1), state


def random_inputs(b, l, h, p, g, n, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, h, p, generator=gen, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(b, l, h, generator=gen, dtype=dtype) - 1.0)
    A = -torch.rand(h, generator=gen, dtype=dtype) * 4 - 0.5
    B = torch.randn(b, l, g, n, generator=gen, dtype=dtype)
    C = torch.randn(b, l, g, n, generator=gen, dtype=dtype)
    s0 = torch.randn(b, h, p, n, generator=gen, dtype=dtype)
    return x, dt, A, B, C, s0


@pytest.mark.parametrize("chunk_size", [4, 8, 16])
@pytest.mark.parametrize("length", [1, 7, 16, 37])
@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("with_initial", [False, True])
def test_chunked_matches_reference(chunk_size, length, ngroups, with_initial):
    x, dt, A, B, C, s0 = random_inputs(2, length, 4, 3, ngroups, 5, seed=length * 100 + chunk_size + ngroups)
    init = s0 if with_initial else None
    y_ref, s_ref = ssd_reference(x, dt, A, B, C, init)
    y, s = ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=init, return_final_state=True)
    assert y.shape == (2, length, 4, 3) and y.dtype == torch.float64
    assert s.shape == (2, 4, 3, 5)
    assert (y - y_ref).abs().max() < 1e-6
    assert (s - s_ref).abs().max() < 1e-6
    # Without return_final_state only y comes back.
    assert torch.equal(ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=init), y)


def test_float32_close_and_dtype_kept():
    x, dt, A, B, C, _ = random_inputs(2, 50, 4, 8, 1, 16, seed=3)
    y_ref, _ = ssd_reference(x, dt, A, B, C)
    y = ssd_chunked(x.float(), dt.float(), A.float(), B.float(), C.float(), chunk_size=16)
    assert y.dtype == torch.float32
    assert (y.double() - y_ref).abs().max() < 1e-4 * (1 + y_ref.abs().max())
    y16 = ssd_chunked(x.bfloat16(), dt.float(), A.float(), B.bfloat16(), C.bfloat16(), chunk_size=16)
    assert y16.dtype == torch.bfloat16


def test_strong_decay_is_stable():
    # Large dt * |A| gives cumulative sums of several thousand inside a chunk: no inf / nan may appear.
    x, dt, A, B, C, _ = random_inputs(1, 64, 2, 4, 1, 8, seed=4, dtype=torch.float32)
    dt = dt * 50
    A = A * 20
    y, s = ssd_chunked(x, dt, A, B, C, chunk_size=64, return_final_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    y_ref, _ = ssd_reference(x.double(), dt.double(), A.double(), B.double(), C.double())
    assert (y.double() - y_ref).abs().max() < 1e-3 * (1 + y_ref.abs().max())


@pytest.mark.parametrize("manual", [False, True])
def test_gradcheck_tiny(manual):
    x, dt, A, B, C, s0 = random_inputs(1, 6, 2, 2, 1, 3, seed=5)
    inputs = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C, s0)]

    def f(x, dt, A, B, C, s0):
        return ssd_chunked(x, dt, A, B, C, chunk_size=4, initial_state=s0, return_final_state=True,
                           manual_backward=manual)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("manual", [False, True])
def test_gradients_match_reference(manual):
    x, dt, A, B, C, s0 = random_inputs(2, 21, 4, 3, 2, 5, seed=6)
    grads = []
    for fn in ("ref", "chunked"):
        leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C, s0)]
        if fn == "ref":
            y, s = ssd_reference(*leaves)
        else:
            y, s = ssd_chunked(*leaves[:5], chunk_size=8, initial_state=leaves[5], return_final_state=True,
                               manual_backward=manual)
        (y.sin().sum() + s.cos().sum()).backward()
        grads.append([t.grad for t in leaves])
    for g_ref, g in zip(*grads):
        assert (g - g_ref).abs().max() < 1e-8


def test_padding_tail_does_not_change_earlier_outputs():
    x, dt, A, B, C, _ = random_inputs(1, 20, 2, 3, 1, 4, seed=7)
    y_short = ssd_chunked(x[:, :13], dt[:, :13], A, B[:, :13], C[:, :13], chunk_size=8)
    y_long = ssd_chunked(x, dt, A, B, C, chunk_size=8)
    assert (y_long[:, :13] - y_short).abs().max() < 1e-12


def test_shape_errors():
    x, dt, A, B, C, _ = random_inputs(1, 5, 3, 2, 1, 4, seed=8)
    with pytest.raises(ValueError, match="multiple of the number of groups"):
        ssd_chunked(x, dt, A, B.expand(-1, -1, 2, -1), C.expand(-1, -1, 2, -1), chunk_size=4)
    with pytest.raises(ValueError, match="dt must have shape"):
        ssd_chunked(x, dt[:, :4], A, B, C, chunk_size=4)
    with pytest.raises(ValueError, match="initial_state"):
        ssd_chunked(x, dt, A, B, C, chunk_size=4, initial_state=torch.zeros(1, 3, 2, 5, dtype=x.dtype))


@pytest.mark.parametrize("manual", [False, True])
def test_gradients_with_skip_and_state_only_losses(manual):
    # Both backward paths: D's gradient, and losses that read only y or only the final state.
    x, dt, A, B, C, s0 = random_inputs(2, 19, 4, 3, 1, 5, seed=9)
    D = torch.randn(4, dtype=torch.float64)
    for use in ("y", "state"):
        grads = []
        for fn in ("ref", "chunked"):
            leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C, s0, D)]
            if fn == "ref":
                y, s = ssd_reference(*leaves[:6])
                y = y + leaves[6][:, None] * leaves[0]
            else:
                y, s = ssd_chunked(*leaves[:5], chunk_size=8, initial_state=leaves[5], return_final_state=True,
                                   D=leaves[6], manual_backward=manual)
            (y.sin().sum() if use == "y" else s.cos().sum()).backward()
            grads.append([torch.zeros_like(t) if t.grad is None else t.grad for t in leaves])
        for g_ref, g in zip(*grads):
            assert (g - g_ref).abs().max() < 1e-8


@pytest.mark.parametrize("manual", [False, True])
def test_autocast_keeps_the_scan_in_float32(manual):
    # Under bf16 autocast the scan still computes in float32 (forward and either backward path).
    x, dt, A, B, C, _ = random_inputs(2, 24, 4, 3, 1, 5, seed=10, dtype=torch.float32)
    leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ssd_chunked(*leaves, chunk_size=8, manual_backward=manual)
    y.square().sum().backward()
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C)]
    ssd_chunked(*ref_leaves, chunk_size=8, manual_backward=manual).square().sum().backward()
    assert y.dtype == torch.float32
    for a, b in zip(leaves, ref_leaves):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-5)
