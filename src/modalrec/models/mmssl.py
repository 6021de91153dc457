"""MMSSL (Wei et al., WWW 2023): multi-modal self-supervised learning — docs/models/mmssl.md."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modalrec.graphs import left_norm_bipartite_operators
from modalrec.models import register
from modalrec.models.base import COLD_CONTENT, Batch, ColdOverride, Recommender, xavier_embedding
from modalrec.nn.losses import bpr_loss, grace_info_nce, sq_reg, wgan_gradient_penalty_linear_first
from modalrec.nn.scoring import pair_scores

CRITIC_PREFIX = "critic."
GP_SCALE = 0.3  # the reference multiplies its gradient penalty by 0.3 before gp_rate


class MMSSLCritic(nn.Module):
    """WGAN critic D on n_i-vectors: two (Linear → act → BatchNorm → Dropout) blocks, Linear → 1,
    100·sigmoid. Kaiming-normal weights, zero biases. ``negative_slope`` 1.0 is the reference's
    ``LeakyReLU(True)`` (identity); the paper mode uses 0.01."""

    def __init__(self, n_items: int, drop1: float, drop2: float, negative_slope: float) -> None:
        super().__init__()
        h1, h2 = max(1, n_items // 4), max(1, n_items // 8)
        self.net = nn.Sequential(
            nn.Linear(n_items, h1),
            nn.LeakyReLU(negative_slope),
            nn.BatchNorm1d(h1),
            nn.Dropout(drop1),
            nn.Linear(h1, h2),
            nn.LeakyReLU(negative_slope),
            nn.BatchNorm1d(h2),
            nn.Dropout(drop2),
            nn.Linear(h2, 1),
        )
        for mod in self.net:
            if isinstance(mod, nn.Linear):
                nn.init.kaiming_normal_(mod.weight)
                nn.init.zeros_(mod.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.net[0](x))

    def rest(self, h: torch.Tensor) -> torch.Tensor:
        """Everything after the first (n_i → n_i/4) Linear, applied to its output ``h``."""
        return 100.0 * torch.sigmoid(self.net[1:](h)).squeeze(-1)


@register
class MMSSL(Recommender):
    """MMSSL: adversarial modality-aware structure learning + cross-modal contrastive learning.

    Forward (steps 1–7), for every content modality m (any number, dataset order):
    f_m = Drop(Φ_m(X_m)); u_m = Ĝ f_m, i_m = Ĝᵀ' u_m; ū_m = Ĝ^m E_i, ī_m = Ĝᵀ'^m E_u (modality-aware
    graphs); ū = mean_m fuse(ū_m), ī likewise; u⁰ = E_u + κ_id·norm(ū), i⁰ = E_i + κ_id·norm(ī);
    u^l = Ĝ i^{l−1}, i^l = Ĝᵀ' u^l for l = 1..len(weight_size), softmax over the embedding on the
    last layer; H_u = mean_l u^l + κ_m Σ_m norm(u_m), H_i likewise; s(u, j) = H_u[u]·H_i[j].
    Ĝ = D_u^{-1/2} R, Ĝᵀ' = D_i^{-1/2} Rᵀ (:func:`~modalrec.graphs.left_norm_bipartite_operators`).

    Training step, inside :meth:`loss` (one call per batch, steps 1–4):
    1. no-grad forward; relation matrices Y(X_u, X_i) = norm_row((X_u[u_b] X_iᵀ) ⊙ (1 − R[u_b]))
       for (H_u, H_i) and each (u_m, i_m);
    2. critic step: fake = [Y_m]_m, real = [R̃]_m with R̃ = norm_row(softmax((R[u_b] + s·g)/τ_r)
       + β·Y(H_u, H_i)), g Gumbel; L_D = −mean D(real) + mean D(fake) + gp_rate·0.3·GP;
       one step of the model's OWN critic optimiser (Adam, ``D_lr``, betas (0.5, 0.9)). Exact
       speed-ups: the repeated real block goes through the widest (n_i → n_i/4) layer once, and the
       interpolate's first-layer output is mixed from the real/fake ones (the layer is affine;
       :func:`~modalrec.nn.losses.wgan_gradient_penalty_linear_first`);
    3. the returned generator loss: BPR + regs[0]·SqReg_B(H_u[u], H_i[p], H_i[n])
       + feat_reg_decay·Σ_m(½‖i_m‖² + ½‖u_m‖²)/n_i + cl_rate·Σ_m GRACE-NCE(ū_m[u_b], H_u[u_b]; τ)
       + G_rate·(−mean D([Y_m]_m)) (relations recomputed with gradient); the shared trainer
       takes the generator step (Adam over ``model.parameters()``);
    4. modality-aware graph bookkeeping (below).

    Critic and trainer: the critic lives OUTSIDE ``model.parameters()`` (held in a plain attribute,
    not a registered submodule), so the trainer's optimiser never touches it; the model owns its
    Adam and steps it inside :meth:`loss` on detached inputs, before building the generator loss
    (the reference's D-then-G order). Its parameters are frozen (requires_grad False) while the
    generator's adversarial term is built, so the trainer's backward does not compute critic
    gradients. :meth:`state_dict`/:meth:`load_state_dict` add/restore the critic's weights under
    ``critic.*`` and ``.to()`` moves it, so checkpoints round-trip; the critic's Adam state travels in the
    resume state (:meth:`extra_state`), not in ``model.pt``. The generated modality graphs are buffers
    ``gen_users_<m>``/``gen_items_<m>`` (variable length, resized on load).

    **[REF-QUIRK]s** (``reference_quirks: true`` = the authors' code; default = the paper):
    - graphs: reference — generated top-⌊n_i·m_topk_rate⌋ items are collected on batch 0 of an
      epoch only, the graph is rebuilt before every later batch from the collection, which is then
      emptied: batch 1 uses batch 0's generated graph (empty when ⌊n_i·rate⌋ = 0, e.g. Baby) and
      from batch 2 on Ĝ^m is EMPTY (ū_m = ī_m = 0, fusion vanishes, the
      contrastive loss is the constant log(2B−1)). Paper mode **[choice]**: every batch's top-k'
      (k' = max(1, ⌊n_i·m_topk_rate⌋)) generated items are accumulated over the epoch and Ĝ^m is
      rebuilt once, after the epoch's last batch (so the evaluation after an epoch uses it).
      Both start from Ĝ^m = Ĝ.
    - fusion: reference — the broadcasting bug reduces attention to z_m = ū_m·Σ_h W_cat[h];
      paper — per head h (head dim d/H) softmax_{m'}(q_m·k_{m'}/√(d/H)) over the modality vectors
      with q = x W_q, k = x W_k, values the unprojected vectors, heads concatenated → W_cat.
    - critic activation: reference LeakyReLU slope 1.0 (identity); paper 0.01.
    - content layers: reference recomputes u_m, i_m from f_m for each of ``layers`` (= 1 layer);
      paper chains them (u^l = Ĝ i^{l−1}, i^l = Ĝᵀ' u^l, i⁰ = f_m).

    Not reproduced: the DA-MRS port's skipping of the incomplete last batch; AdamW's decoupled
    weight decay (the shared trainer's Adam uses ``weight_decay`` as an L2 term; 1e-5 as the
    DA-MRS port). Evaluation is deterministic (no dropout; the current graphs).

    Config: ``weight_size`` ([64, 64]), ``drop_rate`` (0.2), ``model_cat_rate`` (κ_m 0.55),
    ``id_cat_rate`` (κ_id 0.36), ``head_num`` (4), ``G_rate`` (1e-4), ``G_drop1``/``G_drop2``
    (0.31/0.5), ``gp_rate`` (1), ``real_data_tau`` (0.005), ``ui_pre_scale`` (100),
    ``log_log_scale`` (1e-5), ``tau`` (0.5), ``cl_rate`` (0.03), ``D_lr`` (3e-4), ``regs``
    ([1e-5, 1e-5, 1e-2], first used), ``feat_reg_decay`` (1e-5), ``m_topk_rate`` (1e-4),
    ``layers`` (1), ``reference_quirks`` (false).
    """

    name = "MMSSL"
    config_name = "mmssl"
    description = (
        "Adversarial modality-aware interaction graphs (WGAN-GP critic) with cross-modal contrastive learning."
    )
    min_modalities = 1
    cold_start = COLD_CONTENT
    cold_rule = (
        "ID part of H_i at the warm-item mean; modality part κ_m Σ_m norm(f_m(x_j)) from the item's own projected "
        "features (its two-hop smoothing over interactions is empty)"
    )

    def cold_overrides(self) -> list[ColdOverride]:
        return [self.cold_mean(self.item_emb.weight)]

    def compute_cold_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """H_i = ID part + κ_m Σ_m norm(i_m); a cold item has no interaction to smooth f_m over (i_m = 0),
        so its modality part is κ_m Σ_m norm(f_m) of its own projected features, and its ID part the
        warm items' mean ID part (h_i − modality part)."""
        with self.cold_substitution():
            out = self.forward_all()
        kappa = float(self.config.model_cat_rate)
        h_i = out["h_i"]
        content = sum(kappa * F.normalize(out["i_m"][m], dim=1) for m in self.modalities)
        id_mean = (h_i - content)[self.warm_items.to(h_i.device)].mean(dim=0)
        cold = self.cold_items.to(h_i.device)
        own = sum(kappa * F.normalize(self.proj[m](self.feature_buffer(m)[cold]), dim=1) for m in self.modalities)
        h_i = h_i.clone()
        h_i[cold] = id_mean + own
        return out["h_u"], h_i

    def __init__(self, dataset, config, graphs) -> None:
        super().__init__(dataset, config, graphs)
        d = int(config.embedding_size)
        self.dim = d
        self.reference_quirks = bool(config.reference_quirks)
        self.user_emb = xavier_embedding(self.n_users, d)
        self.item_emb = xavier_embedding(self.n_items, d)
        self.register_feature_buffers(dataset)
        self.proj = nn.ModuleDict()
        for m in self.modalities:
            lin = nn.Linear(self.feature_buffer(m).shape[1], d)
            nn.init.xavier_uniform_(lin.weight)
            self.proj[m] = lin
        h = int(config.head_num)
        if d % h:
            raise self.setting_error("head_num", f"must divide embedding_size {d} (the heads split it); got {h}")
        self.w_q = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d, d)))
        self.w_k = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d, d)))
        self.w_cat = nn.Parameter(nn.init.xavier_uniform_(torch.empty(h * d, d)))
        self.drop = nn.Dropout(float(config.drop_rate))

        users, items = dataset.split("train")
        dev = graphs.device
        u_t = torch.as_tensor(users, dtype=torch.long, device=dev)
        i_t = torch.as_tensor(items, dtype=torch.long, device=dev)
        self.g_ui, self.g_iu = left_norm_bipartite_operators(u_t, i_t, self.n_users, self.n_items)
        r = dataset.train_matrix.tocsr()
        r.sort_indices()
        self.register_buffer("r_indptr", torch.from_numpy(r.indptr.astype(np.int64)), persistent=False)
        self.register_buffer("r_indices", torch.from_numpy(r.indices.astype(np.int64)), persistent=False)
        key = torch.unique(u_t * self.n_items + i_t)
        for m in self.modalities:
            self.register_buffer(f"gen_users_{m}", key // self.n_items)
            self.register_buffer(f"gen_items_{m}", key % self.n_items)
        self._mod_graphs: dict[str, Any] | None = None
        self.n_batches = max(1, math.ceil(len(users) / int(config.train_batch_size)))
        self._batch = 0
        self._collected: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in self.modalities}

        slope = 1.0 if self.reference_quirks else 0.01
        critic = MMSSLCritic(self.n_items, float(config.G_drop1), float(config.G_drop2), slope)
        # plain attributes: NOT registered, so the trainer's optimiser never sees the critic
        object.__setattr__(self, "critic", critic)
        object.__setattr__(
            self, "critic_optimizer", torch.optim.Adam(critic.parameters(), lr=float(config.D_lr), betas=(0.5, 0.9))
        )
        critic.requires_grad_(False)
        self.to(graphs.device)

    # ------------------------------------------------------------------ critic plumbing
    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        self.critic._apply(fn)
        self._mod_graphs = None
        return self

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        out = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        keep_vars = kwargs.get("keep_vars", False)
        for k, v in self.critic.state_dict(keep_vars=keep_vars).items():
            out[prefix + CRITIC_PREFIX + k] = v
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        state = dict(state_dict)
        critic_state = {k[len(CRITIC_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(CRITIC_PREFIX)}
        if critic_state or strict:
            self.critic.load_state_dict(critic_state, strict=strict)
        for m in self.modalities:  # variable-length buffers: take the saved size
            for name in (f"gen_users_{m}", f"gen_items_{m}"):
                if name in state:
                    setattr(self, name, state[name].to(getattr(self, name).device).long().clone())
        self._mod_graphs = None
        return super().load_state_dict(state, strict=strict, assign=assign)

    # ------------------------------------------------------------------ graphs
    def _modality_graphs(self) -> dict[str, Any]:
        """{m: (Ĝ^m, Ĝᵀ'^m) or None when the generated graph is empty}."""
        if self._mod_graphs is None:
            self._mod_graphs = {}
            for m in self.modalities:
                us, its = getattr(self, f"gen_users_{m}"), getattr(self, f"gen_items_{m}")
                self._mod_graphs[m] = (
                    left_norm_bipartite_operators(us, its, self.n_users, self.n_items) if us.numel() else None
                )
        return self._mod_graphs

    def _set_generated(self, m: str, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        dev = self.device
        if parts:
            us = torch.cat([p[0] for p in parts])
            its = torch.cat([p[1] for p in parts])
            key = torch.unique(us * self.n_items + its)
            us, its = key // self.n_items, key % self.n_items
        else:
            us = its = torch.zeros(0, dtype=torch.long, device=dev)
        setattr(self, f"gen_users_{m}", us)
        setattr(self, f"gen_items_{m}", its)
        self._mod_graphs = None

    def extra_state(self) -> dict[str, Any]:
        """The critic's own Adam state and the epoch's batch counter and collected generated edges."""
        return {
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "batch": self._batch,
            "collected": {m: [(u.cpu(), i.cpu()) for u, i in parts] for m, parts in self._collected.items()},
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self._batch = int(state["batch"])
        dev = self.device
        self._collected = {m: [(u.to(dev), i.to(dev)) for u, i in parts] for m, parts in state["collected"].items()}

    def pre_epoch(self, epoch: int) -> None:
        self._batch = 0
        if not self.reference_quirks:
            self._collected = {m: [] for m in self.modalities}

    # ------------------------------------------------------------------ forward
    def _fuse(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """mean_m of the cross-modal "self-attention" outputs z_m (see the fusion [REF-QUIRK])."""
        d, h = self.dim, int(self.config.head_num)
        x = torch.stack(xs, dim=1)  # (n, M, d)
        if self.reference_quirks:
            z = x @ self.w_cat.view(h, d, d).sum(0)
        else:
            n, mm, dh = x.shape[0], x.shape[1], d // h
            q = (x @ self.w_q).view(n, mm, h, dh).transpose(1, 2)
            k = (x @ self.w_k).view(n, mm, h, dh).transpose(1, 2)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # (n, H, M, M)
            out = att @ x.unsqueeze(1)  # (n, H, M, d)
            z = out.permute(0, 2, 1, 3).reshape(n, mm, h * d) @ self.w_cat
        return z.mean(dim=1)

    def forward_all(self) -> dict[str, Any]:
        cfg = self.config
        e_u, e_i = self.user_emb.weight, self.item_emb.weight
        u_m, i_m = {}, {}
        for m in self.modalities:
            f = self.drop(self.proj[m](self.feature_buffer(m)))
            n_layers = 1 if self.reference_quirks else max(1, int(cfg.layers))
            i_cur = f
            for _ in range(n_layers):
                u_cur = self.g_ui @ i_cur
                i_cur = self.g_iu @ u_cur
            u_m[m], i_m[m] = u_cur, i_cur
        graphs = self._modality_graphs()
        ubar_m: dict[str, torch.Tensor] = {}
        ibar_m: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            g = graphs[m]
            if g is None:
                ubar_m[m], ibar_m[m] = e_u.new_zeros(e_u.shape), e_i.new_zeros(e_i.shape)
            else:
                ubar_m[m], ibar_m[m] = g[0] @ e_i, g[1] @ e_u
        if all(graphs[m] is None for m in self.modalities):
            u0, i0 = e_u, e_i  # norm(0) = 0: the fusion term vanishes
        else:
            u0 = e_u + cfg.id_cat_rate * F.normalize(self._fuse([ubar_m[m] for m in self.modalities]), dim=1)
            i0 = e_i + cfg.id_cat_rate * F.normalize(self._fuse([ibar_m[m] for m in self.modalities]), dim=1)
        us, its = [u0], [i0]
        u, i = u0, i0
        n_ui = len(cfg.weight_size)
        for layer in range(n_ui):
            u = self.g_ui @ i
            last = layer == n_ui - 1
            if last:
                u = torch.softmax(u, dim=1)
            i = self.g_iu @ u
            if last:
                i = torch.softmax(i, dim=1)
            us.append(u)
            its.append(i)
        h_u = torch.stack(us).mean(0)
        h_i = torch.stack(its).mean(0)
        for m in self.modalities:
            h_u = h_u + cfg.model_cat_rate * F.normalize(u_m[m], dim=1)
            h_i = h_i + cfg.model_cat_rate * F.normalize(i_m[m], dim=1)
        return {"h_u": h_u, "h_i": h_i, "u_m": u_m, "i_m": i_m, "ubar_m": ubar_m}

    def compute_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.forward_all()
        return out["h_u"], out["h_i"]

    # ------------------------------------------------------------------ training step
    def _observed(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) positions of the batch users' training items (sparse row gather of R)."""
        starts, ends = self.r_indptr[users], self.r_indptr[users + 1]
        counts = ends - starts
        rows = torch.repeat_interleave(torch.arange(users.shape[0], device=users.device), counts)
        offsets = torch.arange(int(counts.sum()), device=users.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        return rows, self.r_indices[torch.repeat_interleave(starts, counts) + offsets]

    @staticmethod
    def relation(x_u: torch.Tensor, x_i: torch.Tensor, observed: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Y = norm_row((x_u x_iᵀ) ⊙ (1 − R_b)) for a block of users x_u."""
        s = x_u @ x_i.T
        mask = torch.ones_like(s, dtype=torch.bool)
        mask[observed] = False
        return F.normalize(s * mask, dim=1)

    def _critic_step(self, fwd: dict[str, Any], users: torch.Tensor, observed) -> dict[str, torch.Tensor]:
        cfg = self.config
        with torch.no_grad():
            y_ui = self.relation(fwd["h_u"][users], fwd["h_i"], observed)
            y_m = {m: self.relation(fwd["u_m"][m][users], fwd["i_m"][m], observed) for m in self.modalities}
            r_b = torch.zeros_like(y_ui)
            r_b[observed] = 1.0
            u = torch.rand_like(r_b).clamp_min(1e-20)
            gumbel = -torch.log((-torch.log(u)).clamp_min(1e-20))
            real = torch.softmax((r_b + cfg.log_log_scale * gumbel) / cfg.real_data_tau, dim=1)
            real = F.normalize(real + cfg.ui_pre_scale * y_ui, dim=1)
            fake = torch.cat([y_m[m] for m in self.modalities])
        critic = self.critic
        critic.train()
        critic.requires_grad_(True)
        self.critic_optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            # the real block repeats per modality: its (widest) first layer runs once; the
            # interpolate's first layer is mixed from the two (exact: the layer is affine)
            first = critic.net[0]
            h_real = first(real).repeat(len(self.modalities), 1)
            h_fake = first(fake)
            gp = wgan_gradient_penalty_linear_first(critic.rest, first.weight, h_real, h_fake)
            loss_d = -critic.rest(h_real).mean() + critic.rest(h_fake).mean() + cfg.gp_rate * GP_SCALE * gp
            loss_d.backward()
        self.critic_optimizer.step()
        critic.requires_grad_(False)
        self.last_critic_loss = float(loss_d.detach())
        return y_m

    def _update_graphs(self, users: torch.Tensor, y_m: dict[str, torch.Tensor]) -> None:
        rate_k = int(math.floor(self.n_items * float(self.config.m_topk_rate)))
        if self.reference_quirks:
            # the reference collects on batch 0 and rebuilds before every later batch from the
            # collection, which it then empties: batch 1 sees batch 0's top-k, batch 2 on nothing
            for m in self.modalities:
                parts = []
                if self._batch == 0 and rate_k > 0:
                    idx = torch.topk(y_m[m], rate_k, dim=1).indices
                    parts.append((users.repeat_interleave(rate_k), idx.reshape(-1)))
                self._set_generated(m, parts)
            return
        k = max(1, rate_k)
        for m in self.modalities:
            idx = torch.topk(y_m[m], min(k, self.n_items), dim=1).indices
            self._collected[m].append((users.repeat_interleave(idx.shape[1]), idx.reshape(-1)))
        if self._batch >= self.n_batches - 1:
            for m in self.modalities:
                self._set_generated(m, self._collected[m])
            self._collected = {m: [] for m in self.modalities}

    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        users = batch.users
        observed = self._observed(users)
        with torch.no_grad():
            fwd0 = self.forward_all()
        y_m0 = self._critic_step(fwd0, users, observed)

        fwd = self.forward_all()
        h_u, h_i = fwd["h_u"], fwd["h_i"]
        u, p, n = h_u[users], h_i[batch.pos], h_i[batch.neg]
        loss = bpr_loss(pair_scores(u, p), pair_scores(u, n)) + cfg.regs[0] * sq_reg(u, p, n)
        feat = sum(0.5 * fwd["i_m"][m].pow(2).sum() + 0.5 * fwd["u_m"][m].pow(2).sum() for m in self.modalities)
        loss = loss + cfg.feat_reg_decay * feat / self.n_items
        if cfg.cl_rate > 0:
            cl = sum(grace_info_nce(fwd["ubar_m"][m][users], u, cfg.tau) for m in self.modalities)
            loss = loss + cfg.cl_rate * cl
        if cfg.G_rate > 0:
            fake = torch.cat([self.relation(fwd["u_m"][m][users], fwd["i_m"][m], observed) for m in self.modalities])
            loss = loss + cfg.G_rate * (-self.critic(fake).mean())
        self._update_graphs(users, y_m0)
        self._batch += 1
        return loss
