"""The built-in synthetic default dataset: interactions and features with planted structure.

This data is SYNTHETIC. Items have latent factors spread over many small topics (400 by
default, so the co-interaction graph alone recovers them only roughly); each content
modality is a noisy random projection of those factors plus a modality-specific part;
users prefer one or two topics; item popularity is skewed. Because the features carry
the latent factors that drive interactions while each item has only a few training
interactions, content-aware models can beat ID-only models on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modalrec.data.dataset import Dataset, write_dataset
from modalrec.data.split import split_mmrec

DEFAULT_MODALITIES = {"image": 256, "text": 128}

# Shapes of the public benchmark datasets (docs/protocol.md#datasets-and-features), for benchmarks.
SHAPES = {
    "default": {"n_users": 1500, "n_items": 2000, "modalities": DEFAULT_MODALITIES, "mean_interactions": 14.0},
    "baby": {"n_users": 19445, "n_items": 7050, "modalities": {"image": 4096, "text": 384}, "mean_interactions": 8.27},
    "sports": {
        "n_users": 35598,
        "n_items": 18357,
        "modalities": {"image": 4096, "text": 384},
        "mean_interactions": 8.32,
    },
    "clothing": {
        "n_users": 39387,
        "n_items": 23033,
        "modalities": {"image": 4096, "text": 384},
        "mean_interactions": 7.08,
    },
}


def generate_synthetic(
    n_users: int = 1500,
    n_items: int = 2000,
    modalities: dict[str, int] | None = None,
    seed: int = 2024,
    latent_dim: int = 16,
    n_topics: int = 400,
    mean_interactions: float = 14.0,
    min_interactions: int = 5,
    popularity_exponent: float = 0.3,
    sharpness: float = 10.0,
    user_block: int = 2048,
    exact_limit: float = 4e9,
) -> dict:
    """Generate a deterministic synthetic dataset (arrays only; see :func:`write_synthetic_dataset`).

    Interaction probability of user u on item j ∝ exp(β z_u·z_j + b_j) (β = ``sharpness``) with item bias
    b_j from a Zipf-like popularity; each user's items are drawn without replacement by
    the Gumbel-top-k trick, in user blocks so memory stays O(block × items). That costs
    O(users × items); above ``exact_limit`` user–item pairs (a catalogue well beyond the public
    datasets) each user draws instead from a candidate pool — items of the user's preferred topics
    and popularity-weighted items (:func:`_candidate_pools`) — so the cost is O(users × pool).
    """
    modalities = dict(DEFAULT_MODALITIES if modalities is None else modalities)
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_topics, latent_dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    topic = rng.integers(0, n_topics, size=n_items)
    z_items = centers[topic] + 0.45 * rng.normal(size=(n_items, latent_dim)) / np.sqrt(latent_dim)
    z_items /= np.linalg.norm(z_items, axis=1, keepdims=True)

    pop_rank = rng.permutation(n_items)
    item_bias = -popularity_exponent * np.log1p(pop_rank)

    n_pref = rng.integers(1, 3, size=n_users)
    pref_a = rng.integers(0, n_topics, size=n_users)
    pref_b = rng.integers(0, n_topics, size=n_users)
    z_users = centers[pref_a] + np.where(n_pref[:, None] == 2, centers[pref_b], 0.0)
    z_users += 0.3 * rng.normal(size=(n_users, latent_dim)) / np.sqrt(latent_dim)
    z_users /= np.linalg.norm(z_users, axis=1, keepdims=True)

    extra = rng.geometric(1.0 / max(1.0, mean_interactions - min_interactions + 1), size=n_users) - 1
    counts = np.minimum(min_interactions + extra, max(min_interactions, n_items // 4))
    users_out, items_out = [], []
    # Rows per block so that one block of logits stays near 1 GB whatever the catalogue size; the Gumbel
    # draws are consumed row after row, so the data do not depend on the block size.
    exact = float(n_users) * n_items <= exact_limit
    pool = None if exact else _CandidatePools(topic, item_bias, n_topics, int(counts.max()))
    width = n_items if exact else pool.size
    user_block = max(1, min(user_block, (1 << 27) // max(1, width)))
    for start in range(0, n_users, user_block):
        stop = min(n_users, start + user_block)
        if exact:
            logits = sharpness * z_users[start:stop] @ z_items.T + item_bias
            logits += rng.gumbel(size=logits.shape)
            order = _top_items(logits, int(counts[start:stop].max()))
        else:
            cand = pool.draw(rng, pref_a[start:stop], np.where(n_pref[start:stop] == 2, pref_b[start:stop], -1))
            logits = sharpness * np.einsum("bd,bpd->bp", z_users[start:stop], z_items[cand]) + item_bias[cand]
            logits += rng.gumbel(size=logits.shape)
            logits[:, 1:][cand[:, 1:] == cand[:, :-1]] = -np.inf  # a candidate drawn twice counts once
            top = _top_items(logits, int(counts[start:stop].max()))
            order = np.where(np.isfinite(np.take_along_axis(logits, top, axis=1)), np.take_along_axis(cand, top, 1), -1)
        for row, u in enumerate(range(start, stop)):
            chosen = order[row, : counts[u]]
            chosen = chosen[chosen >= 0]  # a pool with fewer distinct items than the user's count
            users_out.append(np.full(chosen.size, u, dtype=np.int64))
            items_out.append(chosen.astype(np.int64))
    users = np.concatenate(users_out)
    items = np.concatenate(items_out)
    timestamps = rng.integers(1_600_000_000, 1_700_000_000, size=users.size).astype(np.float64)

    features = {}
    for m, dim in modalities.items():
        shared = z_items @ rng.normal(size=(latent_dim, dim))  # unit-variance signal per element
        specific = rng.normal(size=(n_items, 4)) @ rng.normal(size=(4, dim)) / 2.0
        noise = 0.5 * rng.normal(size=(n_items, dim))
        features[m] = (shared + 0.5 * specific + noise).astype(np.float32)

    # Every item must occur at least once so that ids stay contiguous in the .inter file.
    unseen = np.setdiff1d(np.arange(n_items), items)
    if unseen.size:
        extra_users = rng.integers(0, n_users, size=unseen.size)
        users = np.concatenate([users, extra_users])
        items = np.concatenate([items, unseen])
        timestamps = np.concatenate([timestamps, rng.integers(1_600_000_000, 1_700_000_000, size=unseen.size)])
    labels = split_mmrec(users, seed)
    titles = {j: f"Synthetic item {j} · topic {int(topic[j])}" for j in range(n_items)}
    return {
        "z_users": z_users,
        "z_items": z_items,
        "item_bias": item_bias,
        "users": users,
        "items": items,
        "labels": labels,
        "timestamps": timestamps,
        "features": features,
        "titles": titles,
        "n_users": n_users,
        "n_items": n_items,
    }


class _CandidatePools:
    """Per user, a sorted pool of candidate items for the large-catalogue generator: ``size // 3`` items
    drawn from each preferred topic (a user with one topic: twice from it) and the rest by popularity
    (∝ exp(b_j)), with replacement; duplicates are adjacent after sorting and counted once."""

    def __init__(self, topic: np.ndarray, item_bias: np.ndarray, n_topics: int, max_count: int) -> None:
        self.size = max(96, 8 * max_count)
        order = np.argsort(topic, kind="stable")
        self.by_topic = order
        self.topic_start = np.searchsorted(topic[order], np.arange(n_topics + 1))
        weights = np.exp(item_bias - item_bias.max())
        self.popular_cdf = np.cumsum(weights) / weights.sum()

    def _from_topics(self, rng: np.random.Generator, topics: np.ndarray, n: int) -> np.ndarray:
        lo, hi = self.topic_start[topics], self.topic_start[topics + 1]
        size = np.maximum(hi - lo, 1)
        picks = lo[:, None] + (rng.random((topics.size, n)) * size[:, None]).astype(np.int64)
        return self.by_topic[np.minimum(picks, self.by_topic.size - 1)]

    def draw(self, rng: np.random.Generator, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        n = self.size // 3
        a = self._from_topics(rng, first, n)
        b = self._from_topics(rng, np.where(second >= 0, second, first), n)
        popular = np.searchsorted(self.popular_cdf, rng.random((first.size, self.size - 2 * n)))
        popular = np.minimum(popular, self.popular_cdf.size - 1)
        return np.sort(np.concatenate([a, b, popular], axis=1), axis=1)


def _top_items(logits: np.ndarray, k: int) -> np.ndarray:
    """Per row, the indices of the ``k`` largest logits, largest first (ties: lower index first) — the first
    ``k`` columns of a stable descending argsort, found in O(items) per row instead of O(items · log items)."""
    if k >= logits.shape[1]:
        return np.argsort(-logits, axis=1, kind="stable")
    candidates = np.sort(np.argpartition(-logits, k - 1, axis=1)[:, :k], axis=1)
    values = np.take_along_axis(logits, candidates, axis=1)
    return np.take_along_axis(candidates, np.argsort(-values, axis=1, kind="stable"), axis=1)


def write_synthetic_dataset(
    out_dir: str | Path,
    n_users: int = 1500,
    n_items: int = 2000,
    modalities: dict[str, int] | None = None,
    seed: int = 2024,
    name: str = "synthetic",
    **kwargs,
) -> Path:
    """Generate the synthetic dataset and write it as a dataset folder (``out_dir`` must not exist)."""
    g = generate_synthetic(n_users=n_users, n_items=n_items, modalities=modalities, seed=seed, **kwargs)
    return write_dataset(
        out_dir, name, g["users"], g["items"], g["labels"], g["timestamps"], None, g["features"], g["titles"]
    )


def synthetic_dataset(shape: str = "default", seed: int = 2024, **overrides) -> Dataset:
    """An in-memory synthetic :class:`Dataset` of a named shape (``default``, ``baby``, …)."""
    from modalrec.data.dataset import clean_interactions

    params = {**SHAPES[shape], **overrides}
    g = generate_synthetic(seed=seed, **params)
    keep, warnings = clean_interactions(g["users"], g["items"], g["labels"], g["timestamps"])
    return Dataset(
        name=f"synthetic-{shape}",
        n_users=g["n_users"],
        n_items=g["n_items"],
        users=g["users"][keep],
        items=g["items"][keep],
        labels=g["labels"][keep],
        timestamps=g["timestamps"][keep],
        features=g["features"],
        item_titles=g["titles"],
        warnings=warnings,
    )
