"""Baseline for ``benchmarks/backbone.py``: an scGPT-style transformer encoder in plain PyTorch.

scGPT's encoder is a stack of ``nn.TransformerEncoderLayer(d_model=512, nhead=8, dim_feedforward=d_hid=512,
dropout, batch_first=True)``: post-norm (LayerNorm after each residual sum), ReLU MLP with hidden size
``d_hid`` (= ``d_model`` by default), full bidirectional attention. This module re-implements that layer
with ``torch.nn.functional.scaled_dot_product_attention`` (which picks the fused / memory-efficient
attention kernel when it can), so the baseline is not handicapped by an ``L x L`` score matrix where
PyTorch has a better kernel.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TransformerEncoder", "TransformerEncoderLayer"]


class TransformerEncoderLayer(nn.Module):
    """One encoder layer: self-attention + MLP, each with a residual; post-norm (scGPT) or pre-norm."""

    def __init__(
        self,
        d_model: int,
        nhead: int = 8,
        d_hid: int | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if d_model % nhead != 0:
            raise ValueError(f"d_model {d_model} is not divisible by nhead {nhead}")
        d_hid = d_model if d_hid is None else d_hid
        self.nhead = nhead
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.fc1 = nn.Linear(d_model, d_hid)
        self.fc2 = nn.Linear(d_hid, d_model)
        self.act = {"relu": F.relu, "gelu": F.gelu}[activation]
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.dropout = dropout
        self.norm_first = norm_first

    def _attn(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.nhead, d // self.nhead).permute(2, 0, 3, 1, 4)  # (b, h, l, e)
        mask = None if padding_mask is None else ~padding_mask[:, None, None, :]  # True = attend
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # bidirectional
        return F.dropout(self.out(y.transpose(1, 2).reshape(b, l, d)), p, self.training)

    def _mlp(self, x: Tensor) -> Tensor:
        p = self.dropout if self.training else 0.0
        return F.dropout(self.fc2(F.dropout(self.act(self.fc1(x)), p, self.training)), p, self.training)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``x``: ``(b, l, d_model)``; ``padding_mask``: ``(b, l)`` bool, True = padding (key mask)."""
        if self.norm_first:
            x = x + self._attn(self.norm1(x), padding_mask)
            return x + self._mlp(self.norm2(x))
        x = self.norm1(x + self._attn(x, padding_mask))
        return self.norm2(x + self._mlp(x))


class TransformerEncoder(nn.Module):
    """``n_layers`` of :class:`TransformerEncoderLayer`; same call signature as ``BiMamba2Encoder``."""

    def __init__(self, d_model: int, n_layers: int, nhead: int = 8, d_hid: int | None = None, **kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(d_model, nhead=nhead, d_hid=d_hid, **kwargs) for _ in range(n_layers)
        )

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, padding_mask)
        return x
