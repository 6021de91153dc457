"""FREEDOM (Zhou & Shen, ACM MM 2023, "A Tale of Two Graphs: Freezing and Denoising Graph Structures for
Multimodal Recommendation") — docs/models/freedom.md."""

from __future__ import annotations

import scipy.sparse as sp
import torch
from torch import nn

from modalrec.graphs import EpochEdgeDropout, SparseOperator
from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Recommender, feature_tensor, xavier_embedding
from modalrec.nn.losses import bpr_loss
from modalrec.nn.propagation import propagate, split_nodes
from modalrec.nn.scoring import pair_scores


def modality_graph_weights(modalities: list[str], image_weight: float) -> list[float]:
    """Weights of the per-modality kNN graphs in S_mm (FREEDOM's w_v, 1 − w_v generalised to M modalities).

    ``image`` gets ``image_weight`` and the other modalities share 1 − ``image_weight`` equally;
    without an image modality all get 1/M; an image-only dataset gives the image weight 1.
    """
    others = [m for m in modalities if m != "image"]
    if "image" not in modalities:
        return [1.0 / len(modalities)] * len(modalities)
    if not others:
        return [1.0]
    return [image_weight if m == "image" else (1.0 - image_weight) / len(others) for m in modalities]


@register
class FREEDOM(Recommender):
    """FREEDOM: frozen binary kNN item graph + degree-sensitively pruned user–item graph.

    Parameters: E_u, E_i (Xavier-uniform); per content modality m (any number) a TRAINABLE copy T_m
    of the raw features (init X_m) and Φ_m: F_m → d_f (Linear, PyTorch default init).

    Graphs: S_mm = Σ_m w_m · kNN-binary(X_m, k) (each kept entry 1/k; sparse, on the union of
    the supports), built once from the raw features and frozen; w = (w_v, 1 − w_v) for image+text,
    see :func:`modality_graph_weights` for other modality sets. User–item graph: :meth:`pre_epoch`
    draws Â_t, keeping floor(|E|(1 − ρ)) edges sampled ∝ 1/sqrt(deg_u deg_i) without replacement and
    re-normalised on the kept degrees (every epoch, torch's seeded global RNG); scoring uses A_sym.

    Forward (Â = Â_t in training, A_sym for scoring):
    1. h = S_mm^{L_mm} E_i; 2. [H_u; H̄_i] = LGC(E⁰; Â, L_ui); 3. H_i = H̄_i + h; 4. s_uj = H_u[u] · H_i[j].

    Loss: BPR(H_u[u], H_i[p], H_i[n]) + λ Σ_m BPR(H_u[u], C_m[p], C_m[n]) with C_m = Φ_m(T_m), no L2.
    C_m is projected only for the batch rows (C_m[p] = Φ_m(T_m[p]); same values); with λ = 0 the
    content branch is skipped (it has no effect on the gradients).

    Config: ``knn_k`` k (10), ``mm_image_weight`` w_v (0.1), ``n_mm_layers`` L_mm (1),
    ``n_ui_layers`` L_ui (2), ``feat_embed_dim`` d_f (64; must equal embedding_size, the user side
    scores against C_m), ``dropout`` ρ (0.8), ``reg_weight`` λ (1e-3).
    No [REF-QUIRK] is listed for FREEDOM, so there is no ``reference_quirks`` key.
    [choices] Defaults ρ 0.8, λ 1e-3 (the per-dataset optimum is [OPEN]; DA-MRS's FREEDOM config
    fixes these); without a ``pre_epoch`` call (e.g. a loss before any epoch) training uses A_sym.
    ``lambda_coeff`` and ``weight_size`` of the reference config are unused there and not offered.
    """

    name = "FREEDOM"
    config_name = "freedom"
    description = "Frozen multimodal kNN item graph + degree-sensitive pruning of the user-item graph."
    min_modalities = 1

    cold_start = COLD_CONTENT
    cold_rule = "E_i row at the warm-item mean, trainable feature rows at the raw features; content enters through S_mm"

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_mean(self.item_emb.weight), *self.cold_feature_copies(self.features)]

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.dropout = float(config.dropout)
        self.n_mm_layers = int(config.n_mm_layers)
        self.n_ui_layers = int(config.n_ui_layers)
        if int(config.feat_embed_dim) != d:
            raise self.setting_error(
                "feat_embed_dim",
                f"must equal embedding_size {d} (users score against C_m); got {config.feat_embed_dim}",
            )
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.features = nn.ParameterList()
        self.projections = nn.ModuleList()
        for m in self.modalities:
            x = feature_tensor(dataset.features, m)
            self.features.append(nn.Parameter(x.clone()))
            self.projections.append(nn.Linear(x.shape[1], d))
        self.modal_weights = modality_graph_weights(self.modalities, float(config.mm_image_weight))
        k = int(config.knn_k)
        s_mm = sum(
            w * graphs.knn_matrix(m, k, weighted=False, normalization="sym")
            for m, w in zip(self.modalities, self.modal_weights, strict=True)
        )
        self.item_graph = SparseOperator(sp.csr_matrix(s_mm), graphs.device, symmetric=False)
        self.adj = graphs.norm_adj()
        self.train_adj: SparseOperator = self.adj
        self.edge_dropout = EpochEdgeDropout(dataset.train_matrix, self.dropout, self.adj, graphs.device)
        self.to(graphs.device)

    def pre_epoch(self, epoch: int) -> None:
        self.train_adj = self.edge_dropout.adjacency(epoch)

    def forward_graph(self, adj: SparseOperator) -> tuple[torch.Tensor, torch.Tensor]:
        """(H_u, H_i) on the user–item graph ``adj``."""
        h = propagate(self.item_graph, self.item_emb.weight, self.n_mm_layers, "last")
        e0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        users, items = split_nodes(propagate(adj, e0, self.n_ui_layers, "mean"), self.n_users)
        return users, items + h

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_graph(self.adj)

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self.forward_graph(self.train_adj)
        u = users[batch.users]
        loss = bpr_loss(pair_scores(u, items[batch.pos]), pair_scores(u, items[batch.neg]))
        lam = float(self.config.reg_weight)
        if lam > 0:  # project each distinct batch item once (one gather, one scatter of the feature grads)
            rows, inv = torch.unique(torch.cat([batch.pos, batch.neg]), return_inverse=True)
            inv_p, inv_n = inv[: len(batch.pos)], inv[len(batch.pos) :]
            for feat, proj in zip(self.features, self.projections, strict=True):
                c = proj(feat.index_select(0, rows))
                loss = loss + lam * bpr_loss(pair_scores(u, c[inv_p]), pair_scores(u, c[inv_n]))
        return loss
