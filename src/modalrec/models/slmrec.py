"""SLMRec (Tao et al., IEEE TMM 2022, "Self-supervised Learning for Multimedia Recommendation").

Equations, choices and cost: docs/models/slmrec.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modalrec.graphs import SparseOperator
from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Recommender, xavier_embedding
from modalrec.nn.losses import info_nce_in_batch, sq_reg
from modalrec.nn.scoring import dot_scores


def _xavier_linear(n_in: int, n_out: int) -> nn.Linear:
    """Linear with bias, Xavier-uniform weight (bias keeps PyTorch's default init, as in the reference)."""
    lin = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(lin.weight)
    return lin


@register
class SLMRec(Recommender):
    """SLMRec: one LightGCN view per source (ID + each modality), concat fusion, in-batch InfoNCE + FAC.

    Parameters: E_u, E_i (Xavier-uniform); per content modality m a projection Π_m: F_m → d of the
    L2-normalised, frozen features X̃_m = norm(X_m); fusion Ψ_u, Ψ_i: (1+M)d → d; FAC heads (all
    Linear with bias, Xavier-uniform weights).

    Forward (M = number of content modalities, any M ≥ 1):

    1. P_m = Π_m(X̃_m) (n_i × d);
    2. [I_u; I_i] = LGC([E_u; E_i]), [M_u; M_i] = LGC([E_u; P_m]) for every m, L = ``layer_num`` on
       A_sym. The 1+M views are propagated together on their column-wise concatenation,
       the rows that are equal in all views only once (:meth:`layer_sums`; same values);
    3. H_u = Ψ_u([I_u ‖ M_u …]), H_i = Ψ_i([I_i ‖ M_i …]);
    4. s(u, j) = H_u[u] · H_i[j] (σ is monotone and omitted, except in reference mode, below).

    Loss for a batch (u_b, p_b) (negatives unused):
    L_main = CE_b(norm(H_u[u_b]) · norm(H_i[p_{b'}]) / τ) (in-batch InfoNCE, users as anchors, τ = ``temp``);
    FAC on the batch's positives P: z_0 = I_i[P]; for the k-th modality m_k of the FAC order
    z_k = g^chain_k(z_{k−1}), e_k = g^{m_k}(M_i[P]) and L_k = CE(z_k e_kᵀ / τ_s) (raw dot products);
    L = L_main + α_s Σ_k L_k (+ λ_reg·SqReg_B(E_u[u], E_i[p]) in paper mode, below). Adam
    ``weight_decay`` 1e-4 (YAML) adds coupled L2 on all parameters, as in the reference.
    Only the batch rows are fused (Ψ applied to gathered rows) during training — same values.

    [REF-QUIRK] ``reference_quirks`` (default false):
    - false (paper): ``reg_weight`` λ_reg multiplies an L2 penalty SqReg_B (½‖·‖²/B) on the batch's
      ego ID rows E_u[u], E_i[p] [choice: the paper's λ‖Θ‖² term restricted to the batch rows];
      scores are recomputed from the current weights in eval mode.
    - true (reference): ``reg_weight`` is read but unused (only enlarges the grid); scores are
      σ(H_u H_iᵀ) from the representations cached by the LAST training forward (one optimiser
      step stale). The cache is a persistent buffer, so restoring the best epoch's weights also
      restores the stale representations of that epoch. Before any training step the current
      weights are used.

    Config: ``layer_num`` L (3), ``temp`` τ (0.2), ``ssl_temp`` τ_s (0.2), ``ssl_alpha`` α_s (0.01),
    ``reg_weight`` (1e-4), ``weight_decay`` (1e-4), ``reference_quirks`` (false).

    [choices] FAC order over any number of modalities: image first, text last, the others (audio …)
    in dataset order in between (the reference's v → a → t). Step k has a chain head d_{k−1} → d_k and
    a modality head d → d_k with d_k = d for k < M and d/2 for the last step (reference: v step d,
    t step d/2). The reference's v+t chain composes two linear heads (g_{iv→iva}, g_{iva→ivat})
    before the text contrast because its audio slot is empty; we use one head per step (a
    composition of linear maps is a linear map: same function class). The "pre" adjacency's
    +1e-8 degree eps is the shared A_sym's +1e-7 (no difference for nodes with training edges).
    Only the FAC task is implemented (FD/FM variants are not part of the baseline).
    """

    name = "SLMRec"
    config_name = "slmrec"
    description = "Self-supervised multimedia rec.: per-modality LightGCN views, in-batch InfoNCE + FAC contrast."
    min_modalities = 1

    cold_start = COLD_CONTENT
    cold_rule = "E_i row at the warm-item mean; the modality views Π_m(x̃_m) come from the features"

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_mean(self.item_emb.weight)]

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.n_layers = int(config.layer_num)
        self.reference_quirks = bool(config.reference_quirks)
        self.dim = d
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.register_feature_buffers(dataset, transform=lambda x: F.normalize(x, dim=1))  # frozen, L2-normalised
        self.projections = nn.ModuleList(_xavier_linear(dataset.features[m].shape[1], d) for m in self.modalities)
        n_views = 1 + len(self.modalities)
        self.fuse_user = _xavier_linear(n_views * d, d)
        self.fuse_item = _xavier_linear(n_views * d, d)
        # FAC: image first, text last, the rest in dataset order in between
        rank = {"image": 0, "text": 2}
        self.fac_order = sorted(range(len(self.modalities)), key=lambda i: rank.get(self.modalities[i], 1))
        dims = [d] + [d] * (len(self.fac_order) - 1) + [d // 2]
        self.fac_chain = nn.ModuleList(_xavier_linear(dims[k], dims[k + 1]) for k in range(len(self.fac_order)))
        self.fac_modal = nn.ModuleList(_xavier_linear(d, dims[k + 1]) for k in range(len(self.fac_order)))
        self.n_views = n_views
        r_hat = graphs.norm_adj_matrix()[: self.n_users, self.n_users :]  # the user-item block of A_sym
        self.r_hat = SparseOperator(r_hat, graphs.device, symmetric=False)
        self.r_hat_t = self.r_hat.t()
        if self.reference_quirks:  # H_u, H_i of the last training forward (persistent: restored with the best weights)
            self.register_buffer("stale_user", torch.zeros(self.n_users, d))
            self.register_buffer("stale_item", torch.zeros(self.n_items, d))
            self.register_buffer("stale_valid", torch.zeros((), dtype=torch.bool))
        self.to(graphs.device)

    # ------------------------------------------------------------------ views
    def layer_sums(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Σ_{l=0..L} of the propagated views, split into a shared and a per-view part per side.

        All views start users from the same E_u, and A_sym is bipartite, so at every even layer
        the user rows (and at every odd layer the item rows) are the SAME in all views: they are
        propagated once with d columns instead of (1+M)d (one third less sparse work for M = 2).
        Returns (users shared n_u×d, users per-view n_u×(1+M)d, items shared, items per-view);
        a part is None when no layer contributes to it.
        """
        e_u = self.user_emb.weight
        b0 = torch.cat(
            [self.item_emb.weight]
            + [proj(self.feature_buffer(m)) for m, proj in zip(self.modalities, self.projections, strict=True)],
            dim=1,
        )
        u_s, u_m, i_s, i_m = e_u, None, None, b0
        u_cur, i_cur = e_u, b0
        for layer in range(1, self.n_layers + 1):
            u_cur, i_cur = self.r_hat @ i_cur, self.r_hat_t @ u_cur
            if layer % 2:  # users per-view, items shared
                u_m = u_cur if u_m is None else u_m + u_cur
                i_s = i_cur if i_s is None else i_s + i_cur
            else:
                u_s = u_s + u_cur
                i_m = i_m + i_cur
        return u_s, u_m, i_s, i_m

    def combine(
        self, shared: torch.Tensor | None, multi: torch.Tensor | None, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """Mean over layers of all views, [ID ‖ modality 1 ‖ …], for ``rows`` (None: all rows)."""
        parts = []
        if shared is not None:
            parts.append((shared if rows is None else shared[rows]).repeat(1, self.n_views))
        if multi is not None:
            parts.append(multi if rows is None else multi[rows])
        out = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return out / (self.n_layers + 1)

    def views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagated views, users (n_u × (1+M)d) and items (n_i × (1+M)d): [ID ‖ modality 1 ‖ …]."""
        u_s, u_m, i_s, i_m = self.layer_sums()
        return self.combine(u_s, u_m, None), self.combine(i_s, i_m, None)

    def view(self, table: torch.Tensor, k: int) -> torch.Tensor:
        """The k-th view's d columns (0 = ID, 1 + i = modality i)."""
        return table[:, k * self.dim : (k + 1) * self.dim]

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_quirks and not self.training and bool(self.stale_valid):
            return self.stale_user, self.stale_item
        users, items = self.views()
        return self.fuse_user(users), self.fuse_item(items)

    def compute_cold_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """In reference mode the warm rows stay the stale ones; cold rows are always computed afresh."""
        if not (self.reference_quirks and bool(self.stale_valid)):
            return super().compute_cold_representations()
        with self.cold_substitution():
            fresh = self.fuse_item(self.views()[1])
        cold = self.cold_items.to(fresh.device)
        items = self.stale_item.clone()
        items[cold] = fresh[cold]
        return self.stale_user, items

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        user_repr, item_repr = self.representations()
        scores = dot_scores(user_repr[users], item_repr)
        return torch.sigmoid(scores) if self.reference_quirks else scores

    # ------------------------------------------------------------------ loss
    def fac_loss(self, items_p: torch.Tensor) -> torch.Tensor:
        """Σ_k L_k of the "fine and coarse" cross-modal contrast; ``items_p`` = the positives' propagated views."""
        tau = float(self.config.ssl_temp)
        z = self.view(items_p, 0)
        total = items_p.new_zeros(())
        for k, i in enumerate(self.fac_order):
            z = self.fac_chain[k](z)
            e = self.fac_modal[k](self.view(items_p, 1 + i))
            total = total + info_nce_in_batch(z, e, tau, normalize=False, block_size=self.config.in_batch_block)
        return total

    def loss(self, batch: Batch) -> torch.Tensor:
        u_s, u_m, i_s, i_m = self.layer_sums()
        if self.reference_quirks:  # the reference ranks with the full H of the last training forward
            with torch.no_grad():
                self.stale_user.copy_(self.fuse_user(self.combine(u_s, u_m, None)))
                self.stale_item.copy_(self.fuse_item(self.combine(i_s, i_m, None)))
                self.stale_valid.fill_(True)
        items_p = self.combine(i_s, i_m, batch.pos)  # only the batch rows are fused
        h_u = self.fuse_user(self.combine(u_s, u_m, batch.users))
        temp, block = float(self.config.temp), self.config.in_batch_block
        loss = info_nce_in_batch(h_u, self.fuse_item(items_p), temp, normalize=True, block_size=block)
        loss = loss + float(self.config.ssl_alpha) * self.fac_loss(items_p)
        if not self.reference_quirks and float(self.config.reg_weight) > 0:
            loss = loss + float(self.config.reg_weight) * sq_reg(self.user_emb(batch.users), self.item_emb(batch.pos))
        return loss
