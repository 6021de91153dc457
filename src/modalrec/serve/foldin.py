"""Fold-in: scores for a user unseen in training, from the items they interacted with.

The trained user table has no row for a new user, so the user's representation is built
from the model's **item representations** of the given history H (no gradient step, no
retraining). Which representation, and how it is scored, depends on how the model ranks:

``mean-item-vector`` (dot-product models: BPR, LightGCN, NGCF, VBPR-style models whose
    ``representations()`` is a (user table, item table) pair scored by a dot product, and
    MARIO with the mean/max/fc fusions, whose fused item table is user-independent):
    u_new = (1/|H|) Σ_{j∈H} v_j with v the item table the ranking uses, then
    r̂_j = u_new·v_j — one GEMV. This is LightGCN's first propagation step for a node
    that is linked to H (without the degree normalisation, which does not change the
    ranking of one user), and for an MF model it is the user vector that makes the
    history's mean score maximal under a norm constraint.
``mean-item-vector-attention`` (MARIO with attention fusion): u_new is the mean of the
    history's attention-free item representations (the mean over modalities of v^m),
    rescaled to the mean norm of the trained user vectors (the attention softmax
    divides u·v^m by √d, so the scale of u sets its temperature), then scored by the
    model's own Eqs. 5–7; the explanation is the attention of u_new on each item.
``user-neighbours`` (every other model, e.g. MeAIM, whose ranking is not a function of a
    single user vector): the new user's scores are the cosine-weighted mean of the score
    rows of the ``n_neighbours`` training users whose training items overlap H most
    (cosine between binary item sets), computed with the model's own ``full_scores``;
    the explanation is the same weighted mean of the neighbours' explanation weights.
    This path only needs the :class:`~modalrec.models.base.Recommender` interface, so
    it works for every registered model. When no training user shares an item with H
    (all of H are cold items), it falls back to ``item-representation``: cosine between
    the mean of the normalised ``item_representation()`` rows of H and every item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from modalrec.models.base import Explanation, Recommender
from modalrec.nn.scoring import modality_attention_scores

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class FoldInResult:
    """Scores of all items for one folded-in user, and how they were obtained."""

    scores: torch.Tensor  # (n_items,)
    method: str
    explain: Callable[[torch.Tensor], Explanation | None] | None = None
    details: dict[str, Any] = field(default_factory=dict)


def dot_tables(model: Recommender) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(user table, item table) when the model ranks by their dot product, else None.

    Reads the cached representations (the model must be in eval mode).
    """
    reps = model.representations()
    if type(model).full_scores is Recommender.full_scores:
        if isinstance(reps, tuple) and len(reps) == 2 and all(isinstance(t, torch.Tensor) for t in reps):
            return reps[0], reps[1]
        return None
    fused = getattr(reps, "fused", None)  # MARIO with mean / max / fc fusion: u · fused_j
    users = getattr(reps, "users", None)
    if getattr(model, "name", "") == "MARIO" and isinstance(fused, torch.Tensor) and isinstance(users, torch.Tensor):
        return users, fused
    return None


class FoldIn:
    """Chooses the fold-in of a model once (see the module docstring) and applies it per request."""

    def __init__(self, model: Recommender, train_matrix: sp.csr_matrix, n_neighbours: int = 50) -> None:
        self.model = model
        self.n_neighbours = n_neighbours
        self.tables = dot_tables(model)
        reps = model.representations()
        self.attention = (
            getattr(model, "name", "") == "MARIO" and getattr(reps, "fused", 0) is None and hasattr(reps, "items")
        )
        if self.tables is not None:
            self.method = "mean-item-vector"
        elif self.attention:
            self.method = "mean-item-vector-attention"
            self._user_norm = float(reps.users.norm(dim=1).mean())
        else:
            self.method = "user-neighbours"
        # R as CSC (item → users) for the neighbour search; user degrees for the cosine.
        self._r_csc = train_matrix.tocsc()
        self._user_deg = np.asarray(train_matrix.sum(axis=1)).ravel().astype(np.float64)
        self._item_norm: torch.Tensor | None = None

    # ------------------------------------------------------------------ paths
    def __call__(self, history: np.ndarray) -> FoldInResult:
        """Scores of every item for a new user whose interactions are ``history`` (unique item ids)."""
        idx = torch.as_tensor(history, dtype=torch.long)
        if self.tables is not None:
            items = self.tables[1]
            u = items[idx].mean(dim=0)
            return FoldInResult(items @ u, self.method, self._fused_explain())
        if self.attention:
            return self._attention(idx)
        return self._neighbours(history)

    def _fused_explain(self) -> Callable[[torch.Tensor], Explanation | None] | None:
        model = self.model
        if getattr(model, "name", "") != "MARIO" or getattr(model, "fusion", None) not in ("mean", "max"):
            return None
        # Uniform / max-share weights do not depend on the user: any user index gives them.
        return lambda items: model.explain(torch.zeros_like(items), items)

    def _attention(self, idx: torch.Tensor) -> FoldInResult:
        reps = self.model.representations()
        u = reps.items[:, idx].mean(dim=0).mean(dim=0)  # attention-free item representation, averaged over H
        u = u * (self._user_norm / u.norm().clamp_min(1e-12))
        per_modality = reps.items @ u  # (M, I): s^m_j = u·v^m_j
        scores, attn = modality_attention_scores(per_modality, int(self.model.dim))
        parts = list(self.model.parts)

        def explain(items: torch.Tensor) -> Explanation:
            return Explanation(kind="attention", parts=parts, weights=attn[:, items].T.contiguous())

        return FoldInResult(scores, self.method, explain)

    def _neighbours(self, history: np.ndarray) -> FoldInResult:
        overlap = np.asarray(self._r_csc[:, history].sum(axis=1)).ravel()
        candidates = np.flatnonzero(overlap > 0)
        if candidates.size == 0:
            return self._item_representation(history)
        cosine = overlap[candidates] / np.sqrt(self._user_deg[candidates] * len(history))
        order = np.argsort(-cosine, kind="stable")[: self.n_neighbours]
        users = torch.as_tensor(candidates[order], dtype=torch.long)
        weights = torch.as_tensor(cosine[order] / cosine[order].sum(), dtype=torch.float32)
        model = self.model
        scores = weights @ model.full_scores(users).float()

        def explain(items: torch.Tensor) -> Explanation | None:
            n, m = len(items), len(users)
            expl = model.explain(users.repeat_interleave(n), items.repeat(m))
            if expl is None:
                return None
            w = weights.to(expl.weights.dtype)
            mixed = (expl.weights.reshape(m, n, -1) * w[:, None, None]).sum(dim=0)
            extra = None
            nested = (expl.extra or {}).get("item_weights")
            if nested is not None:
                nested = (nested.reshape(m, n, *nested.shape[1:]) * w[:, None, None, None]).sum(dim=0)
                extra = {**expl.extra, "item_weights": nested}
            return Explanation(kind=expl.kind, parts=expl.parts, weights=mixed, extra=extra)

        return FoldInResult(scores, self.method, explain, {"neighbours": int(len(users))})

    def _item_representation(self, history: np.ndarray) -> FoldInResult:
        if self._item_norm is None:
            self._item_norm = F.normalize(self.model.item_representation().float(), dim=1)
        q = self._item_norm[torch.as_tensor(history, dtype=torch.long)].mean(dim=0)
        return FoldInResult(self._item_norm @ F.normalize(q, dim=0), "item-representation")
