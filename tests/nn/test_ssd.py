"""The chunked SSD scan against the naive sequential recurrence (written here: the test is the reference)."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scmamba2.nn import ssd
from scmamba2.nn.ssd import ssd_chunked


@pytest.fixture(params=["factored", "segsum"])
def path(request, monkeypatch):
    """Run a test on each form of the scan: the factored one (forced at any decay range) and the segment-sum one."""
    limit = math.inf if request.param == "factored" else -1.0
    for dtype in (torch.float32, torch.float64):
        monkeypatch.setitem(ssd.FACTORED_MAX_RANGE, dtype, limit)
    return request.param


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
def test_chunked_matches_reference(chunk_size, length, ngroups, with_initial, path):
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


def test_float32_close_and_dtype_kept(path):
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
def test_gradcheck_tiny(manual, path):
    x, dt, A, B, C, s0 = random_inputs(1, 6, 2, 2, 1, 3, seed=5)
    inputs = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C, s0)]

    def f(x, dt, A, B, C, s0):
        return ssd_chunked(x, dt, A, B, C, chunk_size=4, initial_state=s0, return_final_state=True,
                           manual_backward=manual)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("manual", [False, True])
def test_gradients_match_reference(manual, path):
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


def test_padding_tail_does_not_change_earlier_outputs(path):
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
def test_gradients_with_skip_and_state_only_losses(manual, path):
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


class _MatmulDtypes(TorchDispatchMode):
    """Records the operand dtypes of every matmul dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.bmm, torch.ops.aten.mm, torch.ops.aten.baddbmm):
            self.seen |= {a.dtype for a in args if isinstance(a, torch.Tensor)}
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("manual", [False, True])
def test_autocast_keeps_the_scan_in_float32_under_autograd(manual, path):
    # Under bf16 autocast the scan computes in float32 when it is differentiated (forward and either backward path):
    # bfloat16 outputs would make the dt and A gradients, differences of nearly equal terms, far noisier.
    x, dt, A, B, C, _ = random_inputs(2, 24, 4, 3, 1, 5, seed=10, dtype=torch.float32)
    leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C)]
    with _MatmulDtypes() as rec:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = ssd_chunked(*leaves, chunk_size=8, manual_backward=manual)
        y.square().sum().backward()
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C)]
    ssd_chunked(*ref_leaves, chunk_size=8, manual_backward=manual).square().sum().backward()
    assert y.dtype == torch.float32
    assert rec.seen == {torch.float32}
    for a, b in zip(leaves, ref_leaves):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_autocast_inference_takes_bfloat16_matmuls_in_the_factored_form(path):
    # Without autograd the factored form's matmuls take bfloat16 operands (float32 everywhere else): bf16-close to
    # float32; the segment-sum form stays float32, exact.
    x, dt, A, B, C, s0 = random_inputs(2, 40, 4, 3, 1, 5, seed=13, dtype=torch.float32)
    with torch.no_grad():
        with _MatmulDtypes() as rec, torch.autocast("cpu", dtype=torch.bfloat16):
            y, final = ssd_chunked(x, dt, A, B, C, chunk_size=8, initial_state=s0, return_final_state=True)
        y_ref, final_ref = ssd_chunked(x, dt, A, B, C, chunk_size=8, initial_state=s0, return_final_state=True)
    low = path == "factored"
    assert rec.seen == ({torch.bfloat16} if low else {torch.float32})
    assert y.dtype == final.dtype == torch.float32
    tol = 2e-2 if low else 1e-6
    assert (y - y_ref).norm() / y_ref.norm() < tol
    assert (final - final_ref).norm() / final_ref.norm() < tol


def test_bfloat16_matmuls_only_under_bfloat16_autocast():
    # float16 autocast (its range cannot hold the factors) and float64 inputs keep the compute dtype's matmuls.
    x, dt, A, B, C, _ = random_inputs(1, 16, 2, 3, 1, 4, seed=12, dtype=torch.float32)
    assert ssd._matmul_dtype(x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ssd._matmul_dtype(x) == torch.bfloat16
        assert ssd._matmul_dtype(x.double()) is None
    with torch.autocast("cpu", dtype=torch.float16):
        assert ssd._matmul_dtype(x) is None


def test_default_dispatch_by_decay_range(monkeypatch):
    # Moderate decays take the factored form, strong ones the segment-sum form (both with and without autograd).
    calls = []
    monkeypatch.setattr(ssd, "factored_forward", lambda *a: calls.append("factored") or ssd._forward(*a[:8], inplace=True))
    x, dt, A, B, C, _ = random_inputs(1, 32, 2, 4, 1, 8, seed=11, dtype=torch.float32)
    ssd_chunked(x, dt, A, B, C, chunk_size=16)
    assert calls == ["factored"]
    ssd_chunked(x, dt * 50, A * 20, B, C, chunk_size=16)  # range in the thousands
    assert calls == ["factored"]
    # The chunk: the given one, else its half or quarter, else none (segment-sum form).
    limit = ssd.FACTORED_MAX_RANGE[torch.float32]
    unit = torch.full((1, 64, 1), limit / 32 * 0.99)  # log-decay per step for A = -1: 0.99 x limit per 32 steps
    A1 = -torch.ones(1)
    assert [ssd._factored_chunk(unit * f, A1, 32) for f in (1, 1.5, 3, 5)] == [32, 16, 8, None]


@pytest.mark.parametrize("manual", [False, True])
def test_factored_accurate_at_its_largest_range(manual):
    # float32 at a chunk decay range just under the limit (factors up to exp(+-60)): forward and gradients as
    # accurate as the segment-sum form against the float64 recurrence.
    limit = ssd.FACTORED_MAX_RANGE[torch.float32]
    x, dt, A, B, C, s0 = random_inputs(2, 64, 2, 4, 1, 8, seed=12)
    A = -torch.tensor([1.0, 4.0], dtype=torch.float64)
    dt = dt / (dt * A.abs()).reshape(2, 2, 32, 2).sum(2).amax() * 0.98 * limit  # largest chunk range 0.98 x limit
    assert ssd._factored_chunk(dt.float(), A.float(), 32) == 32
    assert ssd._factored_chunk(dt.float() * 1.1, A.float(), 32) == 16
    leaves64 = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C, s0)]
    y_ref, s_ref = ssd_reference(*leaves64)
    (y_ref.sin().sum() + s_ref.cos().sum()).backward()
    leaves = [t.float().requires_grad_(True) for t in (x, dt, A, B, C, s0)]
    y, s = ssd_chunked(*leaves[:5], chunk_size=32, initial_state=leaves[5], return_final_state=True,
                       manual_backward=manual)
    (y.sin().sum() + s.cos().sum()).backward()
    assert torch.isfinite(y).all()
    assert (y.double() - y_ref).abs().max() < 1e-4 * (1 + y_ref.abs().max())
    for a, b in zip(leaves, leaves64):
        assert torch.isfinite(a.grad).all()
        assert (a.grad.double() - b.grad).abs().max() < 1e-3 * (1 + b.grad.abs().max())
