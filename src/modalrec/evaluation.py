"""The one evaluator: blocked full ranking, masking, metrics, per-user results.

Every user with at least one interaction in the evaluated split is ranked against all
items; the user's training items are masked (and, optionally, valid items at test).
Metrics follow docs/protocol.md#metrics and are averaged over users; the per-user vectors are
kept for significance tests. Everything per block is tensor code — no per-user loops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from modalrec.allocator import release_freed_memory
from modalrec.data.dataset import SPLIT_NAMES, TEST, TRAIN, VALID
from modalrec.errors import ConfigError
from modalrec.models.base import ranking_mode

if TYPE_CHECKING:
    from modalrec.data.dataset import Dataset
    from modalrec.models.base import Recommender

METRICS = ("recall", "ndcg", "precision", "map", "hit")
# A ranking block holds block × I float32 scores; past 2^26 of them (256 MiB) the block takes fewer users, so the
# ranking's memory stays bounded however large the catalogue (the default 4,096 users shrink from 16,385 items).
# Why not larger: with training's allocator setting (freed memory kept in the heap, no mmap) a block's freed
# memory is a hole that the next block's small allocations (the model's gathered user rows, the top-k) may be
# carved from; the next block then lands above it and the heap grows by a block. With 1 GiB blocks LightGCN's
# row at 311k users × 113k items peaked at 5.8-6.1 GB in 3 of 4 runs by hand (3.15 GB in the fourth, the score
# block's address cycling over 4 places); with 256 MiB blocks at 3.1-3.2 GB, training's own peak, in 2 of 2
# by hand and in the record (docs/scale.md#memory-past-a-million-interactions).
MAX_BLOCK_SCORES = 1 << 26
# From this many scores per block (128 MiB) an evaluation hands the heap's free pages back before and after it
# (allocator.release_freed_memory): below it, what training keeps for reuse is small and re-faulting it costs more.
RELEASE_FROM_BLOCK_SCORES = 1 << 25
# Which items compete: warm = the usual protocol (every item; the dataset declares no cold item),
# cold = only the split's cold items, all = every item, cold and warm (docs/protocol.md#cold-items).
EVAL_MODES = ("warm", "cold", "all")


def resolve_eval_mode(dataset: Dataset, mode: str | None) -> str:
    """The evaluation mode to use: ``mode`` checked against the dataset; None = cold on a cold-items
    split, else warm. Raises :class:`ConfigError` for a mode the dataset cannot support."""
    if mode is None:
        return "cold" if dataset.has_cold_items else "warm"
    if mode not in EVAL_MODES:
        raise ConfigError(f"eval mode {mode!r}: choose from {', '.join(EVAL_MODES)}")
    if mode == "cold" and not dataset.has_cold_items:
        raise ConfigError(
            f"eval mode cold: dataset {dataset.name!r} declares no cold items "
            "(make a split with: modalrec data split DIR --protocol cold-items --out NEW)"
        )
    if mode == "warm" and dataset.has_cold_items:
        raise ConfigError(
            f"eval mode warm: dataset {dataset.name!r} is a cold-items split (its valid/test hold only cold "
            "items); use cold (cold items only) or all (cold items compete with warm ones)"
        )
    return mode


@dataclass
class EvalResult:
    """Mean metrics, per-user metric vectors (aligned with ``users``) and the time taken."""

    split: str
    metrics: dict[str, float]
    per_user: dict[str, np.ndarray] = field(repr=False)
    users: np.ndarray = field(repr=False)
    seconds: float = 0.0
    mode: str = "warm"

    def rounded(self, digits: int = 4) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.metrics.items()}


def _csr_rows(m: sp.csr_matrix, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(m.indptr.astype(np.int64)).to(device), torch.from_numpy(m.indices.astype(np.int64)).to(
        device
    )


def block_coo(indptr: torch.Tensor, indices: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row-in-block, column) pairs of CSR rows start..stop-1 without a Python loop."""
    lo, hi = int(indptr[start]), int(indptr[stop])
    counts = indptr[start + 1 : stop + 1] - indptr[start:stop]
    rows = torch.repeat_interleave(torch.arange(stop - start, device=indptr.device), counts)
    return rows, indices[lo:hi]


