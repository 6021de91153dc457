"""MARIO (Kim, Lee, Shin, Kim — CIKM 2022): modality-aware attention and modality-preserving decoders.

Implements the paper's equations one by one (documented in docs/models/mario.md), for any number of content modalities
(whatever ``dataset.features`` holds, in that order) plus the interaction modality
``"interaction"`` (IN) produced by a collaborative-filtering backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modalrec.ann import LearnedGraphNeighbours
from modalrec.graphs import SparseOperator, knn_graph_coo, knn_topk, normalize_sparse_rows
from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Explanation, Recommender, xavier_embedding
from modalrec.nn.losses import bpr_loss, decoded_l1_error, sq_reg
from modalrec.nn.projection import project_features
from modalrec.nn.propagation import NGCFPropagation, propagate, split_nodes
from modalrec.nn.scoring import modality_attention_scores, modality_attention_scores_into

INTERACTION = "interaction"


@dataclass
class MarioRepresentations:
    """Everything ranking and the loss need, for all users and items.

    ``items`` stacks the active modality item tables v^m in ``parts`` order, (M, I, d);
    ``fused`` is the user-independent item table of the mean/max/fc fusions (None for
    attention); ``compressed`` holds C_m = F_m W_m per active content modality and
    ``content`` the propagated v^m before the content gate (what the decoders read).
    """

    users: torch.Tensor
    items: torch.Tensor
    fused: torch.Tensor | None
    compressed: list[torch.Tensor]
    content: list[torch.Tensor]


@register
class MARIO(Recommender):
    """MARIO: per-(user, item) softmax attention over modality item embeddings (docs/models/mario.md).

    Notation: d = ``embedding_size``; content modalities m (the dataset's, or the subset
    named in ``modalities``); IN = ``"interaction"``.

    Forward (docs/models/mario.md#forward-pass), one call for all users and items:

    1. Backbone (``backbone``): (u, v^IN) = backbone(E_u, E_i).
       ``bprmf``: u = E_u, v^IN = E_i. ``lightgcn``: mean of H⁰..H^L with H^l = Â H^{l−1},
       L = ``n_layers``. ``ngcf``: NGCF propagation on (D+I)^{-1}(A+I) (LeakyReLU slope
       ``ngcf_leaky_slope`` 0.2, message dropout ``ngcf_mess_dropout`` 0.1, layer sizes
       [d]·L), output [E⁰ ‖ norm(E¹) ‖ … ‖ norm(E^L)] projected by a final
       Linear(d·(L+1) → d) applied to users and items **[choice]**.
    2. Per content modality m: C_m = F_m W_m (Eq. 1, W_m: Linear d_m → d, no bias);
       A_m = weighted kNN graph of the RAW F_m (k = ``knn_k``; built once, cached by the
       GraphStore); Ā_m = weighted kNN graph of C_m.detach(), built under no_grad
       (LATTICE); G_m = λ A_m + (1−λ) Ā_m (Eq. 3, λ = ``lambda_coeff``), then
       Ḡ_m = D^{-1/2} G_m D^{-1/2} with D the row sums of G_m; X⁰ = C_m,
       X^l = Ḡ_m X^{l−1}, v^m = X^{L_mm} (Eq. 4, L_mm = ``n_mm_layers``, last layer).
       ``graph_refresh: forward`` rebuilds Ā_m in every forward pass (the spec; ``--preset paper``);
       ``epoch`` (the default **[choice]**: 2.7× faster per epoch on amazon_scientific_mm, no metric moved
       over 3 seeds, docs/scale.md#large-data-mode) rebuilds it in :meth:`pre_epoch` and whenever
       representations are computed for evaluation, and reuses the cached graph in between. λ = 1 never
       builds Ā_m.
    3. Decoders (Eq. 8): F̂_m = v^m W̃_m (W̃_m: Linear d → d_m, no bias)
       **[choice: decode the propagated v^m; ``decode_from: compressed`` decodes C_m]**.

    Score (Eqs. 5–7), over the active modalities M (``modalities``; default: all content
    modalities, then IN): s^m_ij = u_i·v^m_j, ā^m_ij = softmax_m(s^m_ij/√d),
    r̂_ij = Σ_m ā^m_ij s^m_ij = u_i·(Σ_m ā^m_ij v^m_j). Full ranking computes one GEMM
    per modality on each (users × items) tile of :meth:`score_tile_shape`, never a
    (users, items, d) tensor. Fusion variants (docs/models/mario.md#variants, ``fusion``): ``mean`` / ``max``
    (element-wise) over the v^m, or ``fc`` = Linear(concat_m v^m → d) with bias; the
    score is then u·fused_j (one GEMM).

    Loss (paper Eqs. 9–11; docs/models/mario.md#loss): L = BPR(r̂_pos, r̂_neg) (batch mean) + μ·L_MP + λ_reg·SqReg,
    L_MP = Σ_m mean |F_m − F̂_m| over the batch's unique items (pos ∪ neg) and all
    feature elements **[choice: per-element mean, summed over modalities]**,
    SqReg = ½(‖E_u[u]‖² + ‖E_i[p]‖² + ‖E_i[n]‖²)/B on the layer-0 embeddings,
    μ = ``mu`` (0 creates no decoders), λ_reg = ``reg_weight``.

    Content scale control **[choice; the paper is silent]**: ``content_norm: l2`` (the
    default) scales every row of C_m to unit L2 norm before the learned graph and the
    propagation; ``content_gate: learned`` (the default) multiplies each content v^m by a
    learned scalar g_m = ``content_gate_speed``·θ_m in the scores only (the decoders read the
    ungated v^m), starting at ``content_gate_init`` = 0, so the model starts as its backbone.
    ``--preset paper`` (``content_norm: none, content_gate: none``) is the literal model.
    Without the norm the unregularised W_m grows under Adam until the content scores dominate
    the attention and the ranking collapses to a content-only one; with the norm but no gate
    the near-uniform attention dilutes the backbone with weak content (below LightGCN on
    amazon_scientific_mm). docs/models/mario.md#content-scale-control has the measurements
    and the rule the default was chosen by (validation Recall@20, never below the backbone).

    Initialisation: Xavier-uniform for every embedding and every Linear weight (NGCF
    layers and the fc fusion included), zero biases **[choice]**.

    ``item_representation()``: the attention-free mean of the active modality item
    embeddings (for every fusion) **[choice]**. ``explain()``: attention weights
    ā per (user, item) pair; ``uniform`` 1/M for mean fusion; ``max-share`` (fraction of
    the d dimensions each modality supplies the maximum of) for max fusion; None for fc.
    """

    name = "MARIO"
    config_name = "mario"
    description = "User-queried attention over per-modality item embeddings with modality-preserving decoders."
    min_modalities = 1

    cold_start = COLD_CONTENT
    cold_rule = "E_i row (interaction modality) at the warm-item mean; content modalities v^m from the features"

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_mean(self.item_emb.weight)]

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.dim = d
        self.parts = self._active_parts(dataset, config.modalities)
        self.content = [m for m in self.parts if m != INTERACTION]
        self.k = int(config.knn_k)
        self.lambda_coeff = float(config.lambda_coeff)
        self.mu = float(config.mu)
        self.n_mm_layers = int(config.n_mm_layers)
        self.n_layers = int(config.n_layers)
        self.fusion = config.fusion
        self.backbone = config.backbone
        self.decode_from = config.decode_from
        self.graph_refresh = config.graph_refresh
        self.content_norm = config.content_norm
        self.content_gate_kind = config.content_gate
        self.knn_block_size = int(config.knn_block_size)

        # --- backbone (CF encoder of the interaction modality)
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.adj: SparseOperator | None = None
        self.ngcf: NGCFPropagation | None = None
        self.ngcf_out: nn.Linear | None = None
        if self.backbone == "lightgcn":
            self.adj = graphs.norm_adj()
        elif self.backbone == "ngcf":
            self.adj = graphs.rw_adj()
            self.ngcf = NGCFPropagation(
                d, [d] * self.n_layers, float(config.ngcf_mess_dropout), float(config.ngcf_leaky_slope)
            )
            self.ngcf_out = nn.Linear(self.ngcf.out_dim, d)

        # --- content modalities (paper Eqs. 1–4, 8)
        self.register_feature_buffers(dataset, self.content)
        self.compress = nn.ModuleList()
        self.decoders: nn.ModuleList | None = nn.ModuleList() if self.mu != 0 else None
        for m in self.content:
            width = self.feature_buffer(m).shape[1]
            self.compress.append(nn.Linear(width, d, bias=False))
            if self.decoders is not None:
                self.decoders.append(nn.Linear(d, width, bias=False))
            if self.lambda_coeff > 0:  # A_m un-normalised (cached by the GraphStore)
                self.register_coo_buffers(
                    f"fixed_{m}", graphs.knn_matrix(m, self.k, weighted=True, normalization="none")
                )
        self.fc: nn.Linear | None = nn.Linear(len(self.parts) * d, d) if self.fusion == "fc" else None
        self.content_gate: nn.Parameter | None = None
        if self.content_gate_kind == "learned" and self.content:
            # g_m = speed · θ_m: Adam moves θ by about the learning rate per step, whatever the gradient's
            # size, so without the factor g could move only ~lr per step from its start.
            self.gate_speed = float(config.content_gate_speed)
            theta = float(config.content_gate_init) / self.gate_speed
            self.content_gate = nn.Parameter(torch.full((len(self.content),), theta))
        self._graph_cache: list[SparseOperator] | None = None  # Ḡ_m when reused (epoch refresh, or λ = 1)
        # The learned graphs follow the store's kNN method (knn_method; ann from 200,000 items): approximate
        # neighbours through FAISS HNSW, their recall against exact measured at every rebuild and summed up in
        # the run's graph notes (metrics.json).
        self._ann_neighbours = LearnedGraphNeighbours.for_store(graphs, self.k, list(self.content), self.name)
        self.to(graphs.device)
        self._reset_parameters()

    # ------------------------------------------------------------------ config helpers
    def _active_parts(self, dataset, wanted) -> list[str]:
        """Active modalities: content modalities in dataset order, then ``interaction``."""
        content = list(dataset.features)
        if INTERACTION in content:
            raise self.setting_error(
                None,
                f"dataset {dataset.name!r} has a content modality named {INTERACTION!r}, "
                f"which is reserved for the interaction (CF) modality; rename its feature file",
            )
        available = [*content, INTERACTION]
        if wanted is None:
            return available
        if isinstance(wanted, str):
            wanted = [wanted]
        if not isinstance(wanted, list | tuple) or not all(isinstance(w, str) for w in wanted):
            raise self.setting_error(
                "modalities", f"must be a list of modality names (from {', '.join(available)}); got {wanted!r}"
            )
        if len(wanted) == 0:
            raise self.setting_error(
                "modalities", f"must name at least one of {', '.join(available)}; got an empty list"
            )
        unknown = [w for w in wanted if w not in available]
        if unknown:
            raise self.setting_error(
                "modalities",
                f"names an unknown modality {unknown[0]!r}; dataset {dataset.name!r} has content "
                f"modalities {', '.join(content)} and the interaction modality is called {INTERACTION!r}",
            )
        if len(set(wanted)) != len(wanted):
            raise self.setting_error("modalities", f"lists a modality twice: {list(wanted)}")
        return [m for m in available if m in wanted]

    def gate_values(self) -> torch.Tensor:
        """The content gates g_m = speed · θ_m (``content_gate: learned``)."""
        return self.gate_speed * self.content_gate

    def used_modalities(self) -> list[str]:
        return list(self.content)

    def _reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ graphs (paper Eqs. 2–4)
    def modality_graph(
        self, i: int, compressed: torch.Tensor, neighbours: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> SparseOperator:
        """Ḡ_m of the i-th active content modality: sym-normalised λ A_m + (1−λ) Ā_m, with Ā_m the
        weighted kNN graph of C_m (no gradient). ``neighbours``: C_m's top-k (indices, similarities) when
        already found (:meth:`refresh_graphs` finds every modality's at once)."""
        lam = self.lambda_coeff
        with torch.no_grad():
            rows, cols, vals = [], [], []
            if lam > 0:
                r, c, v = self.coo_buffers(f"fixed_{self.content[i]}")
                rows.append(r)
                cols.append(c)
                vals.append(lam * v)
            if lam < 1:
                if neighbours is None:
                    neighbours = self._learned_neighbours([compressed.detach()], first=i)[0]
                r, c, v = knn_graph_coo(*neighbours, weighted=True, normalization="none")
                rows.append(r)
                cols.append(c)
                vals.append((1.0 - lam) * v)
            r, c = torch.cat(rows), torch.cat(cols)
            v = normalize_sparse_rows(r, c, torch.cat(vals), self.n_items, "sym")
            return SparseOperator.from_coo(r, c, v, (self.n_items, self.n_items))

    def _learned_neighbours(
        self, compressed: list[torch.Tensor], first: int = 0
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Top-k cosine neighbours of the rows of C_m for Ā_m, for the modalities ``first``,
        ``first + 1``, …: exact (blocked GEMM + top-k, O(I²·d)) or, under ``knn_method: ann``,
        approximate (:class:`~modalrec.ann.LearnedGraphNeighbours`: the modalities' HNSW indices built side by
        side, one thread each), whose recall is noted."""
        if self._ann_neighbours is None:
            return [knn_topk(c, self.k, block_size=self.knn_block_size, stable_ties=False) for c in compressed]
        return self._ann_neighbours(compressed, first)

    def _compressed(self) -> list[torch.Tensor]:
        """C_m = F_m W_m (Eq. 1), each row scaled to unit L2 norm when ``content_norm: l2``.

        Why the option exists: W_m is unregularised and its input F_m is raw, so under Adam
        the rows of C_m grow far beyond the interaction embeddings (norm ≈ 35 against ≈ 0.7
        on amazon_scientific_mm). The attention logits are the per-modality scores u·v^m, so
        the softmax then hands almost all the weight to content and the ranking collapses to
        a content-only one. Unit rows keep every modality's score on the scale of u's norm.
        """
        tables = [
            project_features(self.feature_buffer(m), w.weight) for m, w in zip(self.content, self.compress, strict=True)
        ]
        if self.content_norm == "l2":
            tables = [F.normalize(t, dim=1) for t in tables]
        return tables

    def refresh_graphs(self, compressed: list[torch.Tensor] | None = None) -> list[SparseOperator]:
        """Rebuild and cache every Ḡ_m from the current C_m."""
        with torch.no_grad():
            comp = compressed if compressed is not None else self._compressed()
            found = self._learned_neighbours([c.detach() for c in comp]) if self.lambda_coeff < 1 else None
            self._graph_cache = [
                self.modality_graph(i, c, None if found is None else found[i]) for i, c in enumerate(comp)
            ]
        return self._graph_cache

    def _graphs_for(self, compressed: list[torch.Tensor]) -> list[SparseOperator]:
        cache = self._graph_cache
        device = compressed[0].device if compressed else None
        stale = cache is None or any(op.a.device != device for op in cache)
        if self.lambda_coeff == 1.0:  # G_m = A_m: fixed, built once
            return self.refresh_graphs(compressed) if stale else cache  # type: ignore[return-value]
        if self.graph_refresh == "forward" or not self.training or stale:
            return self.refresh_graphs(compressed)
        return cache  # type: ignore[return-value]

    def pre_epoch(self, epoch: int) -> None:
        if self.graph_refresh == "epoch" and self.lambda_coeff < 1.0 and self.content:
            self.refresh_graphs()

    def extra_state(self) -> dict:
        """The cached Ḡ_m when training reuses them (``graph_refresh: epoch`` or λ = 1): built from earlier weights."""
        reused = self.graph_refresh == "epoch" or self.lambda_coeff == 1.0
        if not reused or self._graph_cache is None:
            return {}
        return {"graphs": [op.state() for op in self._graph_cache]}

    def load_extra_state(self, state: dict) -> None:
        if "graphs" in state:
            dev = self.device
            self._graph_cache = [SparseOperator.from_state(g, dev) for g in state["graphs"]]

    # ------------------------------------------------------------------ forward (docs/models/mario.md#forward-pass)
    def backbone_forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, v^IN) from the CF backbone."""
        e_u, e_i = self.user_emb.weight, self.item_emb.weight
        if self.backbone == "bprmf":
            return e_u, e_i
        e0 = torch.cat([e_u, e_i])
        if self.backbone == "lightgcn":
            h = propagate(self.adj, e0, self.n_layers, "mean")
        else:
            h = self.ngcf_out(self.ngcf(self.adj, e0))
        return split_nodes(h, self.n_users)

    def forward_representations(self) -> MarioRepresentations:
        users, v_in = self.backbone_forward()
        compressed = self._compressed()
        ops = self._graphs_for(compressed) if compressed else []
        tables = {
            m: propagate(op, c, self.n_mm_layers, "last")
            for m, op, c in zip(self.content, ops, compressed, strict=True)
        }
        content = [tables[m] for m in self.content]
        if self.content_gate is not None:
            gates = self.gate_values()
            for i, m in enumerate(self.content):
                tables[m] = gates[i] * tables[m]
        tables[INTERACTION] = v_in
        items = torch.stack([tables[m] for m in self.parts])
        return MarioRepresentations(users, items, self._fuse(items), compressed, content)

    def _fuse(self, items: torch.Tensor) -> torch.Tensor | None:
        """User-independent fused item table for mean/max/fc (docs/models/mario.md#variants), None for attention."""
        if self.fusion == "mean":
            return items.mean(dim=0)
        if self.fusion == "max":
            return items.amax(dim=0)
        if self.fusion == "fc":
            return self.fc(torch.cat(list(items), dim=1))
        return None

    # ------------------------------------------------------------------ scoring (paper Eqs. 5–7)
    def _pair_scores(self, reps: MarioRepresentations, u: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """r̂ for aligned rows of user vectors ``u`` and item indices (Eqs. 5–7, fast form)."""
        if reps.fused is not None:
            return (u * reps.fused[items]).sum(dim=1)
        s = (u.unsqueeze(0) * reps.items[:, items]).sum(dim=2)  # (M, n): s_m = u·v^m
        return modality_attention_scores(s, self.dim)[0]

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        """r̂ of the given users on all items: per-modality GEMMs on (users × items) tiles, then the softmax mix."""
        reps = self.representations()
        u = reps.users[users]
        if reps.fused is not None:
            return u @ reps.fused.T
        out = torch.empty(u.shape[0], self.n_items, dtype=u.dtype, device=u.device)
        with torch.no_grad():
            # the users scaled by 1/√d once per call, so each tile's GEMM gives s_m/√d directly (scaling the
            # item tables instead copied all M of them per call: 230 MB at 300k items, ~4,500 calls at 1M users)
            u = u * (1.0 / math.sqrt(self.dim))
            tables = [v.T for v in reps.items]  # (d, I) views
            rows, cols = self.score_tile_shape(self.n_items, stacked=len(tables), n_rows=u.shape[0])
            # every tile's arrays live in buffers allocated once per call (see modality_attention_scores_into)
            tile_scores = u.new_empty(len(tables), rows * cols)  # score_tile_shape caps both
            workspace = u.new_empty(4, tile_scores.shape[1])
            for lo in range(0, u.shape[0], rows):
                ub = u[lo : lo + rows]
                for c0 in range(0, self.n_items, cols):
                    target = out[lo : lo + rows, c0 : c0 + cols]
                    tile = [tile_scores[m, : target.numel()].view(target.shape) for m in range(len(tables))]
                    for v, t in zip(tables, tile, strict=True):
                        torch.matmul(ub, v[:, c0 : c0 + cols], out=t)
                    modality_attention_scores_into(tile, self.dim, target, workspace)
        return out

    def naive_pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Reference r̂ for aligned (user, item) pairs, literally: v_ij = Σ_m ā^m_ij v^m_j, r̂ = u_i·v_ij.

        Fusion variants: v_j = mean_m / max_m v^m_j or fc(concat_m v^m_j), r̂ = u_i·v_j.
        """
        reps = self.representations()
        u = reps.users[users]  # (n, d)
        v = reps.items[:, items]  # (M, n, d)
        if self.fusion == "attention":
            logits = torch.stack([(u * v[m]).sum(dim=1) / math.sqrt(self.dim) for m in range(v.shape[0])], dim=1)
            attn = torch.softmax(logits, dim=1)  # (n, M)
            v_ij = sum(attn[:, m : m + 1] * v[m] for m in range(v.shape[0]))
        elif self.fusion == "mean":
            v_ij = v.sum(dim=0) / v.shape[0]
        elif self.fusion == "max":
            v_ij = torch.max(v, dim=0).values
        else:
            v_ij = self.fc(torch.cat([v[m] for m in range(v.shape[0])], dim=1))
        return (u * v_ij).sum(dim=1)

    def compute_representations(self) -> MarioRepresentations:
        return self.forward_representations()

    # ------------------------------------------------------------------ loss (paper Eqs. 9–11)
    def loss(self, batch: Batch) -> torch.Tensor:
        reps = self.forward_representations()
        u = reps.users[batch.users]
        total = bpr_loss(self._pair_scores(reps, u, batch.pos), self._pair_scores(reps, u, batch.neg))
        if self.decoders is not None and self.content:
            total = total + self.mu * self.preservation_loss(reps, torch.unique(torch.cat([batch.pos, batch.neg])))
        reg = sq_reg(self.user_emb(batch.users), self.item_emb(batch.pos), self.item_emb(batch.neg))
        return total + float(self.config.reg_weight) * reg

    def preservation_loss(self, reps: MarioRepresentations, items: torch.Tensor) -> torch.Tensor:
        """L_MP = Σ_m mean_{j ∈ items, feature e} |F_m[j, e] − F̂_m[j, e]| (paper Eq. 8)."""
        total = reps.users.new_zeros(())
        for i, m in enumerate(self.content):
            src = reps.content[i] if self.decode_from == "propagated" else reps.compressed[i]
            total = total + decoded_l1_error(src[items], self.decoders[i].weight, self.feature_buffer(m), items)
        return total

    # ------------------------------------------------------------------ analyses
    def extra_repr(self) -> str:
        return (
            f"users={self.n_users}, items={self.n_items}, parts={self.parts}, backbone={self.backbone}, "
            f"fusion={self.fusion}"
        )

    def item_representation(self) -> torch.Tensor:
        """Attention-free mean of the active modality item embeddings **[choice]**."""
        return self.representations().items.mean(dim=0)

    def explain(self, users: torch.Tensor, items: torch.Tensor) -> Explanation | None:
        """Per-(user, item) modality weights: attention ā, uniform (mean), max-share (max); None for fc."""
        if self.fusion == "fc":
            return None
        with self.in_eval_mode(), torch.no_grad():  # dropout off: the weights ranking uses
            reps = self.representations()
            v = reps.items[:, items]  # (M, n, d)
            n_parts = v.shape[0]
            if self.fusion == "attention":
                s = (reps.users[users].unsqueeze(0) * v).sum(dim=2)
                weights = modality_attention_scores(s, self.dim)[1].T.contiguous()
                kind = "attention"
            elif self.fusion == "mean":
                weights = torch.full((items.shape[0], n_parts), 1.0 / n_parts, device=v.device, dtype=v.dtype)
                kind = "uniform"
            else:
                winner = v.argmax(dim=0)  # (n, d): which modality supplies each dimension's max
                weights = F.one_hot(winner, n_parts).to(v.dtype).mean(dim=1)
                kind = "max-share"
        return Explanation(kind=kind, parts=list(self.parts), weights=weights)
