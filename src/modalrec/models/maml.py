"""MAML — multimodal attentive metric learning (Liu et al., ACM MM 2019) — docs/models/maml.md."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Recommender, feature_tensor

NORM_EPS = 1e-12  # F.normalize's eps


@dataclass
class MamlRepresentations:
    """Everything ranking needs: clipped P, Q, the item features φ and the per-part projections of A₁.

    ``user_proj`` = P A₁ᵘᵀ, ``item_proj`` = Q A₁ⁱᵀ + φ A₁ᶠᵀ (the bias is added after the
    division by the pair norm); ``user_sq`` = ‖P_u‖², ``item_sq`` = ‖Q_j‖² + ‖φ_j‖².
    """

    users: torch.Tensor
    items: torch.Tensor
    feats: torch.Tensor
    user_proj: torch.Tensor
    item_proj: torch.Tensor
    user_sq: torch.Tensor
    item_sq: torch.Tensor


def clip_rows(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Rows with norm > ``max_norm`` rescaled to norm ``max_norm`` (others unchanged)."""
    norms = x.norm(dim=1, keepdim=True)
    return x * torch.clamp(max_norm / norms.clamp_min(NORM_EPS), max=1.0)


@register
class MAML(Recommender):
    """MAML: per-(user, item) attention-weighted Euclidean distance, s_uj = −D(u, j).

    Parameters: P (U × d), Q (I × d) ~ N(0, 1/d); feature MLP f on z⁰ = norm([X_m1 ‖ … ‖ X_mM])
    (all content modalities in dataset order **[choice]**: the reference concatenates text then
    image; the order is immaterial for a randomly initialised MLP): W₁ (→h, ReLU, dropout),
    norm, W₂ (→h/2, ReLU, dropout), norm, W₃ (→h/2, ReLU, dropout), W₄ (→d, linear);
    attention A₁: 3d → 5d (tanh, dropout 0.05), A₂: 5d → d (ReLU) on L2-normalised inputs.
    Init **[choice]**: Xavier-uniform weights and zero biases (TensorFlow's dense defaults).

    Forward: φ_j = clip_{‖·‖≤1}(s·f(z⁰_j)); c = norm([P_u ‖ Q_j ‖ φ_j]);
    a_uj = d·softmax(ReLU(A₂ norm(tanh(A₁ c)))); D(u, j) = ‖a_uj ⊙ (P_u − Q_j)‖².

    Full ranking (:meth:`full_scores`) never forms users × items × 3d: A₁ c =
    (A₁ᵘ P_u + A₁ⁱ Q_j + A₁ᶠ φ_j)/‖[P_u ‖ Q_j ‖ φ_j]‖ + b₁ with the three projections computed
    once per evaluation and the norm from the squared row norms, then per user block
    (``ranking_pair_block`` user × item pairs at a time) tanh, one (pairs × 5d)·(5d × d) GEMM
    for A₂, the softmax and the weighted distance. :meth:`naive_pair_scores` runs the
    network literally on concatenated inputs (the test reference).

    Loss per batch (B positives; the batch's negative plus ``num_neg`` − 1 more drawn here,
    uniform over the training items, redrawn while a training positive of the user):
    L_m = Σ_b [D⁺ − min_w D⁻_w + m]_+ · log(q·I + 1), q = impostor fraction over the W
    negatives; L_f = λ_f Σ_{j∈I} ‖Q_j − φ_j‖²; L_c on Y = centred [Q; P], C = YᵀY/(I+U):
    ``cov_loss_form: reference`` λ_c Σ_{a≠b} C_ab (default), ``paper``
    λ_c (‖C‖_F − ‖diag C‖²)/(I+U). Rows of P and Q are clipped to norm ≤ ``clip_norm``
    after every optimiser step: the trainer has no post-step hook, so the clip is applied
    in place at the start of the next :meth:`loss` and functionally in
    :meth:`compute_representations` (identical values for every forward pass). Before
    training Q is set to φ (dropout off).

    **[REF-QUIRK]** ``reference_quirks: true`` = the reference: only P and Q are trained (the
    feature MLP and the attention network keep their random initial weights, φ is then a
    constant) and no dropout is ever applied. ``false`` (default, the paper) trains all of
    them with dropout in training mode. Evaluation never uses dropout.

    Config: ``embedding_size`` d (64), ``hidden_layer_dim`` h (256), ``margin`` m (1.0),
    ``feature_l2_reg`` λ_f (1.0), ``cov_loss_weight`` λ_c (5.0), ``cov_loss_form``
    (reference), ``num_neg`` W (4), ``dropout`` (0.2), ``attention_dropout`` (0.05),
    ``feature_projection_scaling_factor`` s (1.0), ``clip_norm`` (1.0), ``use_rank_weight``
    (true), ``use_cov_loss`` (true), ``reference_quirks`` (false), ``ranking_pair_block``
    (8192; at least one user per block), lr 1e-3, batch 2048 (MMRec protocol; reference code default 256).
    """

    name = "MAML"
    config_name = "maml"
    description = "Metric learning with per-(user, item) attention over dimensions and a feature-fusion MLP."
    min_modalities = 1
    cold_start = COLD_CONTENT
    cold_rule = "Q_j = φ_j, the item's feature projection (MAML's L_f pulls Q_j to φ_j; Q starts at φ)"

    def cold_overrides(self) -> list[ColdOverride]:
        phi = self._item_features(dropout=False).detach()
        cold = self.cold_items.to(phi.device)
        return [(self.item_emb, cold, phi[cold])]

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d, h = int(config.embedding_size), int(config.hidden_layer_dim)
        self.dim = d
        self.clip_norm = float(config.clip_norm)
        self.reference_quirks = bool(config.reference_quirks)
        self.num_neg = int(config.num_neg)
        self.pair_block = max(1, int(config.ranking_pair_block))
        self._phi_cache: torch.Tensor | None = None  # φ in reference mode (a constant there)
        self.user_emb = nn.Parameter(torch.randn(self.n_users, d) / math.sqrt(d))
        self.item_emb = nn.Parameter(torch.randn(self.n_items, d) / math.sqrt(d))
        z0 = F.normalize(feature_tensor(dataset.features, self.modalities), dim=1)
        self.register_buffer("z0", z0, persistent=False)
        self.mlp = nn.ModuleList(
            [nn.Linear(z0.shape[1], h), nn.Linear(h, h // 2), nn.Linear(h // 2, h // 2), nn.Linear(h // 2, d)]
        )
        self.att1 = nn.Linear(3 * d, 5 * d)
        self.att2 = nn.Linear(5 * d, d)
        for lin in [*self.mlp, self.att1, self.att2]:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.mlp_dropout = nn.Dropout(0.0 if self.reference_quirks else float(config.dropout))
        self.att_dropout = nn.Dropout(0.0 if self.reference_quirks else float(config.attention_dropout))
        if self.reference_quirks:
            for p in [*self.mlp.parameters(), *self.att1.parameters(), *self.att2.parameters()]:
                p.requires_grad_(False)
        with torch.no_grad():  # Q starts at the (random-weight) feature projection, dropout off
            self.item_emb.copy_(self._item_features(dropout=False))
        r = dataset.train_matrix.tocoo()
        keys = np.unique(r.row.astype(np.int64) * self.n_items + r.col.astype(np.int64))
        self.register_buffer("train_keys", torch.from_numpy(keys), persistent=False)
        self.register_buffer("neg_pool", torch.from_numpy(np.unique(r.col.astype(np.int64))), persistent=False)
        self.to(graphs.device)

    # ------------------------------------------------------------------ building blocks
    def _item_features(self, dropout: bool | None = None) -> torch.Tensor:
        """φ = clip(s · f(z⁰)) for all items (dropout when training in paper mode)."""
        use_drop = self.training if dropout is None else dropout
        drop = self.mlp_dropout if use_drop else (lambda x: x)
        w1, w2, w3, w4 = self.mlp
        x = drop(F.relu(w1(self.z0)))
        x = drop(F.relu(w2(F.normalize(x, dim=1))))
        x = drop(F.relu(w3(F.normalize(x, dim=1))))
        x = w4(x) * float(self.config.feature_projection_scaling_factor)
        return clip_rows(x, 1.0)

    def features(self) -> torch.Tensor:
        """φ for the loss: with gradients (paper), or a cached constant (reference: frozen MLP, no dropout)."""
        if self.reference_quirks:
            if self._phi_cache is None or self._phi_cache.device != self.z0.device:
                with torch.no_grad():
                    self._phi_cache = self._item_features(dropout=False)
            return self._phi_cache
        return self._item_features()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        self._phi_cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def pair_distance(self, pu: torch.Tensor, qj: torch.Tensor, fj: torch.Tensor) -> torch.Tensor:
        """D(u, j) for aligned rows, literally: attention on norm([P_u ‖ Q_j ‖ φ_j]) (…, d) inputs."""
        c = F.normalize(torch.cat([pu, qj, fj], dim=-1), dim=-1)
        e = self.att_dropout(torch.tanh(self.att1(c)))  # a no-op in eval mode and in reference mode
        g = F.relu(self.att2(F.normalize(e, dim=-1)))
        a = self.dim * torch.softmax(g, dim=-1)
        return (a * (pu - qj)).pow(2).sum(dim=-1)

    def _clipped(self) -> tuple[torch.Tensor, torch.Tensor]:
        return clip_rows(self.user_emb, self.clip_norm), clip_rows(self.item_emb, self.clip_norm)

    @torch.no_grad()
    def clip_embeddings_(self) -> None:
        """The reference's post-step clip of P and Q rows, in place."""
        self.user_emb.copy_(clip_rows(self.user_emb, self.clip_norm))
        self.item_emb.copy_(clip_rows(self.item_emb, self.clip_norm))

    # ------------------------------------------------------------------ ranking
    def compute_representations(self) -> MamlRepresentations:
        p, q = self._clipped()
        phi = self._item_features(dropout=False)
        d = self.dim
        w = self.att1.weight  # (5d, 3d): columns [user | item | feature]
        return MamlRepresentations(
            users=p,
            items=q,
            feats=phi,
            user_proj=p @ w[:, :d].T,
            item_proj=q @ w[:, d : 2 * d].T + phi @ w[:, 2 * d :].T,
            user_sq=p.pow(2).sum(dim=1),
            item_sq=q.pow(2).sum(dim=1) + phi.pow(2).sum(dim=1),
        )

    def ranking_block_size(self, n_columns: int, stacked: int = 1) -> int:
        """Users per block: ``ranking_pair_block`` user × item pairs (× ``stacked`` arrays), at least one user."""
        return max(1, self.pair_block // max(1, stacked * n_columns))

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        """−D(u, j) for the given users on all items, ``ranking_pair_block`` pairs per block."""
        return self._distance_scores(users, None)

    def candidate_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """−D(u, j) on the ``items`` columns only: a per-pair model pays per scored pair, so a
        cold-item evaluation (a tenth of the items per split) costs a tenth of a full ranking.
        MAML scores cold items from content, so these are exactly :meth:`ranking_scores`' columns."""
        return self._distance_scores(users, items)

    def _distance_scores(self, users: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
        r = self.representations()
        if items is None:
            q, q_proj, q_sq = r.items, r.item_proj, r.item_sq
        else:
            items = items.to(r.items.device)
            q, q_proj, q_sq = r.items[items], r.item_proj[items], r.item_sq[items]
        n_i = q.shape[0]
        out = torch.empty(users.shape[0], n_i, dtype=r.users.dtype, device=r.users.device)
        step = self.ranking_block_size(n_i)
        b1, w2, b2 = self.att1.bias, self.att2.weight, self.att2.bias
        with torch.no_grad():
            for lo in range(0, users.shape[0], step):
                ub = users[lo : lo + step]
                pu = r.users[ub]  # (b, d)
                inv = (r.user_sq[ub, None] + q_sq[None, :]).sqrt_().clamp_min_(NORM_EPS).reciprocal_()
                # A₁ c + b₁ with c = [P_u ‖ Q_j ‖ φ_j] / ‖·‖, from the per-part projections; in place, (b, I, 5d)
                e = torch.add(r.user_proj[ub, None, :], q_proj[None, :, :]).mul_(inv[..., None]).add_(b1).tanh_()
                inv_e = torch.linalg.vector_norm(e, dim=-1, keepdim=True).clamp_min_(NORM_EPS).reciprocal_()
                g = torch.matmul(e, w2.T).mul_(inv_e).add_(b2).relu_()  # A₂ norm(e) = (A₂ e)/‖e‖
                del e
                a = torch.softmax(g, dim=-1).mul_(self.dim)  # (b, I, d)
                a.mul_(torch.sub(pu[:, None, :], q[None, :, :]))
                out[lo : lo + step] = a.square_().sum(dim=-1).neg_()
        return out

    def naive_pair_scores(self, users: torch.Tensor, items: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """Reference −D(u, j) for aligned pairs: the attention network on concatenated inputs."""
        r = self.representations()
        out = []
        with torch.no_grad():
            for lo in range(0, users.shape[0], chunk):
                u, i = users[lo : lo + chunk], items[lo : lo + chunk]
                out.append(-self.pair_distance(r.users[u], r.items[i], r.feats[i]))
        return torch.cat(out) if out else r.users.new_zeros(0)

    def item_representation(self) -> torch.Tensor:
        return self.representations().items

    # ------------------------------------------------------------------ loss
    def sample_negatives(self, users: torch.Tensor, n: int) -> torch.Tensor:
        """(B, n) uniform training items, each redrawn while it is a training positive of its user."""
        pool, keys = self.neg_pool, self.train_keys
        u = users.unsqueeze(1).expand(-1, n)
        neg = pool[torch.randint(pool.shape[0], u.shape, device=pool.device)]

        def collide(uu: torch.Tensor, ii: torch.Tensor) -> torch.Tensor:
            k = uu * self.n_items + ii
            pos = torch.searchsorted(keys, k).clamp_(max=keys.shape[0] - 1)
            return keys[pos] == k

        todo = collide(u, neg)
        while bool(todo.any()):
            neg[todo] = pool[torch.randint(pool.shape[0], (int(todo.sum()),), device=pool.device)]
            todo = todo & collide(u, neg)
        return neg

    def covariance_loss(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        y = torch.cat([q, p])
        y = y - y.mean(dim=0, keepdim=True)
        cov = y.T @ y / y.shape[0]
        if self.config.cov_loss_form == "reference":
            return cov.sum() - torch.diagonal(cov).sum()
        return (torch.linalg.norm(cov) - torch.diagonal(cov).pow(2).sum()) / y.shape[0]

    def loss(self, batch: Batch) -> torch.Tensor:
        self.clip_embeddings_()
        cfg = self.config
        p, q = self.user_emb, self.item_emb
        phi = self.features()
        negs = batch.neg.unsqueeze(1)
        if self.num_neg > 1:
            negs = torch.cat([negs, self.sample_negatives(batch.users, self.num_neg - 1)], dim=1)
        pu = p[batch.users]
        d_pos = self.pair_distance(pu, q[batch.pos], phi[batch.pos])  # (B,)
        w = negs.shape[1]
        d_neg = self.pair_distance(pu.unsqueeze(1).expand(-1, w, -1), q[negs], phi[negs])  # (B, W)
        hinge = F.relu(d_pos - d_neg.min(dim=1).values + float(cfg.margin))
        if cfg.use_rank_weight:
            with torch.no_grad():
                impostors = (d_pos.unsqueeze(1) - d_neg + float(cfg.margin) > 0).float().mean(dim=1)
                weight = torch.log(impostors * self.n_items + 1.0)
            hinge = hinge * weight
        total = hinge.sum() + float(cfg.feature_l2_reg) * (q - phi).pow(2).sum()
        if cfg.use_cov_loss:
            total = total + float(cfg.cov_loss_weight) * self.covariance_loss(p, q)
        return total
