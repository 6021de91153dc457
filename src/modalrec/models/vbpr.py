"""VBPR (He & McAuley, AAAI 2016), MMRec variant — docs/models/vbpr.md."""

from __future__ import annotations

import torch
from torch import nn

from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Recommender, feature_tensor
from modalrec.nn.losses import bpr_loss, emb_loss
from modalrec.nn.scoring import pair_scores

# MMRec concatenates text first, then image; other modalities follow in dataset order.
_ORDER = ("text", "image")


def feature_order(modalities: list[str]) -> list[str]:
    """Content modalities in VBPR's concatenation order: text, image, then the rest as given."""
    head = [m for m in _ORDER if m in modalities]
    return head + [m for m in modalities if m not in head]


@register
class VBPR(Recommender):
    """VBPR, MMRec form: MF whose item vector is [ID part ‖ linear projection of content].

    Equations:

    1. C = X W + b, X = [X_text ‖ X_image ‖ …] (raw, frozen features; n_i × ΣF_m), W Xavier-normal, b = 0;
    2. H_i = [Q ‖ C] (n_i × 2d), H_u = P (n_u × 2d);
    3. s(u, j) = P_u · H_i[j] = P_u^(1)·Q_j + P_u^(2)·C_j.

    Loss: L = BPR (batch mean) + λ·EmbLoss(P[u], H_i[p], H_i[n]) — unsquared Frobenius norms / B
    (MMRec's EmbLoss), the item rows including their projected content part.

    Config: ``embedding_size`` (d, 64), ``reg_weight`` (λ, 1.0 — the DA-MRS Baby/Sports value).
    P and Q are Xavier-uniform, as in MMRec.

    [choices] Any number of content modalities is concatenated (text first, then image, then the
    others in dataset order — MMRec's t‖v order where both exist); no paper-form bias terms.
    Speed: the loss only needs C on the batch's items, so C is computed for the unique positive and
    negative items of the batch (X[items] W + b) — the same loss and gradients as projecting all
    items every batch (the projection is recomputed each batch either way), in
    about half the multiply-adds. Scoring projects all items once per evaluation.
    """

    name = "VBPR"
    config_name = "vbpr"
    description = "MF with items = [ID embedding | linear projection of the concatenated content features]."
    min_modalities = 1

    cold_start = COLD_CONTENT
    cold_rule = "ID part Q_j = 0 (the L2 prior's mode); score = P_u^(2)·(x_j W + b), the content term only"

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_zero(self.item_emb)]

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.feature_modalities = feature_order(self.modalities)
        feats = feature_tensor(dataset.features, self.feature_modalities)
        self.register_buffer("features", feats, persistent=False)
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.item_linear = nn.Linear(feats.shape[1], d)
        nn.init.xavier_normal_(self.item_linear.weight)
        nn.init.zeros_(self.item_linear.bias)
        self._gather_buffer: torch.Tensor | None = None
        self.to(graphs.device)

    def _gather_features(self, items: torch.Tensor) -> torch.Tensor:
        """X[items] written into a reused buffer.

        A fresh (items × ΣF_m) tensor each batch (tens of MB) costs more in page faults than the
        copy itself; the features are frozen, so the buffer only has to survive until the batch's
        backward pass (autograd's version check guards against a reuse before that).
        """
        x = self.features
        need = items.shape[0]
        buf = self._gather_buffer
        if buf is None or buf.shape[0] < need or buf.device != x.device:
            buf = self._gather_buffer = x.new_empty((max(need, min(self.n_items, 2 * need)), x.shape[1]))
        out = buf[:need]
        torch.index_select(x, 0, items, out=out)
        return out

    def item_table(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """H_i = [Q ‖ X W + b] for the given items (all items when None)."""
        if items is None:
            return torch.cat([self.item_emb, self.item_linear(self.features)], dim=1)
        return torch.cat([self.item_emb[items], self.item_linear(self._gather_features(items))], dim=1)

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_table()

    def loss(self, batch: Batch) -> torch.Tensor:
        items, inverse = torch.unique(torch.cat([batch.pos, batch.neg]), return_inverse=True)
        table = self.item_table(items)
        u = self.user_emb[batch.users]
        p, n = table[inverse[: batch.pos.shape[0]]], table[inverse[batch.pos.shape[0] :]]
        return bpr_loss(pair_scores(u, p), pair_scores(u, n)) + self.config.reg_weight * emb_loss(u, p, n)
