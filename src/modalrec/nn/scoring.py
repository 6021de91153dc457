"""Scoring helpers shared by models: dot-product ranking and modality attention."""

from __future__ import annotations

import math

import torch


def dot_scores(user_repr: torch.Tensor, item_repr: torch.Tensor) -> torch.Tensor:
    """Full-ranking scores of a user block: one GEMM, (B × d) @ (d × I)."""
    return user_repr @ item_repr.T


def pair_scores(user_repr: torch.Tensor, item_repr: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of aligned (user, item) representation pairs."""
    return (user_repr * item_repr).sum(dim=-1)


def modality_attention_scores(per_modality_scores: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """User-queried softmax attention over modality scores (MARIO Eqs. 5–7).

    ``per_modality_scores`` has the modality on axis 0: s_m = u · v^m. Then
    ā_m = softmax_m(s_m / √d) and r̂ = Σ_m ā_m s_m, which equals u · Σ_m ā_m v^m
    without ever forming the personalised item vectors. Returns (r̂, ā).
    """
    attn = torch.softmax(per_modality_scores / math.sqrt(dim), dim=0)
    return (attn * per_modality_scores).sum(dim=0), attn
