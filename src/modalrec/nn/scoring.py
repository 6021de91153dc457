"""Scoring helpers shared by models: dot-product ranking and modality attention."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def modality_attention_scores_into(
    scaled_scores: Sequence[torch.Tensor], dim: int, out: torch.Tensor, workspace: torch.Tensor
) -> torch.Tensor:
    """:func:`modality_attention_scores`' r̂ for ranking, written into ``out`` (no autograd).

    ``scaled_scores`` are the t_m = s_m / √d, one array per modality (a GEMM of user rows scaled
    once by 1/√d gives them directly). r̂ = Σ_m ā_m s_m = √d · Σ_m e^(t_m − t*) t_m / Σ_m
    e^(t_m − t*), t* = max_m t_m. ``workspace``, a (4, ≥ out.numel()) buffer, holds the four
    intermediates, so a caller scoring tile after tile allocates nothing per tile: after training,
    with the heap the trainer leaves, per-tile allocations made MARIO's ranking about 2× slower
    (measured by hand on the × 4 scale set).
    """
    n, shape = out.numel(), out.shape
    top, e, numerator, denominator = (w[:n].view(shape) for w in workspace)
    top.copy_(scaled_scores[0])
    for t in scaled_scores[1:]:
        torch.maximum(top, t, out=top)
    for i, t in enumerate(scaled_scores):
        if i == 0:
            torch.sub(t, top, out=denominator).exp_()
            torch.mul(denominator, t, out=numerator)
        else:
            torch.sub(t, top, out=e).exp_()
            denominator += e
            numerator.addcmul_(e, t)
    return torch.div(numerator, denominator, out=out).mul_(math.sqrt(dim))


def meta_weight_head_affine(
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collapse a two-layer linear head on z = [δ·1_d; x; y] into its affine form.

    MeAIM's exact fast ranking, docs/models/meaim.md#scoring-and-ranking.

    h(z) = W2 (W1 z + b1) + b2 with no non-linearity in between (dropout off) equals
    v·z + c0 with v = W2 W1 and c0 = W2 b1 + b2; the first d inputs all carry δ, so
    h = c_δ·δ + p·x + q·y + c0 with c_δ = Σ_{k<d} v_k, p = v[d:2d], q = v[2d:3d].
    Returns (c_δ, p, q, c0) — c_δ and c0 as 0-d tensors.
    """
    v = (w2 @ w1).reshape(-1)
    c0 = (w2 @ b1 + b2).reshape(())
    return v[:dim].sum(), v[dim : 2 * dim], v[2 * dim : 3 * dim], c0
