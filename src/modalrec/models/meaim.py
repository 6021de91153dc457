"""MeAIM (Wu, Xu, Chen — MMSP 2025): meta-weight integration of ID and content scores.

Implements the paper equation by equation (docs/models/meaim.md), for any set of M ≥ 2 content
modalities (whatever ``dataset.features`` holds, in that order) plus the ID branch.
The A = M + 1 representations of a node are named ``id`` and the modality names.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from modalrec.graphs import SparseOperator
from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Explanation, Recommender, xavier_embedding
from modalrec.nn.losses import LOG2E, dot_bernoulli_kl_full, info_nce_sampled
from modalrec.nn.projection import project_features
from modalrec.nn.propagation import propagate, split_nodes
from modalrec.nn.scoring import meta_weight_head_affine

ID = "id"


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the keep-mask drawn as ``rand >= p`` (same distribution, ~3× faster on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))


class MetaWeightNet(nn.Module):
    """One meta-weight net N: a head h_b per representation b.

    h_b(z) = Dropout(Linear(3d/2 → 1)(Dropout(Linear(3d → 3d/2)(z)))) — no
    non-linearity between the two layers — on z = [‖x − y‖²·1_d ; x ; y], and the net
    outputs σ(3d · h_b(z)) (Eq. 10). PyTorch's default Linear initialisation.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        hidden = max(1, 3 * dim // 2)
        self.dim = dim
        self.scale = 3.0 * dim
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(3 * dim, hidden), FastDropout(dropout), nn.Linear(hidden, 1), FastDropout(dropout))
            for _ in range(n_heads)
        )

    def forward(self, b: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """σ(3d · h_b([‖x−y‖²·1_d; x; y])) for aligned rows of x and y, shape (n,)."""
        delta = (x - y).pow(2).sum(dim=1, keepdim=True)
        z = torch.cat([delta.expand(-1, self.dim), x, y], dim=1)
        return torch.sigmoid(self.scale * self.heads[b](z)).squeeze(1)

    def affine(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_δ, p, q, c0) with h_b(z) = c_δ·δ + p·x + q·y + c0 when dropout is off.

        See docs/models/meaim.md#scoring-and-ranking.
        """
        first, last = self.heads[b][0], self.heads[b][2]
        return meta_weight_head_affine(first.weight, first.bias, last.weight, last.bias, self.dim)


# the per-tile arrays of MeAIM's ranking besides the s_ab and the stage-1 weights (MeAIM._score_tile)
TILE_SCALARS = ("norm", "y", "t", "f", "total", "score")


@dataclass
class RankCache:
    """Everything exact fast ranking needs, computed once per evaluation.

    With h the head's affine form and s_ab = u^a·i^b, the stage-1 pre-activation is
    3d·h = ``u1[a,b,u] + i1[a,b,i] + k1[a,b]·s_ab``; the stage-2 one is
    ``u2[a,u] + k2[a]·y_a + Σ_b w_ab (q2[a,b,i] + Σ_b' w_ab' g2[a,b,b',i])``.
    """

    users: torch.Tensor  # (A, U, d) user representations u^a
    items: torch.Tensor  # (B, I, d) item representations i^b
    items_flat: torch.Tensor  # (B·I, d): the item tables stacked, for one GEMM per user block
    u1: torch.Tensor  # (A, B, U)
    i1: torch.Tensor  # (A, B, I)
    k1: list[list[float]]  # (A, B)
    u2: torch.Tensor  # (A, U)
    k2: list[float]  # (A,)
    q2: torch.Tensor  # (A, B, I)
    g2: torch.Tensor  # (A, B, B, I)

    def to(self, dtype: torch.dtype) -> RankCache:
        return RankCache(
            **{
                f.name: (
                    getattr(self, f.name).to(dtype)
                    if isinstance(getattr(self, f.name), torch.Tensor)
                    else getattr(self, f.name)
                )
                for f in fields(self)
            }
        )


@register
class MeAIM(Recommender):
    """MeAIM: meta-learned, per-(user, item) integration of ID and content-modality scores.

    Forward, for content modalities m = 1..M (dataset order) and d = embedding_size:

    1. ID branch: H⁰ = [E_u; E_i], H^l = Â H^{l−1}, (Z_u^c, Z_i^c) = H^{L_c} — the LAST
       layer (``cf_model: lightgcn``, L_c = ``n_id_layers``); ``cf_model: mf`` skips it.
    2. Content branch m: X_m = E_i ⊙ σ(Q_m(normalize(P_m F_m))); H⁰ = [R̂ X_m; X_m],
       H^l = Â H^{l−1}, (Z_u^m, Z_i^m) = H^{L_m} with L_m = ``content_layers[m]``.
    3. Item–item graph (``use_knn``): S = Σ_m w_m S_m, S_m the binary symmetric-normalised
       kNN graph (k = ``knn_k``) of the RAW features; Z_i^c += S^n E_i, Z_i^m += S^n X_m,
       n = ``n_knn_layers`` **[choice: n layers apply S n times]**.
    4. Preference gates: Z_i^m ← g_m(Z_i^c) ⊙ Z_i^m, Z_u^m ← g_m(Z_u^c) ⊙ Z_u^m,
       g_m = σ(Linear(d → d)), one per content modality, shared by users and items.

    Scoring (Eq. 10): representations a, b ∈ {id, m…}. Stage 1, for each user
    representation a: w_ab = softmax_b N_a.h_b(u^a, i^b), y_a = Σ_b w_ab (u^a·i^b),
    ĩ_a = Σ_b w_ab i^b. Stage 2: ω_a = softmax_a N_final.h_a(u^a, ĩ_a), ŷ = Σ_a ω_a y_a.
    Each net's output is σ(3d·h(z)) — the softmax runs over those sigmoid values, so no
    max-shift is needed. Heads: see :class:`MetaWeightNet` (dropout ρ = ``dropout``).

    Loss (Eqs. 14, 16, 19, 20), no explicit L2 term:
    L = mean_batch[γ Σ_a ω̄_a ℓ_a + (1−γ) ℓ_c] + β·L_cl + λ·L_KL with
    ℓ_a = −ln σ(y_a(u,i⁺) − y_a(u,i⁻)), ω̄_a = (ω_a(u,i⁺) + ω_a(u,i⁻))/2 (gradient flows
    into ω̄: that is how N_final learns **[choice]**); γ = ``gamma_bpr``.
    L_cl = InfoNCE (τ = ``tau``, cosine, negatives = the FULL user or item table) summed
    over every pair of representations, for the batch users and for the positive items:
    (id, m) for each m and (m, m') for m before m' — six pairs for two modalities
    **[choice: the earlier representation is the anchor, the later one's table the
    candidates]**; β = ``beta_cl``. L_KL = mean over (batch user, item) of the symmetric
    Bernoulli KL between P = σ(u^c · normalize(Σ_m w_m Z_i^m)ᵀ) and
    Q = σ(u^c · normalize(Z_i^c)ᵀ), probabilities clamped to [1e-7, 1−1e-7];
    λ = ``lambda_kl``. The modality weights w_m = ``kl_modality_weights`` or, when null,
    α for the first modality and (1−α)/(M−1) for each other **[choice: generalises
    α, 1−α]**; the same weights mix S. CL and KL run in blocks of ``loss_block_size``
    batch rows and are skipped entirely when their weight is 0 ("MeAIM-CK": β = λ = 0).
    ``cl_candidates`` / ``kl_candidates`` N > 0 replace the full tables by N sampled rows (plus,
    for InfoNCE, the batch's positives, or with ``cl_positives: block`` those of the anchor's loss
    block): the large-data mode's setting (docs/scale.md#large-data-mode), 0 (the paper's full tables)
    by default.

    Ranking is exact and never forms per-pair vectors: with dropout off each head
    is affine in (δ, x, y), δ = ‖x‖² + ‖y‖² − 2x·y, so a user block needs (M+1)² GEMMs
    u^a·i^b plus element-wise work on (block × items) arrays (:meth:`full_scores`);
    :meth:`naive_pair_scores` runs the heads literally and is the test reference.

    ``item_representation()`` is the mean of Z_i^c and the Z_i^m **[choice]**.
    ``explain()`` gives the stage-2 weights ω and, as extras, the stage-1 weights w.

    Further **[choice]**s where the paper is silent: P_m, Q_m, gates and heads keep
    PyTorch's default Linear initialisation (only E_u, E_i are Xavier-uniform); the
    InfoNCE anchors are the batch rows as drawn (a user in two triples counts twice);
    the KL term is evaluated from the logits, (σ(x̃) − σ(ỹ))(x̃ − ỹ) with x̃, ỹ clamped
    to ±logit(1−1e-7) — the same function as the clamped-probability form
    (:func:`~modalrec.nn.losses.bernoulli_kl_symmetric_logits`).
    """

    name = "MeAIM"
    config_name = "meaim"
    description = "Meta-weight nets integrate ID and per-modality user-item scores, with contrastive and KL alignment."
    min_modalities = 2

    cold_start = COLD_CONTENT
    cold_rule = "E_i row at the warm-item mean, gated per modality by the item's features (x_m = E_i ⊙ σ(Q_m P_m x))"

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_mean(self.item_emb.weight)]

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        n_mod = len(self.modalities)
        self.dim = d
        self.parts = [ID, *self.modalities]
        self.content_layers = self._layer_counts(config.content_layers, n_mod)
        self.mix_weights = self._mix_weights(config, n_mod)

        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.register_feature_buffers(dataset)
        self.proj = nn.ModuleList()  # P_m: d_m → d, no bias
        self.trans = nn.ModuleList()  # Q_m: d → d, with bias
        self.gates = nn.ModuleList()  # g_m: d → d (then σ)
        for m in self.modalities:
            self.proj.append(nn.Linear(self.feature_buffer(m).shape[1], d, bias=False))
            self.trans.append(nn.Linear(d, d))
            self.gates.append(nn.Linear(d, d))
        a = len(self.parts)
        rho = float(config.dropout)
        self.nets = nn.ModuleList(MetaWeightNet(d, a, rho) for _ in range(a))  # N_a, heads over item reps b
        self.final_net = MetaWeightNet(d, a, rho)  # N_final, heads over user reps a

        self.adj = graphs.norm_adj()
        self.r_hat = graphs.norm_interactions()
        self.item_graph: SparseOperator | None = None
        if config.use_knn:
            mixed = None
            for w, m in zip(self.mix_weights, self.modalities, strict=True):
                s_m = w * graphs.knn_matrix(m, int(config.knn_k), weighted=False, normalization="sym")
                mixed = s_m if mixed is None else mixed + s_m
            self.item_graph = SparseOperator(mixed, graphs.device)
        self.to(graphs.device)

    # ------------------------------------------------------------------ config helpers
    def _layer_counts(self, value, n_mod: int) -> list[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            counts = [value] * n_mod
        else:
            counts = list(value)
            if len(counts) > n_mod or not counts:
                raise self.setting_error(
                    "content_layers",
                    f"has {len(counts)} entries {counts} but the dataset has {n_mod} "
                    f"content modalities ({', '.join(self.modalities)}); give one layer count per modality, "
                    f"in that order (e.g. content_layers=[{', '.join(['2'] * n_mod)}])",
                )
            # a list written for image + text still serves a dataset with more modalities: the extra
            # ones take the last entry (so the paper's [2, 3] gives image 2, text 3, audio 3)
            counts = counts + [counts[-1]] * (n_mod - len(counts))
        if any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in counts):
            raise self.setting_error("content_layers", f"must be non-negative integers; got {counts}")
        return counts

    def _mix_weights(self, config, n_mod: int) -> list[float]:
        if config.kl_modality_weights is None:
            alpha = float(config.alpha)
            return [alpha] + [(1.0 - alpha) / (n_mod - 1)] * (n_mod - 1)
        weights = [float(w) for w in config.kl_modality_weights]  # finite and >= 0: the YAML's bounds
        if len(weights) != n_mod:
            raise self.setting_error(
                "kl_modality_weights",
                f"has {len(weights)} entries but the dataset has {n_mod} content "
                f"modalities ({', '.join(self.modalities)})",
            )
        return weights

    # ------------------------------------------------------------------ forward
    def forward_representations(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """([Z_u^c, Z_u^m…], [Z_i^c, Z_i^m…]) for all users and items (steps 1–4)."""
        e_u, e_i = self.user_emb.weight, self.item_emb.weight
        e0 = torch.cat([e_u, e_i])
        n_id = int(self.config.n_id_layers) if self.config.cf_model == "lightgcn" else 0
        z_u_c, z_i_c = split_nodes(propagate(self.adj, e0, n_id, "last"), self.n_users)
        users, items, xs = [], [], []
        for i, m in enumerate(self.modalities):
            compressed = F.normalize(project_features(self.feature_buffer(m), self.proj[i].weight), dim=1)
            x_m = e_i * torch.sigmoid(self.trans[i](compressed))
            h0 = torch.cat([self.r_hat @ x_m, x_m])
            z_u, z_i = split_nodes(propagate(self.adj, h0, self.content_layers[i], "last"), self.n_users)
            users.append(z_u)
            items.append(z_i)
            xs.append(x_m)
        if self.item_graph is not None:
            n_knn = int(self.config.n_knn_layers)
            z_i_c = z_i_c + propagate(self.item_graph, e_i, n_knn, "last")
            items = [z + propagate(self.item_graph, x, n_knn, "last") for z, x in zip(items, xs, strict=True)]
        for i, gate in enumerate(self.gates):
            items[i] = torch.sigmoid(gate(z_i_c)) * items[i]
            users[i] = torch.sigmoid(gate(z_u_c)) * users[i]
        return [z_u_c, *users], [z_i_c, *items]

    # ------------------------------------------------------------------ pairwise scoring (Eq. 10)
    def pair_forward(self, user_reps: list[torch.Tensor], item_reps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Eq. 10 literally, for aligned rows: u^a = user_reps[a][k], i^b = item_reps[b][k].

        Returns ``y`` (n, A) per-branch scores, ``w`` (n, A, B) stage-1 weights,
        ``omega`` (n, A) stage-2 weights and ``score`` (n,) ŷ. Dropout is active in
        training mode.
        """
        ys, ws, logits2 = [], [], []
        for a, (u, net) in enumerate(zip(user_reps, self.nets, strict=True)):
            w = torch.softmax(torch.stack([net(b, u, i) for b, i in enumerate(item_reps)], dim=1), dim=1)
            s = torch.stack([(u * i).sum(dim=1) for i in item_reps], dim=1)
            fused = sum(w[:, b : b + 1] * i for b, i in enumerate(item_reps))
            ys.append((w * s).sum(dim=1))
            ws.append(w)
            logits2.append(self.final_net(a, u, fused))
        y = torch.stack(ys, dim=1)
        omega = torch.softmax(torch.stack(logits2, dim=1), dim=1)
        return {"y": y, "w": torch.stack(ws, dim=1), "omega": omega, "score": (omega * y).sum(dim=1)}

    # ------------------------------------------------------------------ loss
    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        users, items = self.forward_representations()
        n = batch.users.shape[0]
        u = [t[batch.users] for t in users]
        pairs = self.pair_forward(
            [torch.cat([t, t]) for t in u], [torch.cat([t[batch.pos], t[batch.neg]]) for t in items]
        )
        y_pos, y_neg = pairs["y"][:n], pairs["y"][n:]
        omega_bar = (pairs["omega"][:n] + pairs["omega"][n:]) / 2
        branch = -F.logsigmoid(y_pos - y_neg)  # (n, A), ℓ_a
        gamma = float(cfg.gamma_bpr)
        total = (gamma * (omega_bar * branch).sum(dim=1) + (1.0 - gamma) * branch[:, 0]).mean()
        if cfg.beta_cl != 0:
            total = total + float(cfg.beta_cl) * self.contrastive_loss(users, items, batch)
        if cfg.lambda_kl != 0:
            total = total + float(cfg.lambda_kl) * self.kl_loss(users, items, batch)
        return total

    def contrastive_loss(self, users: list[torch.Tensor], items: list[torch.Tensor], batch: Batch) -> torch.Tensor:
        """Σ over representation pairs (a, b), a before b, of InfoNCE for users and positive items.

        ``cl_candidates`` N > 0 (the large-data mode): against N sampled rows plus the batch's positives
        (``cl_positives: batch``) or only those of the anchor's block of ``loss_block_size`` rows
        (``block``, the mode's: linear in the batch) instead of the whole table
        (:func:`~modalrec.nn.losses.info_nce_sampled`)."""
        tau, block, n = float(self.config.tau), int(self.config.loss_block_size), int(self.config.cl_candidates)
        own = str(self.config.cl_positives)
        total = users[0].new_zeros(())
        for a, b in itertools.combinations(range(len(self.parts)), 2):
            total = total + info_nce_sampled(users[a][batch.users], users[b], batch.users, n, tau, block, own)
            total = total + info_nce_sampled(items[a][batch.pos], items[b], batch.pos, n, tau, block, own)
        return total

    def kl_loss(self, users: list[torch.Tensor], items: list[torch.Tensor], batch: Batch) -> torch.Tensor:
        """Symmetric Bernoulli KL between content- and ID-based preference distributions.

        ``kl_candidates`` N > 0 (the large-data mode): over N items drawn uniformly per step instead of all
        items — an unbiased estimate of the same mean, at O(B·N·d) instead of O(B·I·d)."""
        n = int(self.config.kl_candidates)
        if 0 < n < self.n_items:
            drawn = torch.randint(0, self.n_items, (n,), device=items[0].device)
            items = [t[drawn] for t in items]
        content = F.normalize(sum(w * z for w, z in zip(self.mix_weights, items[1:], strict=True)), dim=1)
        return dot_bernoulli_kl_full(
            users[0][batch.users], content, F.normalize(items[0], dim=1), int(self.config.loss_block_size)
        )

    # ------------------------------------------------------------------ ranking
    def compute_representations(self) -> RankCache:
        users, items = self.forward_representations()
        return self.build_rank_cache(users, items)

    def build_rank_cache(self, users: list[torch.Tensor], items: list[torch.Tensor]) -> RankCache:
        """Pre-compute per-user and per-item scalars of every head's affine form."""
        scale = 3.0 * self.dim
        u = torch.stack(users)  # (A, U, d)
        it = torch.stack(items)  # (B, I, d)
        a_n, b_n = u.shape[0], it.shape[0]
        u_sq = u.pow(2).sum(-1)  # (A, U)
        i_sq = it.pow(2).sum(-1)  # (B, I)
        u1, i1, k1 = [], [], []
        for a, net in enumerate(self.nets):
            ua, ia, ka = [], [], []
            for b in range(b_n):
                c_delta, p, q, c0 = (t.to(u.dtype) for t in net.affine(b))
                ua.append(scale * (c_delta * u_sq[a] + u[a] @ p + c0))
                ia.append(scale * (c_delta * i_sq[b] + it[b] @ q))
                ka.append(-2.0 * scale * float(c_delta.detach()))
            u1.append(torch.stack(ua))
            i1.append(torch.stack(ia))
            k1.append(ka)
        gram = torch.einsum("bid,cid->bci", it, it)  # (B, B, I): i^b·i^b'
        u2, k2, q2, g2 = [], [], [], []
        for a in range(a_n):
            c_delta, p, q, c0 = (t.to(u.dtype) for t in self.final_net.affine(a))
            u2.append(scale * (c_delta * u_sq[a] + u[a] @ p + c0))
            k2.append(-2.0 * scale * float(c_delta.detach()))
            q2.append(scale * (it @ q))  # (B, I)
            g2.append(scale * c_delta * gram)
        return RankCache(
            u,
            it,
            it.reshape(-1, it.shape[-1]),
            torch.stack(u1),
            torch.stack(i1),
            k1,
            torch.stack(u2),
            k2,
            torch.stack(q2),
            torch.stack(g2),
        )

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Exact ŷ of the given users on all items via the affine head forms.

        Per (users × items) tile of :meth:`score_tile_shape`: one GEMM per item table gives all (M+1)²
        score matrices s_ab = u^a·i^b; every head pre-activation is then a per-user scalar plus a
        per-item scalar plus a multiple of s_ab (stage 1), or of y_a, the item Gram
        i^b·i^b' and q·i^b combined with the stage-1 weights (stage 2, since
        ‖ĩ_a‖² = Σ_bb' w_ab w_ab' i^b·i^b'). Only tile-sized arrays are formed, in one workspace
        allocated per call: on a CPU the tile's ~two dozen element-wise passes then run in cache, and
        nothing is allocated per tile (after training, per-tile allocations were what made MARIO's
        tiled ranking slower than whole rows; see ``nn.scoring.modality_attention_scores_into``).
        """
        with torch.no_grad():
            c = self.representations()
            a_n, b_n = c.users.shape[0], c.items.shape[0]
            n_arrays = a_n * b_n + b_n + len(TILE_SCALARS)
            rows, cols = self.score_tile_shape(self.n_items, stacked=n_arrays, n_rows=users.shape[0])
            out = torch.empty(users.shape[0], self.n_items, dtype=c.users.dtype, device=c.users.device)
            work = c.users.new_empty(n_arrays, min(rows, users.shape[0]) * min(cols, self.n_items))
            for lo in range(0, users.shape[0], rows):
                idx = users[lo : lo + rows]
                # (A·nb, d): the block's user tables stacked, so one GEMM per item table scores every a
                stacked = c.users[:, idx].reshape(a_n * idx.shape[0], -1)
                u1, u2 = c.u1[:, :, idx], c.u2[:, idx]
                for c0 in range(0, self.n_items, cols):
                    self._score_tile(c, stacked, u1, u2, c0, out[lo : lo + rows, c0 : c0 + cols], work)
        return out

    @staticmethod
    def _score_tile(
        c: RankCache,
        stacked_users: torch.Tensor,
        u1: torch.Tensor,
        u2: torch.Tensor,
        c0: int,
        target: torch.Tensor,
        work: torch.Tensor,
    ) -> None:
        """ŷ of one (nb users × nc items from ``c0``) tile written into ``target``; ``work`` holds every
        intermediate (rows of ≥ nb·nc: the (A·B) s_ab, the B stage-1 weights, then :data:`TILE_SCALARS`)."""
        a_n, b_n = c.users.shape[0], c.items.shape[0]
        nb, nc = target.shape
        cols = slice(c0, c0 + nc)
        # table b's products fill rows b·A … (b+1)·A of the workspace, read as one (A·nb, nc) array
        views = [work[b * a_n : (b + 1) * a_n].view(-1)[: a_n * nb * nc].view(a_n * nb, nc) for b in range(b_n)]
        for b in range(b_n):  # s_ab for every a at once: rows a·nb … (a+1)·nb of table b's product
            torch.matmul(stacked_users, c.items[b, cols].T, out=views[b])
        s = [[views[b][a * nb : (a + 1) * nb] for b in range(b_n)] for a in range(a_n)]
        rest = [w[: nb * nc].view(nb, nc) for w in work[a_n * b_n :]]
        ws, (norm, y, t, f, total, score) = rest[:b_n], rest[b_n:]
        for a in range(a_n):
            sa = s[a]
            # stage 1: e_ab = exp(σ(pre-activation)) = 2^(log2(e)·σ); w_ab = e_ab / Σ_b e_ab
            for b, z in enumerate(ws):
                torch.add(c.i1[a, b, cols], sa[b], alpha=c.k1[a][b], out=z)
                z += u1[a, b, :, None]
                torch.sigmoid(z, out=z).mul_(LOG2E).exp2_()
            norm.copy_(ws[0])
            for w in ws[1:]:
                norm += w
            norm.reciprocal_()
            for w in ws:
                w *= norm
            torch.mul(ws[0], sa[0], out=y)
            for w, sb in zip(ws[1:], sa[1:], strict=True):
                y.addcmul_(w, sb)
            # stage 2: Σ_b w_b (q2_b + w_b g_bb + 2 Σ_{b'>b} w_b' g_bb') = q·ĩ + c_δ‖ĩ‖² (scaled)
            for b in range(b_n):
                torch.addcmul(c.q2[a, b, cols], ws[b], c.g2[a, b, b, cols], out=t)
                for b2 in range(b + 1, b_n):
                    t.addcmul_(ws[b2], c.g2[a, b, b2, cols], value=2.0)
                if b == 0:
                    torch.mul(t, ws[b], out=f)
                else:
                    f.addcmul_(t, ws[b])
            f.add_(y, alpha=c.k2[a])
            f += u2[a, :, None]
            torch.sigmoid(f, out=f).mul_(LOG2E).exp2_()
            if a == 0:
                total.copy_(f)
                torch.mul(f, y, out=score)
            else:
                total += f
                score.addcmul_(f, y)
        torch.div(score, total, out=target)

    def naive_pair_scores(self, users: torch.Tensor, items: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """Reference ŷ for aligned (user, item) pairs: runs every head on concatenated inputs."""
        out = []
        with torch.no_grad():
            c = self.representations()
            for lo in range(0, users.shape[0], chunk):
                u, i = users[lo : lo + chunk], items[lo : lo + chunk]
                out.append(self.pair_forward(list(c.users[:, u]), list(c.items[:, i]))["score"])
        return torch.cat(out) if out else c.users.new_zeros(0)

    # ------------------------------------------------------------------ analyses
    def item_representation(self) -> torch.Tensor:
        """Mean of Z_i^c and the Z_i^m **[choice]**."""
        return self.representations().items.mean(dim=0)

    def explain(self, users: torch.Tensor, items: torch.Tensor) -> Explanation:
        """Stage-2 weights ω over the user representations, stage-1 weights w as extras."""
        with self.in_eval_mode(), torch.no_grad():  # dropout off: the weights the ranking uses
            c = self.representations()
            out = self.pair_forward(list(c.users[:, users]), list(c.items[:, items]))
        return Explanation(
            kind="meta-weights",
            parts=list(self.parts),
            weights=out["omega"],
            extra={"item_weights": out["w"], "item_parts": list(self.parts)},
        )
