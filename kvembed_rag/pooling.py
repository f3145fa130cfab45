"""Pooling of final-layer hidden states into one vector per row. NaN-safe against padded rows."""

from __future__ import annotations

from typing import Literal

import torch

from .config import POOLINGS  # the allowed names are written once, in the config

Pooling = Literal["hybrid", "mean", "last"]


def last_token(hidden: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """``(B, T, H), (B,) -> (B, H)``: the hidden state at each row's last real token."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_index.to(hidden.device)]


def masked_mean(hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, H), (B, T) bool -> (B, H)``: mean over the tokens the mask selects."""
    keep = pool_mask.to(hidden.device)[:, :, None]  # (B, T, 1)
    # where(), not multiplication: a padded position may hold NaN and 0 * NaN is NaN
    total = torch.where(keep, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(dim=1)
    count = keep.sum(dim=1).clamp(min=1).to(hidden.dtype)  # (B, 1)
    return total / count


def pool(hidden: torch.Tensor, how: str, last_index: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
    """Pool in float32 (bf16 sums over 4k tokens lose digits) and L2-normalise: ``(B, T, H) -> (B, H)``."""
    hidden = hidden.float()
    if how == "last":
        vectors = last_token(hidden, last_index)
    elif how == "mean":
        vectors = masked_mean(hidden, pool_mask)
    elif how == "hybrid":
        vectors = (last_token(hidden, last_index) + masked_mean(hidden, pool_mask)) / 2
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}; got {how!r}")
    return torch.nn.functional.normalize(vectors, p=2.0, dim=-1)
