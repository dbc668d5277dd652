"""Pure-PyTorch state-space duality (SSD) scan, the core of Mamba2.

The recurrence, per batch element and head, with state ``S_t`` of shape ``(p, n)``::

    S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t B_t^T
    y_t = S_t C_t

is evaluated chunk by chunk: inside a chunk of ``q`` positions it is a masked, decayed attention-like
product (quadratic in ``q`` only; in factored form where the decays allow, see :func:`ssd_chunked`); across
chunks a small ``(p, n)`` state per head is carried forward by a loop over chunks, so time and memory stay
linear in the sequence length and nothing of size ``l x l`` is ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ssd_factored import FactoredScan, factored_forward

__all__ = ["FACTORED_MAX_RANGE", "ssd_chunked"]

# The factored scan (:mod:`scmamba2.nn.ssd_factored`, one matmul per chunk for all heads of a group) runs when no
# chunk's decay range ``-sum(dt * A)`` exceeds this, per compute dtype: its per-token factors then stay within
# ``exp(+-limit / 2)``, far from overflow and denormals. Above it the factored scan tries a half and a quarter of the
# chunk, and then the segment-sum form runs (exact at any decay).
FACTORED_MAX_RANGE = {torch.float32: 120.0, torch.float64: 1200.0}


def _check_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, length, heads, headdim), got shape {tuple(x.shape)}")
    b, l, h, _ = x.shape
    if l < 1:
        raise ValueError("ssd_chunked needs a sequence of length >= 1")
    if dt.shape != (b, l, h):
        raise ValueError(f"dt must have shape {(b, l, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must have shape {(h,)}, got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, l) or B.shape != C.shape:
        raise ValueError(
            f"B and C must both be (batch={b}, length={l}, groups, state), got {tuple(B.shape)} and {tuple(C.shape)}"
        )
    if h % B.shape[2] != 0:
        raise ValueError(f"the number of heads ({h}) must be a multiple of the number of groups ({B.shape[2]})")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    D: Tensor | None = None,
    manual_backward: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the SSD recurrence with the chunked (block-decomposed) algorithm.

    Parameters
    ----------
    x : Tensor
        Inputs, shape ``(b, l, h, p)``.
    dt : Tensor
        Positive step sizes (already passed through softplus), shape ``(b, l, h)``.
    A : Tensor
        Negative real decay rates, one per head, shape ``(h,)``.
    B, C : Tensor
        Input and output projections of the state, shape ``(b, l, g, n)``; head ``i`` uses group
        ``i // (h // g)``, so ``h`` must be a multiple of ``g``.
    chunk_size : int
        Positions per chunk. Any ``l`` works: the tail is padded with ``dt = 0, x = 0`` (an identity step)
        and the output sliced back.
    initial_state : Tensor, optional
        State before the first position, shape ``(b, h, p, n)``; zeros when omitted.
    return_final_state : bool
        Also return the state after the last (real) position.
    D : Tensor, optional
        Skip weights, shape ``(h,)``: adds ``D[h] * x_t`` to the output (fused into the last addition).
    manual_backward : bool
        Under autograd, run the scan as one :class:`torch.autograd.Function` with a hand-written backward
        pass (default; see Notes). False: autograd differentiates the operations (the reference path).

    Returns
    -------
    y : Tensor
        Outputs ``y_t = S_t C_t (+ D x_t)``, shape ``(b, l, h, p)``, dtype of ``x``.
    final_state : Tensor
        Only when ``return_final_state``: shape ``(b, h, p, n)``, in the compute dtype (float32, or
        float64 for float64 inputs).

    Notes
    -----
    All arithmetic runs in float32 (float64 when ``x`` is float64). Two forms compute the same result:

    * the **factored** form (:mod:`scmamba2.nn.ssd_factored`), used whenever the decays allow it (every
      chunk's range ``-sum(dt * A)`` within :data:`FACTORED_MAX_RANGE`, with the given chunk or its half or
      quarter): the decays become per-token factors, so one ``(q x q) @ (q x r * p)`` matmul per chunk serves
      all heads of a group; forward + backward 1.8-2.8x the form below at chunk 64 at the shapes pretraining
      runs (one thread; ``benchmarks/results/scan_forms.md``);
    * the **segment-sum** form below, for any decay, and as autograd's reference (``manual_backward=False``):
      decays are ``exp`` of differences of cumulative sums of ``dt * A`` with the upper triangle masked to
      ``-inf`` before the ``exp``, so no ``exp`` of a large positive number is ever taken.

    Layouts of the segment-sum form (the speed of the CPU path is mostly about them): the intra-chunk product runs
    head-major, ``(b, g, r, c, q, ·)``, so that it is one plain batched matmul over ``b * h * c`` small matrices; the
    chunk-state and state-to-output products run token-major, ``(b, c, q, g, r * p)``, the natural layout of
    ``x`` (no copy), with the ``r`` heads of a group folded into the matmul's column dimension so that ``B``
    and ``C`` are never repeated per head. The only large permuted write is ``x * dt`` into head-major, done
    by the multiplication itself.

    With ``manual_backward`` the scan under autograd is one :class:`torch.autograd.Function` with a
    hand-written backward pass: it stores its inputs and the state entering each chunk, and recomputes the
    decays and score blocks in the backward pass (tested against the sequential recurrence in float64,
    ``tests/nn/test_ssd.py``). It keeps ~40 % fewer bytes for the backward pass per token and avoids
    autograd's per-operation overhead on the ``q x q`` blocks: the training step is as fast at 256 tokens per
    cell and faster at ~1,000 (``benchmarks/results/train_step.md``).
    """
    _check_shapes(x, dt, A, B, C, chunk_size)
    batch, length, nheads, headdim = x.shape
    dstate = B.shape[3]
    out_dtype = x.dtype
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if initial_state is not None and initial_state.shape != (batch, nheads, headdim, dstate):
        raise ValueError(
            f"initial_state must have shape {(batch, nheads, headdim, dstate)}, got {tuple(initial_state.shape)}"
        )
    tensors = (x, dt, A, B, C, initial_state, D)
    recording = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)

    # The factored form where the decays allow it, with the given chunk or, when a chunk's decay range is too wide
    # for it, a shorter one (the output does not depend on the chunk); otherwise the segment-sum form.
    factored = (not recording or manual_backward) and _factored_chunk(dt.to(dtype), A.to(dtype), chunk_size)
    q = factored or chunk_size

    # 0. Pad the tail to a whole number of chunks: dt = 0 and x = 0 leave the state unchanged.
    pad = (-length) % q
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
    D = None if D is None else D.to(dtype)
    init = None if initial_state is None else initial_state.to(dtype)
    # without autograd under bfloat16 autocast: the factored form's matmuls take bfloat16 operands (ssd_factored.py)
    lo = None if recording else _matmul_dtype(x)
    with torch.autocast(x.device.type, enabled=False):  # the compute dtype holds under autocast too
        if recording and manual_backward:  # hand-written backward: stores the inputs and the chunk states (and y)
            y, state = (FactoredScan if factored else _SSDScan).apply(x, dt, A, B, C, D, init, q)
        elif recording:  # differentiated by autograd: the reference path
            y, state, _ = _forward(x, dt, A, B, C, D, init, q, inplace=False)
        elif factored:
            y, state, _ = factored_forward(x, dt, A, B, C, D, init, q, lo)
        else:
            y, state, _ = _forward(x, dt, A, B, C, D, init, q, inplace=True)
    y = y.reshape(batch, length + pad, nheads, headdim)[:, :length].to(out_dtype)  # (b, l, h, p)
    if return_final_state:
        return y, state
    return y


