"""BPR-MF (Rendle et al., UAI 2009) — docs/models/bpr.md."""

from __future__ import annotations

import torch

from modalrec.models import register
from modalrec.models.base import Batch, Recommender, xavier_embedding
from modalrec.nn.losses import bpr_loss, emb_loss
from modalrec.nn.scoring import pair_scores


@register
class BPR(Recommender):
    """Matrix factorisation with the BPR objective.

    s(u, j) = e_u · e_j;  L = −mean log σ(s(u,p) − s(u,n)) + λ·EmbLoss(e_u, e_p, e_n),
    where EmbLoss is the MMRec form (unsquared Frobenius norms / batch size).
    Embeddings Xavier-normal. Config: ``embedding_size`` (64), ``reg_weight`` (λ, 1e-4).
    """

    name = "BPR"
    config_name = "bpr"
    description = "Matrix factorisation trained with the BPR pairwise loss (ID only)."

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = config.embedding_size
        self.user_emb = xavier_embedding(self.n_users, d, uniform=False)
        self.item_emb = xavier_embedding(self.n_items, d, uniform=False)

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb.weight, self.item_emb.weight

    def loss(self, batch: Batch) -> torch.Tensor:
        u = self.user_emb(batch.users)
        p = self.item_emb(batch.pos)
        n = self.item_emb(batch.neg)
        return bpr_loss(pair_scores(u, p), pair_scores(u, n)) + self.config.reg_weight * emb_loss(u, p, n)
