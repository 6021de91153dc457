"""NGCF (Wang et al., SIGIR 2019) — docs/models/ngcf.md."""

from __future__ import annotations

import torch

from modalrec.models import register
from modalrec.models.base import Batch, Recommender, xavier_embedding
from modalrec.nn.losses import bpr_loss, sq_reg
from modalrec.nn.propagation import NGCFPropagation, split_nodes
from modalrec.nn.scoring import pair_scores


@register
class NGCF(Recommender):
    """NGCF on A_rw+I = (D+I)^{-1}(A+I); H = [E⁰ ‖ norm(E¹) ‖ … ‖ norm(E^L)].

    Loss: BPR + λ·SqReg_B on the batch's final concatenated rows.
    Config: ``weight_size`` ([64, 64]), ``mess_dropout`` ([0.1, 0.1]), ``leaky_slope``
    (0.01 as in the PyTorch port whose runs give the reference numbers; the original
    TensorFlow code used 0.2), ``reg_weight`` (λ).
    """

    name = "NGCF"
    config_name = "ngcf"
    description = "Neural graph CF: feature-transforming propagation with concatenated layers (ID only)."

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        if len(config.mess_dropout) != len(config.weight_size):
            raise self.setting_error(
                "mess_dropout",
                f"needs one value per layer of weight_size {list(config.weight_size)}; got {config.mess_dropout}",
            )
        self.propagation = NGCFPropagation(d, list(config.weight_size), list(config.mess_dropout), config.leaky_slope)
        self.adj = graphs.rw_adj()
        self.to(graphs.device)

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        e0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        return split_nodes(self.propagation(self.adj, e0), self.n_users)

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self.compute_representations()
        u, p, n = users[batch.users], items[batch.pos], items[batch.neg]
        return bpr_loss(pair_scores(u, p), pair_scores(u, n)) + self.config.reg_weight * sq_reg(u, p, n)
