"""The SSD scan in factored form: one matmul per chunk for all the heads of a group.

Inside a chunk the decay between positions ``j <= i`` is ``exp(cum_i - cum_j)`` for the running sum ``cum`` of
``dt * A``, a different ``q x q`` matrix per head. Writing it as ``exp(a_i) * exp(-a_j)`` with ``a = cum - ref``
moves the decays onto the tokens: ``y_i = exp(a_i) * sum_{j<=i} (C_i . B_j) * exp(-a_j) dt_j x_j``, so that the
``q x q`` score matrix ``C B^T`` (shared by the heads of a group) multiplies all of the group's heads at once,
``(q x q) @ (q x r * p)``, and no per-head ``q x q`` decay, mask or product is ever built. The chunk states and
the state-to-output product take the same per-token scalings. Everything stays token-major (the layout of ``x``).

The factors are only safe while they stay well inside the floating-point range: with ``ref`` the middle of a
chunk's ``cum`` (``cum_last / 2``, as ``cum`` falls monotonically from ~0 to ``cum_last``), ``|a| <= R / 2`` for the
chunk's decay range ``R = -cum_last``. :func:`scmamba2.nn.ssd.ssd_chunked` runs this form when every chunk's
range is within :data:`scmamba2.nn.ssd.FACTORED_MAX_RANGE` and the segment-sum form otherwise. The result does
not depend on ``ref`` (the factors cancel), so ``ref`` is a constant for differentiation.

Without autograd under bfloat16 autocast (``lo = torch.bfloat16``, chosen by :func:`scmamba2.nn.ssd.ssd_chunked`)
the forward's matmuls take bfloat16 operands; everything else (the factors, the recurrence over chunks, the sums)
stays float32, and bfloat16 has float32's exponent range, so the factors' range limit is the same. Not in training:
the gradients of ``dt`` and ``A`` are differences of nearly equal terms, one of them built from the output ``y``,
and bfloat16 outputs made them 4-15x noisier than rounding the inputs does (a d_model 256 layer would have trained
1.08x faster).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FactoredScan", "factored_forward"]


def _prepare(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, q: int, lo: torch.dtype | None = None):
    """Views and per-token factors shared by the forward and the backward pass (inputs padded to whole chunks).
    With ``lo`` (a matmul dtype), ``Bt``, ``Ct`` and the scores ``S`` are returned in it (they only feed matmuls);
    ``Xg`` stays in the compute dtype."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r, c = h // g, length // q
    X = x.reshape(b, c, q, g, r, p)  # token-major, a view
    Bt = B.reshape(b, c, q, g, n).transpose(2, 3)  # (b, c, g, q, n)
    Ct = C.reshape(b, c, q, g, n).transpose(2, 3)
    dtt = dt.reshape(b, c, q, g, r)
    cum = (dtt * A.reshape(g, r)).cumsum(dim=2)  # (b, c, q, g, r)
    last = cum[:, :, -1]  # (b, c, g, r): the chunk's total log-decay
    ref = last * 0.5
    a = cum - ref.unsqueeze(2)
    E = a.exp()  # exp(a_i): scales the outputs
    E_inv = a.neg_().exp_()  # exp(-a_j)
    w = dtt * E_inv  # dt_j exp(-a_j): scales the inputs
    Xs = X * w.unsqueeze(-1)  # (b, c, q, g, r, p)
    Xg = Xs.view(b, c, q, g, r * p).transpose(2, 3)  # (b, c, g, q, r * p); a view, contiguous when g == 1
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    Bt, Ct = _low(Bt, lo), _low(Ct, lo)
    S = (Ct @ Bt.transpose(-1, -2)).masked_fill_(~causal, 0.0)  # (b, c, g, q, q): C_i . B_j for j <= i
    return X, Bt, Ct, dtt, last, ref, E, E_inv, w, Xg, S, causal


