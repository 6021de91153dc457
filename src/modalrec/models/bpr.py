"""BPR-MF (Rendle et al., UAI 2009) — docs/models/bpr.md."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from modalrec.models import register
from modalrec.models.base import Batch, Recommender, xavier_embedding
from modalrec.nn.losses import bpr_loss, emb_loss, sq_reg
from modalrec.nn.scoring import pair_scores


@register
class BPR(Recommender):
    """Matrix factorisation with the BPR objective.

    s(u, j) = e_u · e_j;  L = −mean log σ(s(u,p) − s(u,n)) + λ·EmbLoss(e_u, e_p, e_n),
    where EmbLoss is the MMRec form (unsquared Frobenius norms / batch size).
    Embeddings Xavier-normal. Config: ``embedding_size`` (64), ``reg_weight`` (λ, 1e-4).

    ``item_bias: true`` adds a learned per-item bias b_j (zero at init), as in Rendle's
    BPR-MF and Cornac's BPR: s(u, j) = e_u · e_j + b_j, with the batch's b_p and b_n in the
    EmbLoss term. MMRec's BPR has none (the default). The bias is folded into the
    representations — users [e_u, 1], items [e_j, b_j] — so full ranking stays one GEMM.

    ``reg_form`` picks the regulariser: ``emb`` (MMRec's EmbLoss, the default) or ``sq``,
    SqReg = ½ Σ ‖x‖² / B over the batch's rows (biases included) — Rendle's and Cornac's
    per-sample L2, whose gradient λ·x shrinks each row in proportion to its size.
    ``init``: ``xavier_normal`` (MMRec, the default) or ``small_uniform``, U(−½, ½)/d per
    entry (Cornac's start; measured on amazon_scientific_mm it ends at a better optimum
    under plain SGD, see docs/models/bpr.md).

    With ``optimizer: sgd`` and ``reg_form: sq`` (Rendle's form) the trainer takes each step
    through :meth:`closed_form_sgd_step`: the same update, written out, touching only the
    batch's rows (docs/models/bpr.md#speed).
    """

    name = "BPR"
    config_name = "bpr"
    description = "Matrix factorisation trained with the BPR pairwise loss (ID only)."

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.user_emb = xavier_embedding(self.n_users, d, uniform=False)
        self.item_emb = xavier_embedding(self.n_items, d, uniform=False)
        if config.init == "small_uniform":  # Cornac's / MyMediaLite's start: U(−½, ½)/d, far below Xavier
            with torch.no_grad():
                for emb in (self.user_emb, self.item_emb):
                    emb.weight.uniform_(-0.5, 0.5).div_(d)
        self.item_bias: nn.Embedding | None = None
        self.reg = {"emb": emb_loss, "sq": sq_reg}[config.reg_form]
        if bool(config.item_bias):
            self.item_bias = nn.Embedding(self.n_items, 1)
            nn.init.zeros_(self.item_bias.weight)
        self.to(graphs.device)

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.user_emb.weight, self.item_emb.weight
        if self.item_bias is None:
            return users, items
        return torch.cat([users, users.new_ones(users.shape[0], 1)], dim=1), torch.cat(
            [items, self.item_bias.weight], dim=1
        )

    def loss(self, batch: Batch) -> torch.Tensor:
        u = self.user_emb(batch.users)
        p = self.item_emb(batch.pos)
        n = self.item_emb(batch.neg)
        pos, neg = pair_scores(u, p), pair_scores(u, n)
        if self.item_bias is None:
            return bpr_loss(pos, neg) + self.config.reg_weight * self.reg(u, p, n)
        bp, bn = self.item_bias(batch.pos), self.item_bias(batch.neg)
        return bpr_loss(pos + bp[:, 0], neg + bn[:, 0]) + self.config.reg_weight * self.reg(u, p, n, bp, bn)

    def has_closed_form_sgd_step(self) -> bool:
        return self.config.reg_form == "sq"

    def closed_form_sgd_step(self, batch: Batch, learning_rate: float) -> float | None:
        """The SGD step on L = mean_s softplus(−x_s) + λ·SqReg, x_s = e_u·(e_p − e_n) + b_p − b_n, by hand.

        With g_s = −σ(−x_s)/B: ∂L/∂e_u = g_s (e_p − e_n) + (λ/B) e_u, ∂L/∂e_p = g_s e_u + (λ/B) e_p,
        ∂L/∂e_n = −g_s e_u + (λ/B) e_n, ∂L/∂b_p = g_s + (λ/B) b_p, ∂L/∂b_n = −g_s + (λ/B) b_n; a row
        used by several samples gets the sum. Every gradient is taken at the weights before the step
        (as autograd's would be), then added into the tables row-wise. Rendle's per-sample SGD is the
        same update with step learning_rate / B.
        """
        users, pos, neg = batch.users, batch.pos, batch.neg
        lam, b = float(self.config.reg_weight), users.shape[0]
        user_table, item_table = self.user_emb.weight, self.item_emb.weight
        u, p, n = user_table.index_select(0, users), item_table.index_select(0, pos), item_table.index_select(0, neg)
        diff = p - n
        x = (u * diff).sum(dim=1)
        # ‖·‖² of each gathered block as one BLAS dot: per-call overhead, not arithmetic, is what a
        # step of 128 rows costs, so the step is written in as few tensor calls as the update allows
        reg = (
            torch.vdot(u.view(-1), u.view(-1)) + torch.vdot(p.view(-1), p.view(-1)) + torch.vdot(n.view(-1), n.view(-1))
        )
        if self.item_bias is not None:
            bias = self.item_bias.weight.view(-1)
            bp, bn = bias.index_select(0, pos), bias.index_select(0, neg)
            x += bp - bn
            reg += torch.vdot(bp, bp) + torch.vdot(bn, bn)
        loss = float(F.softplus(-x).mean()) + lam * 0.5 * float(reg) / b
        if not math.isfinite(loss):
            return None
        g = torch.sigmoid(-x).mul_(-1.0 / b)  # ∂L/∂x_s
        gu = u * g.unsqueeze(1)
        shrink, step = lam / b, -learning_rate
        user_table.index_add_(0, users, u.mul_(shrink).addcmul_(diff, g.unsqueeze(1)), alpha=step)
        item_table.index_add_(0, pos, p.mul_(shrink).add_(gu), alpha=step)
        item_table.index_add_(0, neg, n.mul_(shrink).sub_(gu), alpha=step)
        if self.item_bias is not None:
            bias.index_add_(0, pos, bp.mul_(shrink).add_(g), alpha=step)
            bias.index_add_(0, neg, bn.mul_(shrink).sub_(g), alpha=step)
        return loss
