"""The memory-lean RMSNorm and Dropout against torch's own modules."""

import pytest
import torch

from scmamba2.nn.lean import Dropout, RMSNorm, _RMSNormFunction


def _saved(fn, x):
    """Storages autograd keeps for the backward pass of ``fn(x)``: {data_ptr: (dtype, bytes)}."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = (t.dtype, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return seen


@pytest.mark.parametrize("eps", [1e-5, None])
def test_rmsnorm_matches_torch_with_gradients(eps):
    torch.manual_seed(0)
    ref = torch.nn.RMSNorm(16, eps=eps).double()
    with torch.no_grad():
        ref.weight.normal_()
    lean = RMSNorm(16, eps=eps).double()
    lean.load_state_dict(ref.state_dict())  # same parameters, same keys
    x = torch.randn(3, 7, 16, dtype=torch.float64) * 3
    upstream = torch.randn(3, 7, 16, dtype=torch.float64)
    grads = []
    for module in (ref, lean):
        inp = x.clone().requires_grad_(True)
        out = module(inp)
        (out * upstream).sum().backward()
        grads.append((out.detach(), inp.grad, module.weight.grad))
    for got, want in zip(grads[1], grads[0]):
        assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda a, w: _RMSNormFunction.apply(a, w, 1e-5),
                                    (x.requires_grad_(True), lean.weight.detach().clone().requires_grad_(True)))


def test_rmsnorm_keeps_the_input_and_one_scale_a_row():
    x = torch.randn(4, 50, 32, requires_grad=True)
    kept = _saved(RMSNorm(32), x)
    big = [b for _, b in kept.values() if b >= x.nbytes]
    assert len(big) == 1  # the input only; torch's composite RMSNorm also keeps the normalised input
    assert sum(b for _, b in kept.values()) <= x.nbytes + 4 * 50 * 4 + 32 * 4 + 64
    assert len([b for _, b in _saved(torch.nn.RMSNorm(32), x).values() if b >= x.nbytes]) == 2


def test_rmsnorm_without_input_gradient_still_trains_its_weight():
    lean, ref = RMSNorm(8), torch.nn.RMSNorm(8)
    x = torch.randn(5, 8)
    lean(x).square().sum().backward()
    ref(x).square().sum().backward()
    assert torch.allclose(lean.weight.grad, ref.weight.grad, atol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_draws_the_same_mask_and_keeps_it_as_bool(p):
    x = torch.randn(6, 40, 32, requires_grad=True)
    outs = []
    for module in (torch.nn.Dropout(p), Dropout(p)):
        torch.manual_seed(3)
        out = module.train()(x)
        out.sum().backward()
        outs.append((out.detach(), x.grad.clone()))
        x.grad = None
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert 0.5 * p < float((outs[1][0] == 0).float().mean()) < 1.5 * p
    kept = _saved(Dropout(p).train(), x)
    assert [dtype for dtype, _ in kept.values()] == [torch.bool]
    assert Dropout(p).eval()(x) is x and Dropout(0.0).train()(x) is x


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("eps", [1e-5, None])
@pytest.mark.parametrize("affine", [True, False])
def test_rmsnorm_matches_torch_in_low_precision_and_without_weight(dtype, eps, affine):
    # Rows whose norm overflows float16 if squared in float16 (|x| ~ 20, 256 channels); eps=None takes float32's
    # epsilon for half inputs, as torch's does.
    torch.manual_seed(0)
    ref = torch.nn.RMSNorm(256, eps=eps, elementwise_affine=affine).to(dtype)
    lean = RMSNorm(256, eps=eps, elementwise_affine=affine).to(dtype)
    x = (20 * torch.randn(4, 7, 256)).to(dtype)
    upstream = torch.randn(4, 7, 256).to(dtype)
    results = []
    for module in (ref, lean):
        inp = x.clone().requires_grad_(True)
        out = module(inp)
        out.backward(upstream)
        results.append((out.detach(), inp.grad))
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float32: 1e-5}[dtype]
    for got, want in zip(results[1], results[0]):
        assert got.dtype == want.dtype and torch.isfinite(got).all()
        assert torch.allclose(got.float(), want.float(), atol=tol, rtol=tol)