def ranking_metrics(
    hits: torch.Tensor, n_targets: torch.Tensor, ks: list[int], metrics: tuple[str, ...] = METRICS
) -> dict[str, torch.Tensor]:
    """Per-user metrics from a (users × K_max) 0/1 hit matrix (rank order) and |T_u|.

    Recall@K = hits/|T|; Precision@K = hits/K; NDCG@K = DCG/IDCG with binary gain and
    IDCG over min(|T|, K) ideal positions; MAP@K = (1/min(|T|,K)) Σ_{r≤K} hit_r·P@r;
    Hit@K = 1 if any hit.
    """
    hits = hits.float()
    k_max = hits.shape[1]
    ranks = torch.arange(1, k_max + 1, device=hits.device, dtype=torch.float32)
    discount = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = hits.cumsum(dim=1)
    dcg = (hits * discount).cumsum(dim=1)
    ideal = discount.cumsum(dim=0)
    ap_terms = (hits * cum_hits / ranks).cumsum(dim=1)
    n_t = n_targets.float()
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        h = cum_hits[:, k - 1]
        n_rel = torch.clamp(n_t, max=k)
        if "recall" in metrics:
            out[f"recall@{k}"] = h / n_t
        if "precision" in metrics:
            out[f"precision@{k}"] = h / k
        if "ndcg" in metrics:
            out[f"ndcg@{k}"] = dcg[:, k - 1] / ideal[(n_rel - 1).long()]
        if "map" in metrics:
            out[f"map@{k}"] = ap_terms[:, k - 1] / n_rel
        if "hit" in metrics:
            out[f"hit@{k}"] = (h > 0).float()
    return out


