"""LayerGCN (Zhou et al., ICDE 2023, "Layer-refined GCNs for Recommendation") — docs/models/layergcn.md."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modalrec.graphs import EpochEdgeDropout, SparseOperator
from modalrec.models import register
from modalrec.models.base import Batch, Recommender, xavier_embedding
from modalrec.nn.losses import bpr_loss, l2_loss
from modalrec.nn.propagation import split_nodes
from modalrec.nn.scoring import pair_scores

COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps: w = (y·e) / max(‖y‖‖e‖, eps)


def layer_refined_propagation_reference(adj: SparseOperator, e0: torch.Tensor, n_layers: int) -> torch.Tensor:
    """The layer-refined propagation written with plain autograd ops (the MMRec formulation; tests)."""
    x = e0
    out = torch.zeros_like(e0)
    for _ in range(n_layers):
        y = adj @ x
        x = F.cosine_similarity(y, e0, dim=-1, eps=COS_EPS).unsqueeze(-1) * y
        out = out + x
    return out


def _refine_forward(adj: SparseOperator, e0: torch.Tensor, n_layers: int, keep: bool):
    """Forward pass; with ``keep`` also returns what the backward needs (Y_l, w_l, ‖Y_l‖ per layer)."""
    q = torch.linalg.vector_norm(e0, dim=1)
    x, out = e0, torch.zeros_like(e0)
    ys, ws, rs = [], [], []
    for _ in range(n_layers):
        y = adj.a @ x
        r = torch.linalg.vector_norm(y, dim=1)
        w = torch.einsum("nd,nd->n", y, e0) / (r * q).clamp_min(COS_EPS)
        x = y * w.unsqueeze(1)
        out.add_(x)
        if keep:
            ys.append(y)
            ws.append(w)
            rs.append(r)
    return out, q, ys, ws, rs


class _LayerRefinedPropagation(torch.autograd.Function):
    """H = Σ_{l=1..L} w_l ⊙ Y_l with Y_l = Â X_{l−1}, w_l = cos(Y_l, E⁰), X_l = w_l ⊙ Y_l, X_0 = E⁰.

    Hand-written backward: autograd of ``cosine_similarity`` spends ~15 element-wise passes over
    the (N × d) tables per layer (normalised copies, clamps, masks), which dominate the epoch once
    the sparse products are fast; this keeps Y_l and the per-node scalars and needs about five.
    With r = ‖Y‖, q = ‖E⁰‖, s = max(r q, eps), w = (Y·E⁰)/s and g_w = (G_X ⊙ Y)·1:
    G_Y = w G_X + (g_w/s) E⁰ − [r q > eps] (g_w w / r²) Y and
    G_E⁰ += (g_w/s) Y − [r q > eps] (g_w w / q²) E⁰, then G_X_{l−1} = Âᵀ G_Y (Â is symmetric here).
    """

    @staticmethod
    def forward(ctx, e0: torch.Tensor, adj: SparseOperator, n_layers: int) -> torch.Tensor:  # type: ignore[override]
        out, q, ys, ws, rs = _refine_forward(adj, e0, n_layers, keep=True)
        ctx.adj = adj
        ctx.save_for_backward(e0, q, *ys, *ws, *rs)
        ctx.n_layers = n_layers
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        n = ctx.n_layers
        e0, q, *rest = ctx.saved_tensors
        ys, ws, rs = rest[:n], rest[n : 2 * n], rest[2 * n :]
        adj = ctx.adj
        grad_e0 = torch.zeros_like(e0)
        coef_e0 = torch.zeros_like(q)  # Σ_l of the per-node multipliers of E⁰ in G_E⁰
        q2 = q.square()
        gx = grad_out
        for layer in range(n - 1, -1, -1):
            y, w, r = ys[layer], ws[layer], rs[layer]
            s = (r * q).clamp_min(COS_EPS)
            inside = (r * q) > COS_EPS
            gw = torch.einsum("nd,nd->n", gx, y)
            a = gw / s
            b = torch.where(inside, gw * w / r.square().clamp_min(1e-30), torch.zeros_like(gw))
            c = torch.where(inside, gw * w / q2.clamp_min(1e-30), torch.zeros_like(gw))
            gy = gx * w.unsqueeze(1)
            gy.addcmul_(e0, a.unsqueeze(1)).addcmul_(y, b.neg().unsqueeze(1))
            grad_e0.addcmul_(y, a.unsqueeze(1))
            coef_e0.sub_(c)
            g_prev = adj.a_t @ gy
            if layer > 0:
                gx = g_prev.add_(grad_out)
            else:
                grad_e0.add_(g_prev)
        grad_e0.addcmul_(e0, coef_e0.unsqueeze(1))
        return grad_e0, None, None


def layer_refined_propagation(adj: SparseOperator, e0: torch.Tensor, n_layers: int) -> torch.Tensor:
    """H = Σ_{l=1..L} X^l with Y = Â X^{l−1}, X^l_v = cos(Y_v, E⁰_v) · Y_v (docs/models/layergcn.md#forward-pass).

    Layer 0 is excluded from the sum; the cosine weight is neither clamped nor detached
    (it may be negative and the gradient flows through it). Same values and gradients as
    :func:`layer_refined_propagation_reference`, with fewer passes over memory.
    """
    if torch.is_grad_enabled() and e0.requires_grad:
        return _LayerRefinedPropagation.apply(e0, adj, n_layers)
    with torch.no_grad():
        return _refine_forward(adj, e0, n_layers, keep=False)[0]


@register
class LayerGCN(Recommender):
    """LayerGCN: LightGCN-style propagation with layer refinement by cosine similarity to the ego layer.

    Equations, with Â the pruned training graph Â_t or the full A_sym (scoring):

    1. X⁰ = E⁰ = [E_u; E_i];
    2. for l = 1..L: Y = Â X^{l−1}; w_v = cos(Y_v, E⁰_v); X^l_v = w_v · Y_v;
    3. H = Σ_{l=1}^{L} X^l (layer 0 excluded); s(u, j) = H_u[u] · H_i[j].

    Per-epoch graph (:meth:`pre_epoch`): with ρ = ``dropout`` > 0, keep m = floor(|E|(1−ρ)) training
    edges, sampled degree-sensitively (∝ 1/sqrt(deg_u deg_i), without replacement; see
    docs/building-blocks.md#degree-sensitive-edge-pruning) on even epochs and uniformly at random
    without replacement on odd epochs (the reference toggles a flag after every epoch, starting
    degree-sensitive); Â_t = D^{-1/2} A_kept D^{-1/2} with degrees recomputed on the kept graph.
    ρ = 0 trains on A_sym. Scoring always uses the full A_sym.

    Loss: Σ_b −log σ(s_{u,p} − s_{u,n}) (SUM over the batch) + λ·L2Loss(E_u[u], E_i[p], E_i[n])
    (½ squared norms of the batch's ego rows, no division by B).

    Config: ``n_layers`` (L, 4), ``dropout`` (ρ, 0.1), ``reg_weight`` (λ, 1e-4); embeddings Xavier-uniform.
    ID only (``min_modalities`` 0); content features, if present, are ignored.

    [choices] No per-dataset optimum is published [OPEN]: defaults ρ = 0.1, λ = 1e-4 (middle of
    the MMRec grid). Without the trainer's pre-epoch hook (e.g. a loss computed before any epoch)
    training uses A_sym. Edge sampling draws from torch's global RNG, so runs are reproducible
    under the trainer's seed. Speed: the propagation has a hand-written backward
    (:class:`_LayerRefinedPropagation`, same values and gradients as the autograd formulation
    :func:`layer_refined_propagation_reference`, checked in the tests) — autograd of the cosine
    weights made element-wise passes, not the sparse products, the bulk of an epoch.
    """

    name = "LayerGCN"
    config_name = "layergcn"
    description = "Layer-refined graph CF (cosine-to-ego layer weights) with per-epoch degree-sensitive edge pruning."
    min_modalities = 0

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        self.n_layers = int(config.n_layers)
        self.dropout = float(config.dropout)
        d = int(config.embedding_size)
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.adj = graphs.norm_adj()
        self.train_adj: SparseOperator = self.adj
        self.edge_dropout = EpochEdgeDropout(
            dataset.train_matrix, self.dropout, self.adj, graphs.device, schedule="alternate"
        )
        self.to(graphs.device)

    def pre_epoch(self, epoch: int) -> None:
        self.train_adj = self.edge_dropout.adjacency(epoch)

    def propagate(self, adj: SparseOperator) -> tuple[torch.Tensor, torch.Tensor]:
        e0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        return split_nodes(layer_refined_propagation(adj, e0, self.n_layers), self.n_users)

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.adj)

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self.propagate(self.train_adj)
        u, p, n = users[batch.users], items[batch.pos], items[batch.neg]
        reg = l2_loss(self.user_emb(batch.users), self.item_emb(batch.pos), self.item_emb(batch.neg))
        return bpr_loss(pair_scores(u, p), pair_scores(u, n), reduction="sum") + self.config.reg_weight * reg
