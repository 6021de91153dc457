"""Loss primitives (baselines.md §2.4), written once for every model."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """BPR: −log σ(s⁺ − s⁻), mean (default) or sum over the batch; log-sigmoid for stability."""
    loss = -F.logsigmoid(pos_scores - neg_scores)
    return loss.mean() if reduction == "mean" else loss.sum()


def emb_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """MMRec ``EmbLoss``: (Σ_j ‖X_j‖_F) / rows(X_last) — unsquared Frobenius norms over batch size."""
    total = sum(torch.linalg.norm(t) for t in tensors)
    return total / tensors[-1].shape[0]


def l2_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """½ Σ_j ‖X_j‖_F² (no division; LayerGCN)."""
    return 0.5 * sum(t.pow(2).sum() for t in tensors)


def sq_reg(*tensors: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """``SqReg_B``: (½ Σ_j ‖X_j‖_F²) / B (LightGCN paper, NGCF, LATTICE, MARIO)."""
    b = batch_size if batch_size is not None else tensors[-1].shape[0]
    return l2_loss(*tensors) / b
