"""DA-MRS (Xv et al., KDD 2024) on a LightGCN backbone — docs/models/damrs.md."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from modalrec.ann import builds_approximately
from modalrec.graphs import (
    APPROXIMATE_DENOISED_FORM,
    SparseOperator,
    approximate_cross_modal_denoised_knn,
    co_interaction_graph,
    cross_modal_denoised_knn,
)
from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Recommender, xavier_embedding
from modalrec.nn.losses import dot_bernoulli_kl_full, neighbour_discrimination_nce, sampled_subset
from modalrec.nn.propagation import propagate, split_nodes
from modalrec.nn.scoring import pair_scores

BEHAVIOUR = "behaviour"  # name of the co-interaction (IIB) view


@register
class DAMRS(Recommender):
    """DA-MRS + LightGCN: denoised item–item graphs, denoised BPR, KL and neighbour alignment.

    Graphs (built once, frozen, cached by the GraphStore): per content modality m a binary
    kNN graph G_m (k = ``knn_k``) after cross-modal denoising — an item pair survives only if its
    cosine similarity is ≥ the global mean similarity in EVERY modality
    (:func:`~modalrec.graphs.cross_modal_denoised_knn`); plus the co-interaction graph G_s
    (pairs with ≥ 2 common users, top-``item_graph_k`` partners, self-loops, binary;
    :func:`~modalrec.graphs.co_interaction_graph`); the full A_sym.

    Forward: [H_u; H_i] = LGC(E⁰; A_sym, L_ui); views h_m = G_m^{L_mm} E_i for every content
    modality and s; h̄ = mean of the views; Ĥ_i = H_i + h̄; s(u, j) = H_u[u] · Ĥ_i[j].

    Loss, views V = the content modalities + s:
    - denoised BPR: q^m_± = σ(H_u[u]·norm(h_m[p/n])); μ_+ = mean_m q^m_+, v_+ = unbiased var_m,
      x_+ = max_m; μ_− = mean of q^m_− over all views AND triples (a scalar);
      w_+ = clamp(μ_+ e^{−2v_+}, 0, 1), w_− = clamp(x_+ − μ_−, 0, 1)·1[μ_+ < μ_−] (detached);
      L_bpr = −mean[w_+ log σ(s_p − s_n) + w_− log σ(s_n − s_p)];
    - L_KL = mean over distinct batch users × distinct batch items of the symmetric Bernoulli KL
      between σ(H_u·norm(H_i)ᵀ) and σ(H_u·norm(h̄)ᵀ) (probabilities clamped to [1e-7, 1−1e-7]);
    - L_ND: neighbour discrimination (τ_n = ``neighbor_tau``, 10 pseudo-positives) averaged over
      the views (:func:`~modalrec.nn.losses.neighbour_discrimination_nce`, in item blocks);
    - L = L_bpr + ``neighbor_weight``·L_ND + ``kl_weight``·L_KL.

    ``kl_items`` / ``neighbor_anchors`` N > 0 (the large-data mode's 1,024): the KL term runs over N of the
    distinct batch items and L_ND over N anchors, drawn without replacement per step
    (:func:`~modalrec.nn.losses.sampled_subset`) — unbiased estimates of the same means. Both terms
    otherwise grow with the batch times the batch (KL) or times every item (L_ND), and the mode's batch
    grows with the data.

    **[choices]** for M content modalities (the paper: exactly v, t): the denoising mask requires
    every modality's similarity to pass its mean, and the neighbour count c_i is the number of
    entries surviving the joint mask (the reference counts the non-zeros of the masked *text*
    row — identical unless a surviving cosine is exactly 0); in the ND target matrix the target
    view counts twice and every other view once (Q_a + Q_b + 2 Q_m for three views).
    Pseudo-labels are ties-broken by ``torch.topk``.

    Config: ``knn_k`` (10), ``item_graph_k`` (k_b 2), ``n_ui_layers`` (2), ``n_mm_layers`` (1),
    ``kl_weight`` (1.0), ``neighbor_weight`` (0.001), ``neighbor_tau`` (0.2),
    ``loss_block_size`` (items per ND block, 512), ``kl_items`` (0: all), ``neighbor_anchors`` (0: all).
    No [REF-QUIRK] is listed for DA-MRS; evaluation is deterministic.
    """

    name = "DA-MRS"
    config_name = "damrs"
    description = "Denoised item-item graphs, denoised BPR weights and KL/neighbour alignment on LightGCN."
    min_modalities = 1

    cold_start = COLD_CONTENT
    cold_rule = "E_i row at the warm-item mean; content enters through the item's neighbours in the denoised kNN graphs"

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_mean(self.item_emb.weight)]

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.adj = graphs.norm_adj()
        self.views = [*self.modalities, BEHAVIOUR]
        self.item_graphs: dict[str, SparseOperator] = {}
        k = int(config.knn_k)
        hashes = tuple(dataset.feature_hash(m) for m in self.modalities)
        built: list = []

        approximate = builds_approximately(graphs)

        def knn_matrix(pos: int) -> sp.csr_matrix:
            if not built:
                feats = [np.asarray(dataset.features[m], dtype=np.float32) for m in self.modalities]
                if approximate:  # the store's knn_method rule (auto: from 200,000 items), as every item graph
                    found, infos = approximate_cross_modal_denoised_knn(feats, k)
                    built.extend(found)
                    for info, m in zip(infos, self.modalities, strict=True):
                        graphs.notes.append(info.describe(f"{m} denoised graph"))
                else:
                    built.extend(cross_modal_denoised_knn(feats, k))
            rows, cols, vals = built[pos]
            n = self.n_items
            g = sp.csr_matrix((vals.numpy(), (rows.numpy(), cols.numpy())), shape=(n, n), dtype=np.float32)
            g.sort_indices()
            return g

        # the approximate build's key names its form, so a cache entry of another form is never read back
        kind, form = ("damrs_knn-ann", APPROXIMATE_DENOISED_FORM) if approximate else ("damrs_knn", ())
        for pos, m in enumerate(self.modalities):
            mat = graphs.cached(kind, (hashes, k, pos, *form), lambda pos=pos: knn_matrix(pos))
            self.item_graphs[m] = SparseOperator(mat, graphs.device, symmetric=False)
        if approximate and not built:
            graphs.notes.append("denoised graphs: approximate (FAISS HNSW candidates) read from the graph cache")
        kb = int(config.item_graph_k)
        iib = graphs.cached(
            "damrs_iib", (dataset.interactions_hash, kb, 2), lambda: co_interaction_graph(dataset.train_matrix, kb, 2)
        )
        self.item_graphs[BEHAVIOUR] = SparseOperator(iib, graphs.device, symmetric=False)
        self.to(graphs.device)

    def forward_all(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(H_u, H_i, [h_m for each view])."""
        e0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        h_u, h_i = split_nodes(propagate(self.adj, e0, int(self.config.n_ui_layers), "mean"), self.n_users)
        n_mm = int(self.config.n_mm_layers)
        views = [propagate(self.item_graphs[v], self.item_emb.weight, n_mm, "last") for v in self.views]
        return h_u, h_i, views

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        h_u, h_i, views = self.forward_all()
        return h_u, h_i + torch.stack(views).mean(0)

    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        h_u, h_i, views = self.forward_all()
        h_bar = torch.stack(views).mean(0)
        items = h_i + h_bar
        u = h_u[batch.users]
        s_p = pair_scores(u, items[batch.pos])
        s_n = pair_scores(u, items[batch.neg])
        with torch.no_grad():
            q_pos = torch.stack([torch.sigmoid(pair_scores(u, F.normalize(v[batch.pos], dim=1))) for v in views])
            q_neg = torch.stack([torch.sigmoid(pair_scores(u, F.normalize(v[batch.neg], dim=1))) for v in views])
            mu_pos, var_pos, max_pos = q_pos.mean(0), q_pos.var(0, unbiased=True), q_pos.max(0).values
            mu_neg = q_neg.mean()
            w_pos = (mu_pos * torch.exp(-2.0 * var_pos)).clamp(0.0, 1.0)
            w_neg = (max_pos - mu_neg).clamp(0.0, 1.0) * (mu_pos < mu_neg).to(u.dtype)
        loss = -(w_pos * F.logsigmoid(s_p - s_n) + w_neg * F.logsigmoid(s_n - s_p)).mean()
        if cfg.kl_weight > 0 or cfg.neighbor_weight > 0:
            ub = torch.unique(batch.users)
            ib = torch.unique(torch.cat([batch.pos, batch.neg]))
        if cfg.kl_weight > 0:
            ik = sampled_subset(ib, int(cfg.kl_items))
            kl = dot_bernoulli_kl_full(
                h_u[ub], F.normalize(h_i[ik], dim=1), F.normalize(h_bar[ik], dim=1), block_size=cfg.loss_block_size
            )
            loss = loss + cfg.kl_weight * kl
        if cfg.neighbor_weight > 0:
            tables = [F.normalize(v, dim=1) for v in views]
            anchors = [t[sampled_subset(ib, int(cfg.neighbor_anchors))] for t in tables]
            nd = neighbour_discrimination_nce(anchors, tables, cfg.neighbor_tau, 10, cfg.loss_block_size)
            loss = loss + cfg.neighbor_weight * nd
        return loss
