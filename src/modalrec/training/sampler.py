"""The BPR negative sampler: one uniform negative per training pair, never a training positive."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from modalrec.errors import ModalrecError


class NegativeSampler:
    """Uniform negatives, one per positive, redrawn every epoch, never a training positive.

    Candidates are the items that occur in training (MMRec). Rejection sampling is
    vectorised: all negatives are drawn at once and only the collisions — found by a
    binary search in the sorted (user, item) keys of R — are redrawn.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int, rng: np.random.Generator) -> None:
        self.users = np.ascontiguousarray(users, dtype=np.int64)
        self.items = np.ascontiguousarray(items, dtype=np.int64)
        self.n_items = n_items
        self.rng = rng
        self.pool = np.unique(self.items)
        self.keys = np.unique(self.users * n_items + self.items)
        per_user = np.bincount(self.keys // n_items)  # distinct items per user (repeated pairs count once)
        if per_user.max(initial=0) >= self.pool.size:
            u = int(np.argmax(per_user))
            raise ModalrecError(f"user {u} has interacted with every training item; no negative can be sampled")

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) pair is a training interaction."""
        keys = users * self.n_items + items
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, self.keys.size - 1)
        return self.keys[pos] == keys

    def sample(self, users: np.ndarray) -> np.ndarray:
        """One negative item per entry of ``users``."""
        neg = self.pool[self.rng.integers(0, self.pool.size, size=users.size)]
        todo = np.flatnonzero(self.is_positive(users, neg))
        while todo.size:
            neg[todo] = self.pool[self.rng.integers(0, self.pool.size, size=todo.size)]
            todo = todo[self.is_positive(users[todo], neg[todo])]
        return neg

    def draw_epoch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One epoch's shuffled (users, pos, neg) arrays: the permutation, then the negatives."""
        order = self.rng.permutation(self.users.size)
        users, pos = self.users[order], self.items[order]
        return users, pos, self.sample(users)

    def epoch(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Shuffle the training pairs and yield (users, pos, neg) batches of ``batch_size``."""
        users, pos, neg = self.draw_epoch()
        for lo in range(0, users.size, batch_size):
            hi = lo + batch_size
            yield users[lo:hi], pos[lo:hi], neg[lo:hi]
