"""LGMRec (Guo et al., AAAI 2024): local and global graph learning — docs/models/lgmrec.md."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from modalrec.graphs import SparseOperator
from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Recommender, xavier_embedding
from modalrec.nn.losses import bpr_loss, emb_loss, info_nce_sampled
from modalrec.nn.propagation import gumbel_softmax_memberships, hypergraph_propagate, propagate, split_nodes
from modalrec.nn.scoring import pair_scores

EVAL_NOISE_SEED = 2024  # reproduction mode: the evaluation Gumbel noise is drawn from this seed


@register
class LGMRec(Recommender):
    """LGMRec: local (CGE + MGE) plus global (Gumbel-softmax hypergraph) embeddings.

    Forward (docs/models/lgmrec.md#forward-pass step numbers), for each content modality m (any number, dataset order):

    1. Λ_i^m = X_m Θ_m (n_i × A), Λ_u^m = R Λ_i^m (raw, un-normalised R);
       H_i^m = GumbelSoftmax_τ(Λ_i^m), H_u^m = GumbelSoftmax_τ(Λ_u^m), τ = ``tau`` (0.2).
    2. CGE: [C_u; C_i] = LGC(E⁰; A_sym, L_ui) (mean of layers 0..L_ui).
    3. MGE: F_i = X_m W_m, F_u = diag(1/deg_u) R F_i, M^m = A_sym^{L_mm} [F_u; F_i] (last layer).
    4. Lo = [C_u; C_i] + Σ_m norm(M^m).
    5. GHE with membership dropout (p = 1 − ``keep_rate``, training only):
       Λ = H_iᵀ Y^{l−1}, Y^l = H_i Λ, G_u^m = H_u Λ, Y⁰ = C_i, G_i^m = Y^{L_h};
       Gl = [Σ_m G_u^m; Σ_m G_i^m].
    6. O = Lo + α · norm(Gl); s(u, j) = O_u · O_j.

    Loss: BPR(O) + λ_cl·L_hcl + λ_reg·EmbLoss(O_u[u], O_i[p], O_i[n]). L_hcl is the full-candidate
    InfoNCE (cosine, τ), SUMMED over the batch, for users (G_u^a[u_b] vs all of G_u^b) and for
    positive items (G_i^a[p_b] vs all of G_i^b). **[choice]** With M modalities it is summed over
    the ordered pairs (a, b), a before b in dataset order (v→t for two modalities, as the paper);
    with one modality it is 0.

    Config: ``n_ui_layers`` (L_ui 2), ``n_mm_layers`` (L_mm 2), ``n_hyper_layer`` (L_h 1),
    ``hyper_num`` (A 4), ``keep_rate`` (0.5), ``alpha`` (0.3), ``cl_weight`` (1e-4),
    ``reg_weight`` (1e-6), ``tau`` (0.2), ``reference_quirks`` (false). Per-dataset presets are the
    authors' logged best runs (Sports: the log's L_ui 2, L_h 4).

    **[REF-QUIRK]** Evaluation: the reference draws fresh Gumbel noise when scoring, so its
    rankings are stochastic. Default (paper/clean mode): the noise-free tempered softmax
    softmax(Λ/τ) at evaluation. ``reference_quirks: true``: Gumbel noise is drawn at evaluation
    too, from a generator seeded with a fixed seed each time, so it is reproducible. Training
    draws fresh noise every forward in both modes.
    """

    name = "LGMRec"
    config_name = "lgmrec"
    description = "Local (user-item graph) and global (learned Gumbel-softmax hypergraph) multimodal graph learning."
    min_modalities = 1

    cold_start = COLD_CONTENT
    cold_rule = "E_i row at the warm-item mean; content enters through the feature-built hypergraph memberships"

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_mean(self.item_emb.weight)]

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        a = int(config.hyper_num)
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.adj = graphs.norm_adj()
        r = sp.csr_matrix(dataset.train_matrix, dtype=np.float32)
        r.data[:] = 1.0
        self.r = SparseOperator(r, graphs.device, symmetric=False)
        deg = np.asarray(r.sum(axis=1)).ravel()
        self.register_buffer(
            "inv_deg_u", torch.from_numpy(np.where(deg > 0, 1.0 / np.maximum(deg, 1), 0.0)).float(), persistent=False
        )
        self.register_feature_buffers(dataset)
        self.proj = nn.ParameterDict()
        self.hyper = nn.ParameterDict()
        for m in self.modalities:
            width = self.feature_buffer(m).shape[1]
            self.proj[m] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(width, d)))
            self.hyper[m] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(width, a)))
        self.drop = nn.Dropout(1.0 - float(config.keep_rate))
        self.to(graphs.device)

    def forward_all(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """(O_u, O_i, {m: (G_u^m, G_i^m)})."""
        cfg = self.config
        n_u = self.n_users
        noise = self.training or cfg.reference_quirks
        gen = None
        if not self.training and cfg.reference_quirks:
            gen = torch.Generator(device=self.inv_deg_u.device).manual_seed(EVAL_NOISE_SEED)
        e0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        cge = propagate(self.adj, e0, int(cfg.n_ui_layers), "mean")
        c_i = cge[n_u:]
        local = cge
        g_u_sum = torch.zeros(n_u, e0.shape[1], device=e0.device)
        g_i_sum = torch.zeros(self.n_items, e0.shape[1], device=e0.device)
        global_parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in self.modalities:
            x = self.feature_buffer(m)
            # one pass over the (wide) raw features for both projections
            xw = x @ torch.cat([self.proj[m], self.hyper[m]], dim=1)
            f_i, lam_i = xw[:, : self.proj[m].shape[1]], xw[:, self.proj[m].shape[1] :]
            # local: modality graph embedding (last layer only)
            f_u = (self.r @ f_i) * self.inv_deg_u.unsqueeze(1)
            mge = propagate(self.adj, torch.cat([f_u, f_i]), int(cfg.n_mm_layers), "last")
            local = local + F.normalize(mge, dim=1)
            # global: hypergraph memberships from features
            lam_u = self.r @ lam_i
            h_i = gumbel_softmax_memberships(lam_i, cfg.tau, noise, gen)
            h_u = gumbel_softmax_memberships(lam_u, cfg.tau, noise, gen)
            g_u, g_i = hypergraph_propagate(self.drop(h_i), self.drop(h_u), c_i, int(cfg.n_hyper_layer))
            global_parts[m] = (g_u, g_i)
            g_u_sum = g_u_sum + g_u
            g_i_sum = g_i_sum + g_i
        out = local + cfg.alpha * F.normalize(torch.cat([g_u_sum, g_i_sum]), dim=1)
        o_u, o_i = split_nodes(out, n_u)
        return o_u, o_i, global_parts

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        o_u, o_i, _ = self.forward_all()
        return o_u, o_i

    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        o_u, o_i, parts = self.forward_all()
        u, p, n = o_u[batch.users], o_i[batch.pos], o_i[batch.neg]
        loss = bpr_loss(pair_scores(u, p), pair_scores(u, n))
        if cfg.cl_weight > 0 and len(self.modalities) > 1:
            b = batch.users.shape[0]
            n_cand, own = int(cfg.cl_candidates), str(cfg.cl_positives)
            hcl = torch.zeros((), device=o_u.device)
            for i, ma in enumerate(self.modalities):
                for mb in self.modalities[i + 1 :]:
                    (ga_u, ga_i), (gb_u, gb_i) = parts[ma], parts[mb]
                    # info_nce_sampled is a mean; the reference sums over the batch. cl_candidates 0 (the
                    # default) is the full tables of the paper; N > 0, the large-data mode's sampled rows
                    hcl = hcl + b * info_nce_sampled(
                        ga_u[batch.users], gb_u, batch.users, n_cand, cfg.tau, positives=own
                    )
                    hcl = hcl + b * info_nce_sampled(ga_i[batch.pos], gb_i, batch.pos, n_cand, cfg.tau, positives=own)
            loss = loss + cfg.cl_weight * hcl
        return loss + cfg.reg_weight * emb_loss(u, p, n)
