"""Linear maps of constant feature tables, written once for the models that compress content features."""

from __future__ import annotations

import torch


class _FeatureProjection(torch.autograd.Function):
    """F Wᵀ whose weight gradient is taken as (Fᵀ G)ᵀ instead of autograd's Gᵀ F.

    Both are the same (d × d_m) product; with F a tall (items × d_m) table and d = 64 outputs, MKL ran the
    first form about 1.25× faster on the host it was chosen on (7,050 × 4,096 image features: 28 ms against
    36 ms, measured by hand), and every step of MARIO and MeAIM takes this gradient over all items. Which form
    is faster depends on the CPU: on the AVX-512 host of issue #30's later epoch-limit records the second one
    took 14 ms against 22 ms (measured by hand, interleaved). Kept: switching would trade one host's speed for
    the other's and move MARIO's and MeAIM's numbers at float rounding
    (docs/scale.md#the-seed-models-epochs-against-their-arithmetic).
    """

    @staticmethod
    def forward(ctx, features, weight):  # type: ignore[override]
        ctx.save_for_backward(features, weight)
        return features @ weight.T

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        features, weight = ctx.saved_tensors
        grad_features = grad_out @ weight if ctx.needs_input_grad[0] else None
        grad_weight = (features.T @ grad_out).T if ctx.needs_input_grad[1] else None
        return grad_features, grad_weight


def project_features(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``features @ weight.T`` — an ``nn.Linear`` without bias applied to a whole feature table (MARIO's
    C_m = F_m W_m, Eq. 1; MeAIM's P_m F_m), with the faster form of the weight gradient."""
    return _FeatureProjection.apply(features, weight)