class Evaluator:
    """Full-ranking evaluation of one split of a dataset.

    ``mask_valid``: at test time also mask the users' valid items (MMRec leaves them
    rankable; that is the default). ``block_size`` users are ranked per GEMM block, fewer where a block's
    scores would pass :data:`MAX_BLOCK_SCORES` (only catalogues above 16,384 items at the default 4,096).
    ``user_sample`` > 0 ranks only that many of the split's users, drawn once without replacement by
    ``numpy.random.default_rng(sample_seed)`` (``n_eligible_users`` counts them all); 0 ranks every user.
    ``mode`` (:data:`EVAL_MODES`, None = :func:`resolve_eval_mode`'s default): with ``cold``
    only the split's cold items are ranked (every other item is masked, targets on other
    items are dropped, users left without a target are not evaluated); ``all`` and ``warm``
    rank every item. Scores come from the model's ``ranking_scores`` (an ID-only model's
    cold items at random).
    """

    def __init__(
        self,
        dataset: Dataset,
        split: str = "valid",
        ks: list[int] | tuple[int, ...] = (10, 20),
        metrics: tuple[str, ...] | list[str] = METRICS,
        mask_valid: bool = False,
        block_size: int = 4096,
        device: str | torch.device = "cpu",
        mode: str | None = None,
        user_sample: int = 0,
        sample_seed: int = 0,
    ) -> None:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r} (choose from {', '.join(METRICS)})")
        self.split = split
        self.ks = sorted(int(k) for k in ks)
        self.metrics = tuple(metrics)
        self.block_size = max(1, min(int(block_size), MAX_BLOCK_SCORES // max(1, dataset.n_items)))
        self.device = torch.device(device)
        label = SPLIT_NAMES[split]
        self.mode = resolve_eval_mode(dataset, mode)
        target = dataset.split_matrix(label)
        self._candidates: torch.Tensor | None = None
        if self.mode == "cold":
            candidates = np.zeros(dataset.n_items, dtype=bool)
            candidates[dataset.cold_items_of(label)] = True
            target = (target @ sp.diags(candidates.astype(np.float32))).tocsr()
            target.eliminate_zeros()
            self._candidates = torch.from_numpy(np.flatnonzero(candidates)).to(self.device)
        mask = dataset.split_matrix(TRAIN)
        if mask_valid and label == TEST:
            mask = mask + dataset.split_matrix(VALID)
            mask.data[:] = 1.0
        counts = np.diff(target.indptr)
        self.users = np.flatnonzero(counts > 0)
        self.n_eligible_users = int(self.users.size)
        if user_sample < 0:
            raise ConfigError(f"valid_user_sample = {user_sample}: must be ≥ 0 (0 = every user)")
        if 0 < user_sample < self.users.size:  # a fixed, seeded subset, in user order
            pick = np.random.default_rng(sample_seed).choice(self.users.size, size=user_sample, replace=False)
            self.users = self.users[np.sort(pick)]
        target = target[self.users]
        mask = mask[self.users].tocsr()
        mask.sort_indices()
        self.n_items = dataset.n_items
        # the metric names in ranking_metrics' order (a worker whose shard holds no block still reports them all)
        empty = torch.zeros(0, max(self.ks), dtype=torch.bool)
        self.metric_names = list(ranking_metrics(empty, torch.zeros(0), self.ks, self.metrics))
        self._users_t = torch.from_numpy(self.users).to(self.device)
        self._n_targets = torch.from_numpy(counts[self.users]).to(self.device)
        self._target = _csr_rows(target, self.device)
        self._mask = _csr_rows(mask, self.device)

    def _block_scores(self, model: Recommender, users: torch.Tensor) -> torch.Tensor:
        """(block, n_items) scores; in ``cold`` mode only the candidate columns are scored
        (``candidate_scores``, which a per-pair model makes cheap) and every other item is −inf."""
        if self._candidates is None:
            return model.ranking_scores(users).float()
        cand = model.candidate_scores(users, self._candidates).float()
        scores = torch.full((len(users), self.n_items), -torch.inf, device=cand.device)
        scores[:, self._candidates] = cand
        return scores

    def block_starts(self) -> list[int]:
        """First user index (into :attr:`users`) of every ranking block, in order."""
        return list(range(0, len(self.users), self.block_size))

    def shard_blocks(self, rank: int, world: int) -> list[int]:
        """The contiguous run of :meth:`block_starts` worker ``rank`` of ``world`` ranks: every user is scored in
        the very block a single process scores it in, so per-user results are identical, and concatenating the
        workers' results in rank order gives the single-process per-user vectors."""
        starts = self.block_starts()
        per = -(-len(starts) // world)
        return starts[rank * per : (rank + 1) * per]

    @torch.no_grad()
    def evaluate(self, model: Recommender, blocks: list[int] | None = None) -> EvalResult:
        """Rank every user (or only the users of ``blocks``, starts from :meth:`shard_blocks`) and score them."""
        start = time.perf_counter()
        with ranking_mode(model):
            per_user, users = self._rank(model, blocks)
        return result_from_per_user(self.split, per_user, users, time.perf_counter() - start, self.mode)

    def _rank(self, model: Recommender, blocks: list[int] | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per-user metric vectors and their users: every block of :meth:`block_starts`, or those of ``blocks``."""
        large = self.block_size * self.n_items >= RELEASE_FROM_BLOCK_SCORES
        if large:  # what training freed would otherwise stay resident under this pass's score blocks
            release_freed_memory()
        k_max = max(self.ks)
        chunks: dict[str, list[torch.Tensor]] = {}
        n = len(self.users)
        starts = self.block_starts() if blocks is None else blocks
        for lo in starts:
            hi = min(n, lo + self.block_size)
            scores = self._block_scores(model, self._users_t[lo:hi])
            rows, cols = block_coo(*self._mask, lo, hi)
            scores[rows, cols] = -torch.inf
            top = torch.topk(scores, min(k_max, self.n_items), dim=1).indices
            del scores  # else it stays alive while the next block's scores are computed: two blocks at once
            if top.shape[1] < k_max:  # fewer items than K: pad with a never-relevant id
                top = torch.cat([top, torch.full((hi - lo, k_max - top.shape[1]), -1, device=top.device)], dim=1)
            t_rows, t_cols = block_coo(*self._target, lo, hi)
            target_keys = t_rows * (self.n_items + 1) + t_cols
            top_keys = torch.arange(hi - lo, device=top.device)[:, None] * (self.n_items + 1) + top
            hits = torch.isin(top_keys, target_keys)
            for name, vals in ranking_metrics(hits, self._n_targets[lo:hi], self.ks, self.metrics).items():
                chunks.setdefault(name, []).append(vals.cpu())
        users = (
            self.users
            if blocks is None
            else np.concatenate([self.users[lo : lo + self.block_size] for lo in starts] or [self.users[:0]])
        )
        per_user = {
            name: torch.cat(chunks[name]).numpy() if name in chunks else np.zeros(0, np.float32)
            for name in self.metric_names
        }
        if large:
            release_freed_memory()
        return per_user, users


def result_from_per_user(
    split: str, per_user: dict[str, np.ndarray], users: np.ndarray, seconds: float, mode: str
) -> EvalResult:
    """An :class:`EvalResult` whose means are the per-user vectors' (the one place a mean over users is taken)."""
    means = {name: float(v.mean()) if v.size else 0.0 for name, v in per_user.items()}
    return EvalResult(split, means, per_user, users, seconds, mode)


def top_k_items(
    model: Recommender,
    users: torch.Tensor,
    k: int,
    exclude: sp.csr_matrix | None = None,
    exclude_items: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (items, scores) for each user, excluding the items in ``exclude`` rows (e.g. R) and,
    for every user, ``exclude_items`` (excluded items can only fill a list longer than the rest, at −inf)."""
    with ranking_mode(model), torch.no_grad():
        scores = model.ranking_scores(users).float()
        if exclude is not None:
            sub = exclude[users.cpu().numpy()].tocsr()
            indptr, indices = _csr_rows(sub, scores.device)
            rows, cols = block_coo(indptr, indices, 0, len(users))
            scores[rows, cols] = -torch.inf
        if exclude_items is not None:
            scores[:, exclude_items.to(scores.device)] = -torch.inf
        vals, idx = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    return idx, vals
