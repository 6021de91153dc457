"""BM3 (Zhou et al., WWW 2023, "Bootstrap Latent Representations for Multi-modal Recommendation").

Equations, choices and cost: docs/models/bm3.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Recommender, feature_tensor, xavier_embedding
from modalrec.nn.losses import emb_loss, negative_cosine_loss
from modalrec.nn.propagation import propagate, split_nodes


def _xavier_normal_linear(n_in: int, n_out: int) -> nn.Linear:
    """Linear with bias, Xavier-normal weight (bias keeps PyTorch's default init, as in the reference)."""
    lin = nn.Linear(n_in, n_out)
    nn.init.xavier_normal_(lin.weight)
    return lin


@register
class BM3(Recommender):
    """BM3: LightGCN encoder + shared predictor pulled towards dropout-perturbed, detached targets.

    Parameters: E_u, E_i (Xavier-uniform); predictor Π: d → d; per content modality m (any number)
    a TRAINABLE copy T_m of the raw features (init X_m) and Φ_m: F_m → d (Linear with bias,
    Xavier-normal weights).

    Forward: [G_u; G_i] = LGC(E⁰; A_sym, L); H_u = G_u, H_i = G_i + E_i; C_m = Φ_m(T_m).
    Loss for a batch (u_b, p_b) (negatives unused), c(x, y) = 1 − mean_b cos(x_b, y_b), targets
    Ũ = Drop_ρ(H_u), Ĩ = Drop_ρ(H_i), C̃_m = Drop_ρ(C_m) of detached copies (dropout always on):

        L = c(Π(H_u[u]), Ĩ[p]) + c(Π(H_i[p]), Ũ[u]) + λ·EmbLoss(H_u, H_i)
            + λ_cl Σ_m [ c(Π(C_m[p]), Ĩ[p]) + c(Π(C_m[p]), C̃_m[p]) ],

    EmbLoss over the FULL H_u, H_i: (‖H_u‖_F + ‖H_i‖_F) / n_i. Score: Π(H_u[u]) · Π(H_i[j]).

    Only the rows a batch touches are computed (C_m[p] = Φ_m(T_m[p]); same values as projecting all
    items and indexing). Dropout masks are drawn once per distinct user/item of the batch, so a
    duplicated row gets the same mask, as when the reference drops the whole table and indexes it.

    Config: ``n_layers`` L (1), ``dropout`` ρ (0.5), ``reg_weight`` λ (0.1), ``cl_weight`` λ_cl (2.0).
    No [REF-QUIRK] is listed for BM3, so there is no ``reference_quirks`` key. [choice] With any
    number of modalities the content terms are summed over modalities (two per modality, as for
    v and t). The trainer still draws negatives (MMRec's ``use_neg_sampling: False``); they are ignored.
    """

    name = "BM3"
    config_name = "bm3"
    description = "Bootstrapped multimodal rec.: LightGCN + predictor vs. dropout targets, no negatives."
    min_modalities = 1
    cold_start = COLD_CONTENT
    cold_rule = (
        "H_j = the content branch's prediction of the online item vector, q(mean_m Φ_m(x_j)), scaled to the mean "
        "warm-item norm (E_i row at the warm mean, feature rows at the raw features)"
    )

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_mean(self.item_emb.weight), *self.cold_feature_copies(self.features)]

    def compute_cold_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """BM3 ranks with q(H) where H is ID-only; its content branch is trained so that q(Φ_m(x_j))
        points like H_j (negative cosine), so a cold item's H_j is that prediction, averaged over
        modalities and rescaled to the mean norm of the warm items' H (the loss fixes only the direction)."""
        with self.cold_substitution():
            users, items = self.encode()
            cold = self.cold_items.to(items.device)
            c = torch.stack([proj(f[cold]) for f, proj in zip(self.features, self.projections, strict=True)]).mean(0)
        scale = items[self.warm_items.to(items.device)].norm(dim=1).mean()
        items = items.clone()
        items[cold] = F.normalize(self.predictor(c), dim=1) * scale
        return self.predictor(users), self.predictor(items)

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.n_layers = int(config.n_layers)
        self.dropout = float(config.dropout)
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.predictor = _xavier_normal_linear(d, d)
        self.features = nn.ParameterList()
        self.projections = nn.ModuleList()
        for m in self.modalities:
            x = feature_tensor(dataset.features, m)
            self.features.append(nn.Parameter(x.clone()))
            self.projections.append(_xavier_normal_linear(x.shape[1], d))
        self.adj = graphs.norm_adj()
        self.to(graphs.device)

    def encode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(H_u, H_i): LightGCN on A_sym, the item ID table added once more to the item side."""
        e0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        users, items = split_nodes(propagate(self.adj, e0, self.n_layers, "mean"), self.n_users)
        return users, items + self.item_emb.weight

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.encode()
        return self.predictor(users), self.predictor(items)

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x.detach(), self.dropout, training=True)

    def loss(self, batch: Batch) -> torch.Tensor:
        h_u, h_i = self.encode()
        uu, u_inv = torch.unique(batch.users, return_inverse=True)
        pu, p_inv = torch.unique(batch.pos, return_inverse=True)
        hu_b, hi_b = h_u[uu], h_i[pu]  # distinct batch rows
        pred_u, pred_i = self.predictor(hu_b), self.predictor(hi_b)
        t_u, t_i = self._target(hu_b), self._target(hi_b)
        loss = negative_cosine_loss(pred_u[u_inv], t_i[p_inv]) + negative_cosine_loss(pred_i[p_inv], t_u[u_inv])
        cl = h_u.new_zeros(())
        for feat, proj in zip(self.features, self.projections, strict=True):
            c = proj(feat[pu])
            pred_c = self.predictor(c)[p_inv]
            cl = cl + negative_cosine_loss(pred_c, t_i[p_inv]) + negative_cosine_loss(pred_c, self._target(c)[p_inv])
        reg = emb_loss(h_u, h_i)
        return loss + float(self.config.reg_weight) * reg + float(self.config.cl_weight) * cl
