"""LATTICE (Zhang et al., ACM MM 2021) — docs/models/lattice.md."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modalrec.ann import LearnedGraphNeighbours
from modalrec.graphs import SparseOperator, learned_knn_coo, normalize_sparse_rows
from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Recommender, feature_tensor, xavier_embedding
from modalrec.nn.losses import bpr_loss, sq_reg
from modalrec.nn.propagation import edge_list_aggregate, propagate, split_nodes
from modalrec.nn.scoring import pair_scores


@register
class LATTICE(Recommender):
    """LATTICE: learned + frozen item–item kNN graphs over modalities added to a LightGCN.

    Parameters: E_u, E_i (Xavier-uniform); per content modality m (any number) a TRAINABLE
    copy T_m of the raw features (initialised to X_m) and Φ_m: Linear(F_m → d_f) (PyTorch
    default init); modality weights ω ∈ R^M initialised to 0.5 (α = softmax(ω)).

    Item graph (forward step 1):
    S̃_m = kNN-weighted(X_m, k) with D^{-1/2}·D^{-1/2} normalisation (frozen, GraphStore-cached);
    Ŝ_m = top-k per row of cos-sim(Φ_m(T_m)), the kept similarities as values (directed,
    not yet normalised) — built in item row blocks by ``graphs.learned_knn_coo``, never an
    I × I matrix, and differentiable w.r.t. the kept values like ``topk`` on a dense matrix;
    S = (1 − λ_c)·Dnorm(Σ_m α_m Ŝ_m) + λ_c·Σ_m α_m S̃_m, kept as sparse COO triples.
    S is rebuilt with gradients on the first training batch after :meth:`pre_epoch` and at
    every evaluation; the other batches reuse it detached (as a CSR operator), so Φ, T and ω
    receive gradients only from each epoch's first batch, as in the reference.

    Forward: h = S^{L_mm} E_i; [H_u; H̄_i] = mean_{l=0..L_ui} (A_rw+I)^l E⁰ (``cf_model:
    lightgcn``; ``mf`` uses E⁰ as is); H_i = H̄_i + norm(h); s_uj = H_u[u] · H_i[j].
    Loss: BPR (mean) + λ·SqReg_B(H_u[u], H_i[p], H_i[n]) on the final embeddings.

    Config: ``knn_k`` k (10), ``lambda_coeff`` λ_c (0.9), ``n_layers`` L_mm (1),
    ``weight_size`` (L_ui = its length, [64, 64]), ``feat_embed_dim`` d_f (64), ``cf_model``
    (lightgcn | mf), ``reg_weight`` λ (1e-5), lr 5e-4 with schedule 0.96^(epoch/50),
    ``knn_block_size`` (item rows per similarity block, 1024). The learned graphs' neighbour sets are exact,
    or approximate (FAISS HNSW, their recall in the run's graph notes) under the run's ``knn_method: ann``
    (``auto``: from 200,000 items), as every item–item graph's. [choice] The reference's
    ``ngcf`` backbone is not offered. No [REF-QUIRK] applies (the detached reuse above is
    the paper's and the reference's behaviour), so there is no ``reference_quirks`` key.
    """

    name = "LATTICE"
    config_name = "lattice"
    description = "Learned + frozen modality item-item kNN graphs added to a LightGCN item side."
    min_modalities = 1

    cold_start = COLD_CONTENT
    cold_rule = "E_i row at the warm-item mean, trainable feature rows at the raw features; content enters through S"

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_mean(self.item_emb.weight), *self.cold_feature_copies(self.features)]

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.k = int(config.knn_k)
        self.lambda_coeff = float(config.lambda_coeff)
        self.n_mm_layers = int(config.n_layers)
        self.n_ui_layers = len(config.weight_size)
        self.knn_block_size = int(config.knn_block_size)
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.features = nn.ParameterList()
        self.projections = nn.ModuleList()
        for m in self.modalities:
            x = feature_tensor(dataset.features, m)
            self.features.append(nn.Parameter(x.clone()))
            self.projections.append(nn.Linear(x.shape[1], int(config.feat_embed_dim)))
            self.register_coo_buffers(f"fixed_{m}", graphs.knn_matrix(m, self.k, weighted=True, normalization="sym"))
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 0.5))
        self.adj = graphs.rw_adj()
        self._item_graph: SparseOperator | None = None  # detached S reused between rebuilds
        self._item_graph_coo: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # its COO triple
        self._rebuild = True
        # The learned graphs follow the store's kNN method (knn_method; ann from 200,000 items), as MARIO's do.
        self._ann_neighbours = LearnedGraphNeighbours.for_store(graphs, self.k, list(self.modalities), self.name)
        self.to(graphs.device)

    # ------------------------------------------------------------------ item graph
    def item_graph_coo(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """S as COO triples (rows, cols, values); values carry gradients when grad is enabled."""
        alpha = torch.softmax(self.modal_weight, dim=0)
        rows, cols, vals = [], [], []
        if self.lambda_coeff < 1.0:
            tables = [proj(feat) for feat, proj in zip(self.features, self.projections, strict=True)]
            found = self._ann_neighbours(tables) if self._ann_neighbours is not None else [(None, None)] * len(tables)
            for i, (table, (neighbours, _)) in enumerate(zip(tables, found, strict=True)):
                r, c, s = learned_knn_coo(table, self.k, block_size=self.knn_block_size, neighbours=neighbours)
                rows.append(r)
                cols.append(c)
                vals.append(alpha[i] * s)
            r, c = torch.cat(rows), torch.cat(cols)
            learned = normalize_sparse_rows(r, c, torch.cat(vals), self.n_items, "sym")
            rows, cols, vals = [r], [c], [(1.0 - self.lambda_coeff) * learned]
        if self.lambda_coeff > 0.0:
            for i, m in enumerate(self.modalities):
                r, c, v = self.coo_buffers(f"fixed_{m}")
                rows.append(r)
                cols.append(c)
                vals.append(self.lambda_coeff * alpha[i] * v)
        return torch.cat(rows), torch.cat(cols), torch.cat(vals)

    def _item_side(self) -> torch.Tensor:
        """h = S^{L_mm} E_i, rebuilding S (with gradients) when flagged or when evaluating."""
        h = self.item_emb.weight
        if self._rebuild or self._item_graph is None or not self.training:
            rows, cols, vals = self.item_graph_coo()
            self._item_graph_coo = (rows, cols, vals.detach())
            self._item_graph = SparseOperator.from_coo(*self._item_graph_coo, (self.n_items, self.n_items))
            if self.training:
                self._rebuild = False
            if vals.requires_grad:
                for _ in range(self.n_mm_layers):
                    h = edge_list_aggregate(h, cols, rows, self.n_items, "add", edge_weight=vals)
                return h
        return propagate(self._item_graph, h, self.n_mm_layers, "last")

    def pre_epoch(self, epoch: int) -> None:
        self._rebuild = True

    def extra_state(self) -> dict:
        """Mid-epoch, the S built on the epoch's first batch (from that batch's weights) is still in use."""
        if self._rebuild or self._item_graph_coo is None:
            return {}
        return {"item_graph_coo": tuple(t.cpu() for t in self._item_graph_coo)}

    def load_extra_state(self, state: dict) -> None:
        if "item_graph_coo" in state:
            dev = self.device
            self._item_graph_coo = tuple(t.to(dev) for t in state["item_graph_coo"])
            self._item_graph = SparseOperator.from_coo(*self._item_graph_coo, (self.n_items, self.n_items))
            self._rebuild = False

    # ------------------------------------------------------------------ forward / loss
    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._item_side()
        e0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        if self.config.cf_model == "lightgcn":
            e0 = propagate(self.adj, e0, self.n_ui_layers, "mean")
        users, items = split_nodes(e0, self.n_users)
        return users, items + F.normalize(h, dim=1)

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self.compute_representations()
        u, p, n = users[batch.users], items[batch.pos], items[batch.neg]
        reg = sq_reg(u, p, n)
        return bpr_loss(pair_scores(u, p), pair_scores(u, n)) + float(self.config.reg_weight) * reg
