"""Loss primitives (baselines.md §2.4), written once for every model."""

from __future__ import annotations

import math

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


# ====================================================================== blocked full-table losses
class _EagerBlockSum(torch.autograd.Function):
    """Σ over row blocks of ``fn(rows_block…, *shared)`` with the gradients taken block by block.

    The forward pass runs ``fn`` on one block of rows at a time under autograd, takes the
    block's gradients at once and accumulates them, so the only memory that outlives a
    block is one gradient per input; nothing of size (rows × table) is kept for the
    backward pass, which just scales the stored gradients.
    """

    @staticmethod
    def forward(ctx, fn, block_size: int, n_rows: int, *tensors):  # type: ignore[override]
        rows, shared = tensors[:n_rows], tensors[n_rows:]
        need = [t.requires_grad and t.is_floating_point() for t in tensors]
        grads: list[torch.Tensor | None] = [
            torch.zeros_like(t) if n else None for t, n in zip(tensors, need, strict=True)
        ]
        total = torch.zeros((), dtype=tensors[n_rows].dtype if shared else rows[0].dtype, device=rows[0].device)
        n = rows[0].shape[0]
        with torch.enable_grad():
            shared_leaves = [t.detach().requires_grad_(r) for t, r in zip(shared, need[n_rows:], strict=True)]
            for lo in range(0, n, block_size):
                row_leaves = [
                    t[lo : lo + block_size].detach().requires_grad_(r) for t, r in zip(rows, need[:n_rows], strict=True)
                ]
                leaves = row_leaves + shared_leaves
                value = fn(*leaves)
                wrt = [leaf for leaf, r in zip(leaves, need, strict=True) if r]
                block_grads = iter(torch.autograd.grad(value, wrt) if wrt else ())
                for j, r in enumerate(need):
                    if not r:
                        continue
                    g = next(block_grads)
                    if j < n_rows:
                        grads[j][lo : lo + block_size] = g  # type: ignore[index]
                    else:
                        grads[j].add_(g)  # type: ignore[union-attr]
                total = total + value.detach()
        ctx.grads = grads
        return total

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        return (None, None, None, *(None if g is None else g * grad_out for g in ctx.grads))


def blocked_row_sum(fn, rows: list[torch.Tensor], shared: list[torch.Tensor], block_size: int) -> torch.Tensor:
    """Σ_blocks fn(*row_blocks, *shared): a row-separable loss evaluated ``block_size`` rows at a time.

    ``rows`` are sliced along dim 0 (anchors, their indices …); ``shared`` (full tables)
    are passed whole. ``fn`` must return the SUM of its per-row terms. Peak memory is
    O(block × table) and no (rows × table) activation is stored for backward: each
    block's gradients are taken eagerly (same GEMM count as plain autograd). Without
    autograd (no_grad, or no input needs a gradient) the blocks simply run and sum.
    """
    tensors = [*rows, *shared]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        with torch.no_grad():
            n = rows[0].shape[0]
            parts = [fn(*(t[lo : lo + block_size] for t in rows), *shared) for lo in range(0, n, block_size)]
            return torch.stack(parts).sum() if parts else rows[0].new_zeros(())
    return _EagerBlockSum.apply(fn, int(block_size), len(rows), *tensors)


def _info_nce_block(anchors: torch.Tensor, index: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(anchors @ table.T, index, reduction="sum")


def info_nce_full(
    anchors: torch.Tensor,
    positives_table: torch.Tensor,
    anchor_index: torch.Tensor,
    tau: float = 0.2,
    block_size: int = 512,
) -> torch.Tensor:
    """InfoNCE of anchors against a FULL table of candidates, cosine similarities, temperature τ.

    Row k's positive is ``positives_table[anchor_index[k]]``; every row of the table is
    a candidate (the positive included):

        L = −mean_k log[ exp(cos(x_k, Y_{i_k})/τ) / Σ_n exp(cos(x_k, Y_n)/τ) ].

    Computed ``block_size`` anchors at a time (:func:`blocked_row_sum`), so memory is
    O(block × table) however many anchors there are. The minimum, for a table whose
    rows are distinct, is reached when each anchor points the same way as its positive.
    """
    x = F.normalize(anchors, dim=1) / tau  # 1/τ folded into the (rows × d) side, not the logits
    y = F.normalize(positives_table, dim=1)
    return blocked_row_sum(_info_nce_block, [x, anchor_index], [y], block_size) / max(1, anchors.shape[0])


def bernoulli_kl_symmetric(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise symmetric KL between Bernoulli(p) and Bernoulli(q): kl(p‖q) + kl(q‖p).

    kl(p‖q) = p ln(p/q) + (1−p) ln((1−p)/(1−q)); probabilities are clamped to
    [eps, 1−eps] first. The sum of both directions simplifies exactly to
    (p − q)·(logit p − logit q), which is what is computed: 0 iff p = q, positive otherwise.
    """
    p = p.clamp(eps, 1.0 - eps)
    q = q.clamp(eps, 1.0 - eps)
    return (p - q) * ((torch.log(p) - torch.log1p(-p)) - (torch.log(q) - torch.log1p(-q)))


def bernoulli_kl_symmetric_logits(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """:func:`bernoulli_kl_symmetric` of p = σ(x), q = σ(y), computed from the logits.

    Clamping σ(x) to [eps, 1−eps] equals clamping x to [−c, c] with c = logit(1−eps)
    (σ is monotone), and logit(σ(x̃)) = x̃, so the value is exactly
    (σ(x̃) − σ(ỹ))·(x̃ − ỹ): no logarithms, and accurate where σ rounds to 1 in float32.
    """
    c = math.log((1.0 - eps) / eps)
    x = x.clamp(-c, c)
    y = y.clamp(-c, c)
    return (torch.sigmoid(x) - torch.sigmoid(y)) * (x - y)


def dot_bernoulli_kl_full(
    anchors: torch.Tensor, table_p: torch.Tensor, table_q: torch.Tensor, block_size: int = 512, eps: float = 1e-7
) -> torch.Tensor:
    """Mean over (anchor, table row) of ``bernoulli_kl_symmetric(σ(x·P_n), σ(x·Q_n))``.

    P = σ(X Pᵀ) and Q = σ(X Qᵀ) are (anchors × table) probability matrices (MeAIM's
    preference distributions); computed ``block_size`` anchors at a time so no full
    (anchors × table) matrix is ever kept.
    """

    def block(xb: torch.Tensor, tp: torch.Tensor, tq: torch.Tensor) -> torch.Tensor:
        return bernoulli_kl_symmetric_logits(xb @ tp.T, xb @ tq.T, eps).sum()

    n = anchors.shape[0] * table_p.shape[0]
    return blocked_row_sum(block, [anchors], [table_p, table_q], block_size) / max(1, n)
