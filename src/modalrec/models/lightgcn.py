"""LightGCN (He et al., SIGIR 2020) — docs/models/lightgcn.md."""

from __future__ import annotations

import torch

from modalrec.models import register
from modalrec.models.base import Batch, Recommender, xavier_embedding
from modalrec.nn.losses import bpr_loss, emb_loss
from modalrec.nn.propagation import propagate, split_nodes
from modalrec.nn.scoring import pair_scores


@register
class LightGCN(Recommender):
    """LightGCN: [H_u; H_i] = mean_{l=0..L} Â^l E⁰, s(u, j) = H_u[u] · H_i[j].

    Loss: BPR on the propagated embeddings + λ·EmbLoss on the batch's layer-0 (ego) rows.
    Config: ``n_layers`` (L, 2), ``reg_weight`` (λ, 1e-4). Embeddings Xavier-uniform.
    """

    name = "LightGCN"
    config_name = "lightgcn"
    description = "Graph CF by linear propagation on the normalised user-item graph (ID only)."

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.adj = graphs.norm_adj()
        self.to(graphs.device)

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        e0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        return split_nodes(propagate(self.adj, e0, self.config.n_layers, "mean"), self.n_users)

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self.compute_representations()
        u, p, n = users[batch.users], items[batch.pos], items[batch.neg]
        reg = emb_loss(self.user_emb(batch.users), self.item_emb(batch.pos), self.item_emb(batch.neg))
        return bpr_loss(pair_scores(u, p), pair_scores(u, n)) + self.config.reg_weight * reg
