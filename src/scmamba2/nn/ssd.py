"""Pure-PyTorch state-space duality (SSD) scan, the core of Mamba2.

The recurrence, per batch element and head, with state ``S_t`` of shape ``(p, n)``::

    S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t B_t^T
    y_t = S_t C_t

is evaluated chunk by chunk: inside a chunk of ``q`` positions it is a masked, decayed attention-like
product (quadratic in ``q`` only); across chunks a small ``(p, n)`` state per head is carried forward by a
loop over chunks, so time and memory stay linear in the sequence length and nothing of size ``l x l`` is
ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ssd_chunked"]


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

    Returns
    -------
    y : Tensor
        Outputs ``y_t = S_t C_t (+ D x_t)``, shape ``(b, l, h, p)``, dtype of ``x``.
    final_state : Tensor
        Only when ``return_final_state``: shape ``(b, h, p, n)``, in the compute dtype (float32, or
        float64 for float64 inputs).

    Notes
    -----
    All arithmetic runs in float32 (float64 when ``x`` is float64). Decays are ``exp`` of differences of
    cumulative sums of ``dt * A`` with the upper triangle masked to ``-inf`` before the ``exp``, so no
    ``exp`` of a large positive number is ever taken.

    Layouts (the speed of the CPU path is mostly about them): the intra-chunk product runs head-major,
    ``(b, g, r, c, q, ·)``, so that it is one plain batched matmul over ``b * h * c`` small matrices; the
    chunk-state and state-to-output products run token-major, ``(b, c, q, g, r * p)``, the natural layout of
    ``x`` (no copy), with the ``r`` heads of a group folded into the matmul's column dimension so that ``B``
    and ``C`` are never repeated per head. The only large permuted write is ``x * dt`` into head-major, done
    by the multiplication itself.
    """
    _check_shapes(x, dt, A, B, C, chunk_size)
    batch, length, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    per_group = nheads // ngroups  # heads sharing one (B, C) group: "r" in the shape comments
    b, g, r, p, n, q = batch, ngroups, per_group, headdim, dstate, chunk_size
    out_dtype = x.dtype
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    tensors = (x, dt, A, B, C, initial_state, D)
    # In-place element-wise work is only safe when autograd is not recording.
    inplace = not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))

    # 0. Pad the tail to a whole number of chunks: dt = 0 and x = 0 leave the state unchanged.
    pad = (-length) % q
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = (length + pad) // q  # number of chunks
    x = x.to(dtype).reshape(b, c, q, g, r, p)  # token-major, a view
    B = B.to(dtype).reshape(b, c, q, g, n).transpose(2, 3)  # (b, c, g, q, n), a view (contiguous when g == 1)
    C = C.to(dtype).reshape(b, c, q, g, n).transpose(2, 3)  # (b, c, g, q, n)
    dt = dt.to(dtype).transpose(1, 2).reshape(b, g, r, c, q)  # head-major (small copy)

    # 1. Log-decay per step, its running sum inside each chunk, and the decays derived from it:
    #    decay_ij = exp(cum_i - cum_j) (j <= i), from the chunk start exp(cum_i), to the chunk end
    #    exp(cum_last - cum_j) = decay_{last, j} (a row of decay_ij: no extra exp).
    cum = (dt * A.to(dtype).reshape(g, r, 1, 1)).cumsum(dim=-1)  # (b, g, r, c, q)
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    segsum = cum.unsqueeze(-1) - cum.unsqueeze(-2)  # (b, g, r, c, q_i, q_j)
    decay_ij = segsum.masked_fill_(~causal, float("-inf")).exp_()  # (b, g, r, c, q_i, q_j), 0 above the diagonal
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
    if initial_state is None:
        state = x.new_zeros(b, g, n, r, p)  # (b, g, n, r, p)
    else:
        if initial_state.shape != (batch, nheads, headdim, dstate):
            raise ValueError(
                f"initial_state must have shape {(batch, nheads, headdim, dstate)}, got {tuple(initial_state.shape)}"
            )
        state = initial_state.to(dtype).reshape(b, g, r, p, n).permute(0, 1, 4, 2, 3)  # (b, g, n, r, p)
    states_before = []
    # unbind, not [:, k]: the backward of indexing would allocate a full-size gradient per chunk (O(c^2)).
    for new_k, decay_k in zip(chunk_states.unbind(1), chunk_decay.unbind(1)):
        states_before.append(state)
        state = torch.addcmul(new_k, decay_k, state)  # (b, g, n, r, p)
    states_before = torch.stack(states_before, dim=1).reshape(b, c, g, n, r * p)  # state entering each chunk

    # 5. State-to-output: the carried-in state read out by C_i, decayed to position i; plus the diagonal
    #    blocks and the D skip. The sum is written token-major.
    y_off = (C @ states_before).transpose(2, 3).reshape(b, c, q, g, r, p)  # (b, c, q, g, r, p)
    decay_tm = decay_from_start.permute(0, 3, 4, 1, 2).unsqueeze(-1)  # (b, c, q, g, r, 1)
    y_diag = y_diag.permute(0, 3, 4, 1, 2, 5)  # (b, c, q, g, r, p), a view
    if inplace:
        y = y_off.mul_(decay_tm).add_(y_diag)
        if D is not None:
            y.addcmul_(x, D.to(dtype).reshape(g, r, 1))
    else:
        y = y_off * decay_tm + y_diag
        if D is not None:
            y = torch.addcmul(y, x, D.to(dtype).reshape(g, r, 1))
    y = y.reshape(b, c * q, nheads, headdim)[:, :length].to(out_dtype)  # (b, l, h, p)
    if return_final_state:
        return y, state.permute(0, 1, 3, 4, 2).reshape(batch, nheads, headdim, dstate)  # (b, h, p, n)
    return y
