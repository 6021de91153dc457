"""ImgLightGCN: LightGCN whose item table adds a linear projection of the image features.

The worked example of modalrec's docs/extending.md: a model in its own file, with its own settings
(``imglightgcn.yaml`` beside it) and a content cold rule. Name it wherever modalrec takes a model by
its file, ``path/to/imglightgcn.py:ImgLightGCN``; installed as the plugin example
(``examples/modalrec-plugin-example``), by its entry-point name ``ImgLightGCN``.
"""

from __future__ import annotations

import torch
from torch import nn

from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Recommender, xavier_embedding
from modalrec.nn.losses import bpr_loss, emb_loss
from modalrec.nn.propagation import propagate, split_nodes
from modalrec.nn.scoring import pair_scores


class ImgLightGCN(Recommender):
    """LightGCN over ID embeddings plus projected image features.

    E⁰_u = E_u,  E⁰_j = E_j + s · x_j W  (x_j: item j's image features, W: d_img × d, s: ``proj_scale``);
    [H_u; H_i] = mean_{l=0..L} Â^l E⁰,  s(u, j) = H_u[u] · H_i[j].
    Loss: BPR + λ · EmbLoss on the batch's ID rows (λ: ``reg_weight``; L: ``n_layers``).
    Cold items: their ID rows are replaced by the warm items' mean row, so a cold item is scored
    from its image (through W) and the shared weights only.
    """

    description = "LightGCN + a linear projection of the image features (docs/extending.md example)."
    config_file = "imglightgcn.yaml"  # its settings, beside this file
    min_modalities = 1
    cold_start = COLD_CONTENT
    cold_rule = "ID row → mean of the warm items' rows; scored from the item's image features"

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        if "image" not in dataset.features:
            raise self.setting_error(None, f"needs an 'image' modality; dataset has {', '.join(self.modalities)}")
        d = int(config.embedding_size)
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.register_feature_buffers(dataset, ["image"])  # data, not state: kept out of model.pt
        self.proj = nn.Linear(self.feature_buffer("image").shape[1], d, bias=False)
        self.adj = graphs.norm_adj()
        self.to(graphs.device)

    def used_modalities(self) -> list[str]:
        return ["image"]

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        items = self.item_emb.weight + self.config.proj_scale * self.proj(self.feature_buffer("image"))
        e0 = torch.cat([self.user_emb.weight, items])
        return split_nodes(propagate(self.adj, e0, self.config.n_layers, "mean"), self.n_users)

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self.representations()  # training mode: recomputed, with gradients
        u, p, n = users[batch.users], items[batch.pos], items[batch.neg]
        reg = emb_loss(self.user_emb(batch.users), self.item_emb(batch.pos), self.item_emb(batch.neg))
        return bpr_loss(pair_scores(u, p), pair_scores(u, n)) + self.config.reg_weight * reg

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_mean(self.item_emb.weight)]
