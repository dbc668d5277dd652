"""Losses on collated batches."""

from __future__ import annotations

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the positions where ``mask`` is True (0 when there are none)."""
    n = mask.sum()
    if n == 0:
        return pred.sum() * 0.0
    diff = (pred - target)[mask]
    return (diff * diff).sum() / n
