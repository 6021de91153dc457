"""MMGCN (Wei et al., ACM MM 2019, "Multi-modal Graph Convolution Network"), MMRec port — docs/models/mmgcn.md."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modalrec.graphs import SparseOperator, bipartite_edge_list
from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Recommender
from modalrec.nn.losses import bpr_loss
from modalrec.nn.propagation import edge_list_operator, split_nodes
from modalrec.nn.scoring import pair_scores


class MMGCNBranch(nn.Module):
    """The graph network of one modality (docs/models/mmgcn.md#forward-pass).

    x⁰ = norm([P_m; F_m]) with F_m = MLP(X_m) (pre-projected modality) or X_m — X_m is passed to
    :meth:`forward` (the model's ``feat_<m>`` buffer); for l = 1..L:
    h = LReLU(Ā (x^{l−1} G_l)), x̂ = LReLU(x^{l−1} W_l + b_l) + Z, x^l = LReLU([h ‖ x̂] V_l + c_l).
    Ā is the (mean or add) aggregation over the 2|E| directed user–item edges. Since G_l is
    linear, Ā (x G_l) = (Ā x) G_l; Ā is bipartite, so each layer runs on the user and item rows
    separately with the dense product on the side with fewer rows; a constant half of x⁰ (raw
    features; frozen preferences) and its aggregation are computed once and get no gradient.
    """

    def __init__(
        self,
        feature_dim: int,
        n_users: int,
        dim: int,
        n_layers: int,
        dim_latent: int | None,
        trainable_preference: bool,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        self.mlp = nn.Linear(feature_dim, dim_latent) if dim_latent else None  # PyTorch default init
        width = dim_latent or feature_dim
        pref = nn.init.xavier_normal_(torch.empty(n_users, width))
        if trainable_preference:
            self.preference = nn.Parameter(pref)
        else:  # [REF-QUIRK] a plain tensor in the reference: never updated by the optimiser
            self.register_buffer("preference", pref)
        self.negative_slope = negative_slope
        self.conv = nn.ParameterList()
        self.linear = nn.ModuleList()
        self.gate = nn.ModuleList()
        for layer in range(n_layers):
            c = width if layer == 0 else dim
            # conv weights: U(±1/sqrt(fan_in)) in the reference, then overwritten by Xavier-normal
            self.conv.append(nn.Parameter(nn.init.xavier_normal_(torch.empty(c, c))))
            lin = nn.Linear(c, dim)
            nn.init.xavier_normal_(lin.weight)
            self.linear.append(lin)
            gate = nn.Linear(c + dim, dim)
            if layer == 0:  # V₁ Xavier-normal; V₂, V₃ keep the PyTorch default init
                nn.init.xavier_normal_(gate.weight)
            self.gate.append(gate)
        self._cache: dict[str, tuple[tuple, torch.Tensor]] = {}

    def _constant(self, name: str, key: tuple, fn) -> torch.Tensor:
        """``fn()`` computed once without autograd while ``key`` (tensor identities/versions) is unchanged."""
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = self._cache[name] = (key, fn())
        return hit[1]

    def forward(self, graph: BipartiteAggregation, id_embedding: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """x^L for all N nodes from the ID embedding Z and this modality's raw features X_m."""
        act = F.leaky_relu
        slope = self.negative_slope
        pref = self.preference
        # Ā is bipartite (item rows feed users, user rows feed items), so every layer runs on the user
        # and item halves of x separately. Per half, Ā (x G) = (Ā x) G is computed on whichever side has
        # fewer rows — min(U, I)·c² multiply-adds instead of (U + I)·c² — and a constant half of x⁰
        # (frozen P_m; raw features) and its aggregation are computed once, without autograd.
        pref_key = (id(pref), pref._version, pref.device, id(graph))
        feat_key = (id(feats), feats._version, feats.device, id(graph))
        if isinstance(pref, nn.Parameter):
            x_u = F.normalize(pref, dim=1)
            ax_i = None
        else:
            x_u = self._constant("x_u", pref_key, lambda: F.normalize(pref, dim=1))
            ax_i = lambda x=x_u: self._constant("ax_i", pref_key, lambda: graph.to_items @ x)  # noqa: E731
        if self.mlp is not None:
            x_i = F.normalize(self.mlp(feats), dim=1)
            ax_u = None
        else:
            x_i = self._constant("x_i", feat_key, lambda: F.normalize(feats, dim=1))
            ax_u = lambda x=x_i: self._constant("ax_u", feat_key, lambda: graph.to_users @ x)  # noqa: E731
        n_users = x_u.shape[0]
        z_u, z_i = id_embedding[:n_users], id_embedding[n_users:]
        for layer, (g, lin, gate) in enumerate(zip(self.conv, self.linear, self.gate, strict=True)):
            if layer > 0:
                ax_u = ax_i = None
            h_u = act(_aggregate_transform(graph.to_users, x_i, g, ax_u), slope)
            h_i = act(_aggregate_transform(graph.to_items, x_u, g, ax_i), slope)
            x_u, x_i = (
                act(gate(torch.cat([h, act(lin(x), slope) + z], dim=1)), slope)
                for h, x, z in ((h_u, x_u, z_u), (h_i, x_i, z_i))
            )
        return torch.cat([x_u, x_i])


def _aggregate_transform(op: SparseOperator, x_in: torch.Tensor, g: torch.Tensor, aggregated=None) -> torch.Tensor:
    """(op @ x_in) @ g with the dense product on the side with fewer rows.

    ``aggregated``: a callable returning a cached ``op @ x_in`` (constant input), used when
    aggregating first is the cheaper order.
    """
    if op.shape[0] <= op.shape[1]:
        return (aggregated() if aggregated is not None else op @ x_in) @ g
    return op @ (x_in @ g)


class BipartiteAggregation:
    """The edge-list aggregation Ā over the user–item graph (2|E| edges), whole and as its two blocks.

    ``full`` is N × N; ``to_users`` (U × I) is its user-row / item-column block, ``to_items``
    (I × U) the item-row / user-column block (the other two blocks are zero).
    """

    def __init__(self, interactions, n_users: int, n_items: int, aggr: str, device: torch.device) -> None:
        src, dst = (t.to(device) for t in bipartite_edge_list(interactions))
        n = n_users + n_items
        self.full = edge_list_operator(src, dst, n, aggr)
        w = self.full.a.to_sparse_coo().coalesce()
        rows, cols = w.indices()
        vals = w.values()
        to_u = rows < n_users
        self.to_users = SparseOperator.from_coo(rows[to_u], cols[to_u] - n_users, vals[to_u], (n_users, n_items))
        self.to_items = SparseOperator.from_coo(rows[~to_u] - n_users, cols[~to_u], vals[~to_u], (n_items, n_users))


@register
class MMGCN(Recommender):
    """MMGCN: one GCN per content modality on the user–item edge list; outputs averaged.

    Per modality m (:class:`MMGCNBranch`, steps 1–4): F_m = MLP_m(X_m) (Linear F_m → 256) or the raw
    X_m; x⁰ = norm([P_m; F_m]); for l = 1..L (L = ``n_layers``, 3 as hard-coded in the reference):
    h = LeakyReLU(mean_{j∈N(v)} x_j^{l−1} G_l), x̂ = LeakyReLU(x^{l−1} W_l + b) + Z,
    x^l = LeakyReLU([h ‖ x̂] V_l + c) (concatenation combine, slope 0.01); O_m = x^L.
    O = mean_m O_m; s(u, j) = O_u · O_{n_u+j}. Scoring recomputes O in eval mode (the reference
    reuses the output of the last training forward).

    Loss: BPR (batch mean) + λ·[mean over the 2B×d elements of (Z[user]² + Z[item]²) + Σ_m mean(P_m²)],
    users repeated twice, items = positives and negatives.

    Config: ``embedding_size`` (d, 64), ``reg_weight`` (λ, 1e-3), ``n_layers`` (3), ``aggr_mode``
    (``mean`` | ``add``; mean), ``dim_latent`` (256, width of the MLP pre-projection),
    ``project_min_dim`` (512), ``reference_quirks`` (false).

    [REF-QUIRK] ``reference_quirks: true`` reproduces the reference (and the published MMGCN numbers):
    the shared ID embedding Z (N×d) and the user preferences P_m are frozen at their random
    Xavier-normal initialisation (buffers; the λ-term is then a constant without gradient) and the
    preference regulariser covers only the pre-projected modalities (the reference: P_v only).
    ``false`` (default, the paper's model): Z and every P_m are trainable and all P_m are regularised.

    [choices] Generalised to any set of modalities: a modality is pre-projected by MLP → ``dim_latent``
    iff its feature width is ≥ ``project_min_dim`` (Amazon: image 4096 → 256, text 384 raw — the
    reference's v/t setup); ``n_layers`` is honoured (default 3 = the reference's hard-coded depth);
    the combine is always the concatenation (the reference's effective behaviour).
    Speed (exact rewrites, see :class:`MMGCNBranch`): mean_j x_j G = (Ā x) G evaluated per user/item
    half with the dense product on the side with fewer rows; constant halves of x⁰ cached.
    """

    name = "MMGCN"
    config_name = "mmgcn"
    description = "Per-modality GCNs on the user-item graph (content + preference vectors), averaged."
    min_modalities = 1

    cold_start = COLD_CONTENT
    cold_rule = "Z row at the warm-item mean; each branch's item input is the item's own (projected) features"

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_mean(self.id_embedding, self.n_users)]

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.reference_quirks = bool(config.reference_quirks)
        n_nodes = self.n_users + self.n_items
        self.agg = BipartiteAggregation(
            dataset.train_matrix, self.n_users, self.n_items, config.aggr_mode, graphs.device
        )
        self.register_feature_buffers(dataset)
        self.branches = nn.ModuleList()
        self.projected: list[bool] = []
        for m in self.modalities:
            width = self.feature_buffer(m).shape[1]
            project = width >= int(config.project_min_dim)
            self.projected.append(project)
            self.branches.append(
                MMGCNBranch(
                    width,
                    self.n_users,
                    d,
                    int(config.n_layers),
                    int(config.dim_latent) if project else None,
                    trainable_preference=not self.reference_quirks,
                )
            )
        z = nn.init.xavier_normal_(torch.empty(n_nodes, d))
        if self.reference_quirks:
            self.register_buffer("id_embedding", z)
        else:
            self.id_embedding = nn.Parameter(z)
        self.to(graphs.device)

    def forward_all(self) -> torch.Tensor:
        out = None
        for m, branch in zip(self.modalities, self.branches, strict=True):
            o = branch(self.agg, self.id_embedding, self.feature_buffer(m))
            out = o if out is None else out + o
        return out / len(self.branches)

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return split_nodes(self.forward_all(), self.n_users)

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self.compute_representations()
        u, p, n = users[batch.users], items[batch.pos], items[batch.neg]
        main = bpr_loss(pair_scores(u, p), pair_scores(u, n))
        lam = float(self.config.reg_weight)
        if lam == 0:
            return main
        z = self.id_embedding
        zu, zp, zn = z[batch.users], z[self.n_users + batch.pos], z[self.n_users + batch.neg]
        reg = (2 * zu.pow(2).sum() + zp.pow(2).sum() + zn.pow(2).sum()) / (2 * zu.numel())
        for branch, projected in zip(self.branches, self.projected, strict=True):
            if projected or not self.reference_quirks:
                reg = reg + branch.preference.pow(2).mean()
        return main + lam * reg
