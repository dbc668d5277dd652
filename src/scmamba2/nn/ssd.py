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

    Returns
    -------
    y : Tensor
        Outputs ``y_t = S_t C_t``, shape ``(b, l, h, p)``, dtype of ``x``. No ``D`` skip term.
    final_state : Tensor
        Only when ``return_final_state``: shape ``(b, h, p, n)``, in the compute dtype (float32, or
        float64 for float64 inputs).

    Notes
    -----
    All arithmetic runs in float32 (float64 when ``x`` is float64). Decays are ``exp`` of differences of
    cumulative sums of ``dt * A`` with the upper triangle masked to ``-inf`` before the ``exp``, so no
    ``exp`` of a large positive number is ever taken.
    """
    _check_shapes(x, dt, A, B, C, chunk_size)
    batch, length, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    per_group = nheads // ngroups  # heads sharing one (B, C) group: "r" in the einsums below
    out_dtype = x.dtype
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32

    # 0. Pad the tail to a whole number of chunks: dt = 0 and x = 0 leave the state unchanged.
    pad = (-length) % chunk_size
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    nchunks = (length + pad) // chunk_size
    shape = (batch, nchunks, chunk_size, ngroups)
    x = x.to(dtype).reshape(*shape, per_group, headdim)  # (b, c, q, g, r, p)
    dt = dt.to(dtype).reshape(*shape, per_group)  # (b, c, q, g, r)
    B = B.to(dtype).reshape(*shape, dstate)  # (b, c, q, g, n)
    C = C.to(dtype).reshape(*shape, dstate)  # (b, c, q, g, n)

    # Log-decay per step and its running sum inside each chunk.
    log_decay = dt * A.to(dtype).reshape(ngroups, per_group)  # (b, c, q, g, r)
    log_decay_cum = log_decay.cumsum(dim=2)  # (b, c, q, g, r)
    x_dt = x * dt.unsqueeze(-1)  # (b, c, q, g, r, p)

    # 1. Intra-chunk output (diagonal blocks): y_i = sum_{j<=i} (C_i . B_j) exp(cum_i - cum_j) dt_j x_j.
    cum = log_decay_cum.permute(0, 1, 3, 4, 2)  # (b, c, g, r, q)
    segsum = cum.unsqueeze(-1) - cum.unsqueeze(-2)  # (b, c, g, r, q_i, q_j)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    decay_ij = torch.exp(segsum.masked_fill(~causal, float("-inf")))  # (b, c, g, r, q_i, q_j), 0 above diag
    scores = torch.einsum("bcign,bcjgn->bcgij", C, B)  # (b, c, g, q_i, q_j)
    y_diag = torch.einsum("bcgrij,bcjgrp->bcigrp", decay_ij * scores.unsqueeze(3), x_dt)  # (b, c, q, g, r, p)

    # 2. Chunk states: each chunk's own contribution to the state at its last position.
    decay_to_end = torch.exp(log_decay_cum[:, :, -1:] - log_decay_cum)  # (b, c, q, g, r), all <= 1
    chunk_states = torch.einsum("bcjgn,bcjgrp->bcgrpn", B, x_dt * decay_to_end.unsqueeze(-1))  # (b, c, g, r, p, n)

    # 3. Inter-chunk recurrence: carry the state across chunk boundaries (linear in the number of chunks).
    chunk_decay = torch.exp(log_decay_cum[:, :, -1])[..., None, None]  # (b, c, g, r, 1, 1)
    if initial_state is None:
        state = x.new_zeros(batch, ngroups, per_group, headdim, dstate)  # (b, g, r, p, n)
    else:
        if initial_state.shape != (batch, nheads, headdim, dstate):
            raise ValueError(
                f"initial_state must have shape {(batch, nheads, headdim, dstate)}, got {tuple(initial_state.shape)}"
            )
        state = initial_state.to(dtype).reshape(batch, ngroups, per_group, headdim, dstate)  # (b, g, r, p, n)
    states_before = []
    for c in range(nchunks):
        states_before.append(state)
        state = chunk_decay[:, c] * state + chunk_states[:, c]  # (b, g, r, p, n)
    states_before = torch.stack(states_before, dim=1)  # (b, c, g, r, p, n): state entering each chunk

    # 4. State-to-output: the carried-in state, decayed to position i, read out by C_i.
    decay_from_start = torch.exp(log_decay_cum).unsqueeze(-1)  # (b, c, q, g, r, 1)
    y_off = torch.einsum("bcign,bcgrpn->bcigrp", C, states_before) * decay_from_start  # (b, c, q, g, r, p)

    y = (y_diag + y_off).reshape(batch, nchunks * chunk_size, nheads, headdim)[:, :length]  # (b, l, h, p)
    y = y.to(out_dtype)
    if return_final_state:
        return y, state.reshape(batch, nheads, headdim, dstate)  # (b, h, p, n)
    return y