def _baddbmm(acc: Tensor, m1: Tensor, m2: Tensor) -> Tensor:
    """``acc + m1 @ m2`` over the leading dims, the sum written by the matmul itself (``acc`` reused); ``m1`` and
    ``m2`` may be of a lower precision than ``acc`` (their product, rounded to it, is then added in ``acc``'s
    dtype)."""
    if m1.dtype != acc.dtype:
        return acc.add_(m1 @ m2)
    flat = acc.flatten(0, -3)
    return torch.baddbmm(flat, m1.flatten(0, -3), m2.flatten(0, -3), out=flat).view(acc.shape)


def _low(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``t`` as a matmul operand: cast to ``dtype`` (bfloat16 matmuls in a float32 scan), or as it is (None)."""
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


def _head_scale(t: Tensor) -> Tensor:
    """``(b, c, g, r)`` -> ``(b, c, g, 1, r, 1)``: one factor per head, broadcast over a state ``(n, r, p)``."""
    return t[:, :, :, None, :, None]


def factored_forward(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, init: Tensor | None, q: int,
    lo: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The scan on padded inputs in the compute dtype: ``y`` token-major ``(b, c, q, g, r, p)``, the final state
    ``(b, h, p, n)`` and the state entering each chunk ``(b, c, g, n, r * p)``. ``lo``: the matmuls' operand
    dtype (bfloat16: each matmul accumulates in float32 and rounds its result to bfloat16, which is then used in
    the compute dtype, as everything else), None for the compute dtype."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r, c = h // g, length // q
    X, Bt, Ct, _, last, ref, E, _, _, Xg, S, _ = _prepare(x, dt, A, B, C, q, lo)
    Xl = _low(Xg, lo)
    # Chunk states: sum_j exp(cum_last - cum_j) dt_j x_j B_j^T = exp(cum_last - ref) * B^T X'.
    states = (Bt.transpose(-1, -2) @ Xl).to(x.dtype).view(b, c, g, n, r, p).mul_(_head_scale((last - ref).exp()))
    decay = _head_scale(last.exp())  # (b, c, g, 1, r, 1)
    state = x.new_zeros(b, g, n, r, p) if init is None else init.reshape(b, g, r, p, n).permute(0, 1, 4, 2, 3)
    before = torch.empty_like(states)  # the state entering each chunk
    for k in range(c):
        before[:, k] = state
        state = torch.addcmul(states[:, k], decay[:, k], state)
    # Outputs: exp(a_i) * (sum_j S_ij X'_j + exp(ref) C_i . state_before), since exp(cum_i) = exp(a_i) exp(ref).
    carried = (before * _head_scale(ref.exp())).view(b, c, g, n, r * p)
    inner = _baddbmm((Ct @ _low(carried, lo)).to(x.dtype), S, Xl)  # S X' + C carried, (b, c, g, q, r * p)
    y = inner.transpose(2, 3).reshape(b, c, q, g, r, p).mul_(E.unsqueeze(-1))
    if D is not None:
        y.addcmul_(X, D.reshape(g, r, 1))
    final = state.permute(0, 1, 3, 4, 2).reshape(b, h, p, n)
    return y, final, before.view(b, c, g, n, r * p)


def _factored_backward(x, dt, A, B, C, D, before, y, q, dy, dfinal, has_init):
    """Gradients of :func:`factored_forward`'s ``y`` (its output, token-major) and final state (``dy``, ``dfinal``;
    either may be None)."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r, c = h // g, length // q
    X, Bt, Ct, dtt, last, ref, E, E_inv, w, Xg, S, causal = _prepare(x, dt, A, B, C, q)
    dY = x.new_zeros(b, c, q, g, r, p) if dy is None else dy.to(x.dtype).reshape(b, c, q, g, r, p)
    before = before.view(b, c, g, n, r, p)
    eref = _head_scale(ref.exp())
    carried = (before * eref).view(b, c, g, n, r * p)

    # Outputs y = E * inner + D x, inner = S X' + C carried. Through E: sum over p of dY * E * inner, that is of
    # dY * (y - D x).
    da = (dY * y).sum(-1)  # (b, c, q, g, r)
    if D is None:
        dD, dX = None, torch.zeros_like(X)
    else:
        dYx = (dY * X).sum(-1)  # (b, c, q, g, r)
        dD = dYx.sum(dim=(0, 1, 2)).reshape(h)
        da -= dYx * D.reshape(g, r)
        dX = dY * D.reshape(g, r, 1)
    dI = dY * E.unsqueeze(-1)  # (b, c, q, g, r, p)
    dIg = dI.view(b, c, q, g, r * p).transpose(2, 3)  # (b, c, g, q, r * p)
    dS = (dIg @ Xg.transpose(-1, -2)).masked_fill_(~causal, 0.0)  # (b, c, g, q, q)
    dCt = dIg @ carried.transpose(-1, -2)  # (b, c, g, q, n)
    dbefore = (Ct.transpose(-1, -2) @ dIg).view(b, c, g, n, r, p).mul_(eref)

    # The recurrence, backwards: G_k = dL/d(state after chunk k).
    dec = last.exp()  # (b, c, g, r)
    G = torch.empty_like(dbefore)
    gk = x.new_zeros(b, g, n, r, p) if dfinal is None else (
        dfinal.to(x.dtype).reshape(b, g, r, p, n).permute(0, 1, 4, 2, 3))
    dec_s = _head_scale(dec)
    for k in range(c - 1, -1, -1):
        G[:, k] = gk
        gk = torch.addcmul(dbefore[:, k], dec_s[:, k], gk)
    dinit = gk.permute(0, 1, 3, 4, 2).reshape(b, h, p, n) if has_init else None
    dlast = (G * before).sum(dim=(3, 5)) * dec  # (b, c, g, r): through the chunk decay exp(cum_last)

    # Chunk states = s * U, U = B^T X', s = exp(cum_last - ref). Through s: sum over (n, p) of dU * U, which is
    # the sum over (q, p) of (B dU) * X' (no recomputed U).
    dU = G.mul_(_head_scale((last - ref).exp())).view(b, c, g, n, r * p)
    BdU = Bt @ dU  # (b, c, g, q, r * p)
    dlast += (BdU * Xg).view(b, c, g, q, r, p).sum(dim=(3, 5))
    dBt = Xg @ dU.transpose(-1, -2)  # (b, c, g, q, n)
    dXg = _baddbmm(BdU, S.transpose(-1, -2), dIg)  # S^T dI + B dU, (b, c, g, q, r * p)

    # X' = X * w, w = dt exp(-a).
    dXs = dXg.transpose(2, 3).reshape(b, c, q, g, r, p)
    dX.addcmul_(dXs, w.unsqueeze(-1))
    dw = (dXs * X).sum(-1)  # (b, c, q, g, r)
    ddt = dw * E_inv
    da -= dw * w

    # Scores S = C B^T.
    dCt = dCt.add_(dS @ Bt)
    dBt = dBt.add_(dS.transpose(-1, -2) @ Ct)

    # cum = cumsum(dt * A) inside each chunk; a = cum - ref with ref constant; last = cum at the chunk end.
    da[:, :, -1] += dlast
    rc = da.flip(2).cumsum(2).flip(2)  # reverse cumulative sum over the chunk
    ddt += rc * A.reshape(g, r)
    dA = (rc * dtt).sum(dim=(0, 1, 2)).reshape(h)
    return (dX.reshape(b, length, h, p), ddt.reshape(b, length, h), dA,
            dBt.transpose(2, 3).reshape(b, length, g, n), dCt.transpose(2, 3).reshape(b, length, g, n), dD, dinit)


class FactoredScan(torch.autograd.Function):
    """:func:`factored_forward` with a hand-written backward pass that stores the inputs, the chunk states and the
    output, and recomputes the rest (the scores and the factors)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, init, q):
        y, final, before = factored_forward(x, dt, A, B, C, D, init, q)
        ctx.save_for_backward(x, dt, A, B, C, D, before, y)  # y: the callers keep it anyway (the gated norm)
        ctx.q, ctx.has_init = q, init is not None
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, before, y = ctx.saved_tensors  # read once (activation checkpointing allows one unpack)
        with torch.autocast(x.device.type, enabled=False):
            grads = _factored_backward(x, dt, A, B, C, D, before, y, ctx.q, dy, dfinal, ctx.has_init)
        return (*grads, None)