def _matmul_dtype(x: Tensor) -> torch.dtype | None:
    """bfloat16 when a float32 scan runs under bfloat16 autocast (the factored form's forward matmuls then take
    bfloat16 operands, everything else stays float32), else None. Not float16: its range cannot hold the
    factors."""
    dev = x.device.type
    if x.dtype == torch.float32 and torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.bfloat16:
        return torch.bfloat16
    return None


def _factored_chunk(dt: Tensor, A: Tensor, chunk_size: int) -> int | None:
    """The chunk for the factored scan: ``chunk_size``, or its half or quarter (not below 8), the first whose decay
    range ``-sum(dt * A)`` inside every chunk is within :data:`FACTORED_MAX_RANGE` for the compute dtype; None
    when none is (or some ``A > 0``): the segment-sum form then runs. ``dt`` ``(b, l, h)`` and ``A`` cast."""
    limit = FACTORED_MAX_RANGE.get(dt.dtype)
    if limit is None or bool((A > 0).any()):
        return None
    b, length, h = dt.shape
    log_decay = dt * A  # (b, l, h), <= 0
    for q in (chunk_size, chunk_size // 2, chunk_size // 4):
        if q < min(8, chunk_size):
            break
        spread = F.pad(log_decay, (0, 0, 0, (-length) % q)).reshape(b, -1, q, h).sum(2)  # (b, c, h)
        if bool(spread.min() >= -limit):
            return q
    return None


def _forward(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, init: Tensor | None, q: int,
    inplace: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The chunked scan on padded inputs in the compute dtype.

    Returns ``y`` token-major ``(b, c, q, g, r, p)``, the final state ``(b, h, p, n)`` and the state entering
    each chunk, ``(b, c, g, n, r * p)``. ``inplace`` overwrites intermediates (and may write into nothing
    that the caller holds): only without autograd recording, or inside :class:`_SSDScan`.
    """
    b, length, nheads, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = nheads // g  # heads sharing one (B, C) group
    c = length // q  # number of chunks
    x = x.reshape(b, c, q, g, r, p)  # token-major, a view
    B = B.reshape(b, c, q, g, n).transpose(2, 3)  # (b, c, g, q, n), a view (contiguous when g == 1)
    C = C.reshape(b, c, q, g, n).transpose(2, 3)  # (b, c, g, q, n)
    dt = dt.transpose(1, 2).reshape(b, g, r, c, q)  # head-major (small copy)

    # 1. Log-decay per step, its running sum inside each chunk, and the decays derived from it:
    #    decay_ij = exp(cum_i - cum_j) (j <= i), from the chunk start exp(cum_i), to the chunk end
    #    exp(cum_last - cum_j) = decay_{last, j} (a row of decay_ij: no extra exp).
    cum = (dt * A.reshape(g, r, 1, 1)).cumsum(dim=-1)  # (b, g, r, c, q)
    decay_ij = _decay(cum)  # (b, g, r, c, q_i, q_j), 0 above the diagonal
    decay_from_start = cum.exp()  # (b, g, r, c, q)
    dt_to_end = dt * decay_ij[..., -1, :]  # (b, g, r, c, q): dt_j exp(cum_last - cum_j)

    # 2. Intra-chunk output (diagonal blocks): y_i = sum_{j<=i} (C_i . B_j) decay_ij dt_j x_j, one bmm.
    x_dt = (dt.unsqueeze(-1) * x.permute(0, 3, 4, 1, 2, 5)).contiguous()  # (b, g, r, c, q, p) head-major
    scores = (C @ B.transpose(-1, -2)).transpose(1, 2).unsqueeze(2)  # (b, g, 1, c, q_i, q_j)
    mixer = decay_ij.mul_(scores) if inplace else decay_ij * scores  # (b, g, r, c, q_i, q_j)
    y_diag = mixer @ x_dt  # (b, g, r, c, q, p)

    # 3. Chunk states: each chunk's own contribution to the state at its last position, stored
    #    transposed as (n, r * p) per group: B^T (n, q) @ (dt decay_to_end x) (q, r * p).
    x_w = x * dt_to_end.permute(0, 3, 4, 1, 2).unsqueeze(-1)  # (b, c, q, g, r, p) token-major
    chunk_states = B.transpose(-1, -2) @ x_w.transpose(2, 3).reshape(b, c, g, q, r * p)  # (b, c, g, n, r*p)
    chunk_states = chunk_states.view(b, c, g, n, r, p)

    # 4. Inter-chunk recurrence: carry the state across chunk boundaries (linear in the number of chunks).
    chunk_decay = decay_from_start[..., -1].permute(0, 3, 1, 2)[:, :, :, None, :, None]  # (b, c, g, 1, r, 1)
    if init is None:
        state = x.new_zeros(b, g, n, r, p)  # (b, g, n, r, p)
    else:
        state = init.reshape(b, g, r, p, n).permute(0, 1, 4, 2, 3)  # (b, g, n, r, p)
    if inplace:
        states_before = torch.empty_like(chunk_states)  # (b, c, g, n, r, p): the state entering each chunk
        for k in range(c):
            states_before[:, k] = state
            state = torch.addcmul(chunk_states[:, k], chunk_decay[:, k], state)  # (b, g, n, r, p)
    else:
        before = []
        # unbind, not [:, k]: the backward of indexing would allocate a full-size gradient per chunk (O(c^2)).
        for new_k, decay_k in zip(chunk_states.unbind(1), chunk_decay.unbind(1)):
            before.append(state)
            state = torch.addcmul(new_k, decay_k, state)  # (b, g, n, r, p)
        states_before = torch.stack(before, dim=1)
    states_before = states_before.view(b, c, g, n, r * p)

    # 5. State-to-output: the carried-in state read out by C_i, decayed to position i; plus the diagonal
    #    blocks and the D skip. The sum is written token-major.
    y = (C @ states_before).transpose(2, 3).reshape(b, c, q, g, r, p)  # (b, c, q, g, r, p)
    decay_tm = decay_from_start.permute(0, 3, 4, 1, 2).unsqueeze(-1)  # (b, c, q, g, r, 1)
    if inplace:
        y = y.mul_(decay_tm).add_(y_diag.permute(0, 3, 4, 1, 2, 5))
        if D is not None:
            y.addcmul_(x, D.reshape(g, r, 1))
    else:
        y = y * decay_tm + y_diag.permute(0, 3, 4, 1, 2, 5)
        if D is not None:
            y = torch.addcmul(y, x, D.reshape(g, r, 1))
    final = state.permute(0, 1, 3, 4, 2).reshape(b, nheads, p, n)  # (b, h, p, n)
    return y, final, states_before


def _decay(cum: Tensor) -> Tensor:
    """``exp(cum_i - cum_j)`` for ``j <= i``, 0 above the diagonal: ``(..., q) -> (..., q, q)``.

    The upper triangle is masked to ``-inf`` before the ``exp``, so no ``exp`` of a large positive number is
    ever taken.
    """
    q = cum.shape[-1]
    causal = torch.ones(q, q, dtype=torch.bool, device=cum.device).tril()
    segsum = cum.unsqueeze(-1) - cum.unsqueeze(-2)  # (..., q_i, q_j)
    return segsum.masked_fill_(~causal, float("-inf")).exp_()


class _SSDScan(torch.autograd.Function):
    """:func:`_forward` with a hand-written backward pass.

    The forward stores its inputs and the states entering each chunk (the size of ``x`` when ``n == q``);
    the backward recomputes the decays and the score blocks and applies the transposed products, so none of
    the ``q x q`` intermediates are kept between the passes and autograd's per-operation overhead (many
    element-wise products on the ``q x q`` blocks) is avoided.
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, init, q):
        y, final, states_before = _forward(x, dt, A, B, C, D, init, q, inplace=True)
        ctx.save_for_backward(x, dt, A, B, C, D, states_before)
        ctx.q, ctx.has_init = q, init is not None
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        saved = ctx.saved_tensors  # read once (activation checkpointing allows one unpack)
        with torch.autocast(saved[0].device.type, enabled=False):  # the forward's compute dtype, here too
            return _SSDScan._backward(ctx, saved, dy, dfinal)

    @staticmethod
    def _backward(ctx, saved, dy, dfinal):
        x, dt, A, B, C, D, states_before = saved
        q = ctx.q
        b, length, nheads, p = x.shape
        g, n = B.shape[2], B.shape[3]
        r, c = nheads // g, length // q
        X = x.reshape(b, c, q, g, r, p)  # token-major
        Bt = B.reshape(b, c, q, g, n).transpose(2, 3)  # (b, c, g, q, n)
        Ct = C.reshape(b, c, q, g, n).transpose(2, 3)
        dth = dt.transpose(1, 2).reshape(b, g, r, c, q)  # head-major
        if dy is None:
            dY = x.new_zeros(b, c, q, g, r, p)
        else:
            dY = dy.to(x.dtype).reshape(b, c, q, g, r, p)
        # Recompute the cheap parts of the forward.
        cum = (dth * A.reshape(g, r, 1, 1)).cumsum(dim=-1)  # (b, g, r, c, q)
        decay_ij = _decay(cum)  # (b, g, r, c, q, q)
        E = cum.exp()  # exp(cum_i): decay from the chunk start
        to_end = decay_ij[..., -1, :]  # (b, g, r, c, q): exp(cum_last - cum_j)
        w = dth * to_end
        scores = (Ct @ Bt.transpose(-1, -2)).transpose(1, 2).unsqueeze(2)  # (b, g, 1, c, q, q)
        X_hm = X.permute(0, 3, 4, 1, 2, 5)  # (b, g, r, c, q, p), a view
        dY_hm = dY.permute(0, 3, 4, 1, 2, 5)
        E_tm = E.permute(0, 3, 4, 1, 2).unsqueeze(-1)  # (b, c, q, g, r, 1)
        w_tm = w.permute(0, 3, 4, 1, 2).unsqueeze(-1)
        dcum = torch.zeros_like(cum)
        ddt = torch.zeros_like(cum)

        # D skip.
        dD = None if D is None else (dY * X).sum(dim=(0, 1, 2, 5)).reshape(nheads)
        dX = dY * D.reshape(g, r, 1) if D is not None else torch.zeros_like(X)  # (b, c, q, g, r, p)

        # 5. State-to-output: y_off = E_i * (C_i @ H_before).
        Hb = states_before  # (b, c, g, n, r * p)
        P = (Ct @ Hb).transpose(2, 3).reshape(b, c, q, g, r, p)  # (b, c, q, g, r, p)
        dcum += (dY * P).sum(-1).permute(0, 3, 4, 1, 2) * E
        dP = (dY * E_tm).transpose(2, 3).reshape(b, c, g, q, r * p)  # (b, c, g, q, r * p)
        dCt = dP @ Hb.transpose(-1, -2)  # (b, c, g, q, n)
        dHb = Ct.transpose(-1, -2) @ dP  # (b, c, g, n, r * p)

        # 4. The recurrence, backwards: G_k = dL/d(state after chunk k).
        dec = E[..., -1]  # (b, g, r, c)
        dec_tm = dec.permute(0, 3, 1, 2)[:, :, :, None, :, None]  # (b, c, g, 1, r, 1)
        dHb = dHb.view(b, c, g, n, r, p)
        G = torch.empty_like(dHb)
        gk = x.new_zeros(b, g, n, r, p) if dfinal is None else (
            dfinal.to(x.dtype).reshape(b, g, r, p, n).permute(0, 1, 4, 2, 3))
        for k in range(c - 1, -1, -1):
            G[:, k] = gk
            gk = torch.addcmul(dHb[:, k], dec_tm[:, k], gk)
        dinit = gk.permute(0, 1, 3, 4, 2).reshape(b, nheads, p, n) if ctx.has_init else None
        ddec = (G * Hb.view(b, c, g, n, r, p)).sum(dim=(3, 5))  # (b, c, g, r)
        dcum[..., -1] += ddec.permute(0, 2, 3, 1) * dec

        # 3. Chunk states: CS = B^T @ (w * x), gradient G.
        G = G.view(b, c, g, n, r * p)
        Xw = (X * w_tm).transpose(2, 3).reshape(b, c, g, q, r * p)
        dBt = Xw @ G.transpose(-1, -2)  # (b, c, g, q, n)
        dXw = (Bt @ G).view(b, c, g, q, r, p).transpose(2, 3)  # (b, c, q, g, r, p)
        dX.addcmul_(dXw, w_tm)
        dw = (dXw * X).sum(-1).permute(0, 3, 4, 1, 2)  # (b, g, r, c, q)
        ddt += dw * to_end  # w = dt * exp(cum_last - cum)
        dwl = dw * w
        dcum[..., -1] += dwl.sum(-1)
        dcum -= dwl

        # 2. Diagonal blocks: y_diag = (decay * scores) @ (dt x).
        x_dt = (dth.unsqueeze(-1) * X_hm).contiguous()  # (b, g, r, c, q, p)
        mixer = decay_ij * scores
        dM = dY_hm @ x_dt.transpose(-1, -2)  # (b, g, r, c, q, q)
        dXd = mixer.transpose(-1, -2) @ dY_hm  # (b, g, r, c, q, p)
        dX += (dXd * dth.unsqueeze(-1)).permute(0, 3, 4, 1, 2, 5)
        ddt += (dXd * X_hm).sum(-1)
        dS = (dM * decay_ij).sum(2).transpose(1, 2)  # (b, c, g, q, q), summed over the heads of a group
        dseg = dM.mul_(scores).mul_(decay_ij)  # d/d(cum_i - cum_j), 0 above the diagonal
        dcum += dseg.sum(-1) - dseg.sum(-2)
        dCt += dS @ Bt
        dBt += dS.transpose(-1, -2) @ Ct

        # 1. cum = cumsum(dt * A) inside each chunk.
        da = dcum.flip(-1).cumsum(-1).flip(-1)  # reverse cumulative sum
        ddt += da * A.reshape(g, r, 1, 1)
        dA = (da * dth).sum(dim=(0, 3, 4)).reshape(nheads)

        dx = dX.reshape(b, length, nheads, p)
        ddt = ddt.reshape(b, nheads, length).transpose(1, 2)
        dB = dBt.transpose(2, 3).reshape(b, length, g, n)
        dC = dCt.transpose(2, 3).reshape(b, length, g, n)
        return dx, ddt, dA, dB, dC, dD, dinit, None
