"""Non-personalised reference rankers for benchmark tables: popularity and random.

They are not trained and have no parameters; they offer the small part of the model interface
the evaluator uses (``training``, ``eval``/``train``, ``ranking_scores``, ``candidate_scores``). Their ties and
draws come from a torch generator seeded by (seed, first user of the block), so a ranking
is the same whatever the block order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from modalrec.data.dataset import Dataset

POPULARITY, RANDOM = "Popularity", "Random"
RANKERS = (POPULARITY, RANDOM)


def ranker_name(name: str) -> str | None:
    """The canonical ranker name for ``name`` (case-insensitive), or None when it names no ranker."""
    return next((r for r in RANKERS if r.lower() == name.lower()), None)


class FixedRanker:
    """Scores every item the same way for every user, plus seeded noise.

    ``Popularity``: s_j = number of training interactions of j, ties broken at random (a
    uniform draw in [0, 0.5) is added, so the order of different counts never changes;
    cold items all have count 0, so among them the order is random). ``Random``: s_j
    uniform in [0, 1) per (user, item).
    """

    training = False

    def __init__(self, kind: str, dataset: Dataset, seed: int) -> None:
        if kind not in RANKERS:
            raise ValueError(f"unknown ranker {kind!r}")
        self.name = kind
        self.seed = int(seed)
        self.n_items = dataset.n_items
        degree = np.asarray(dataset.train_matrix.sum(axis=0)).ravel().astype(np.float32)
        self.degree = torch.from_numpy(degree)

    def eval(self) -> FixedRanker:
        return self

    def train(self, mode: bool = True) -> FixedRanker:
        return self

    def ranking_scores(self, users: torch.Tensor) -> torch.Tensor:
        first = int(users[0]) if len(users) else 0
        stream = RANKERS.index(self.name)  # independent draws per ranker (else Popularity on cold items = Random)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + first) * len(RANKERS) + stream)
        noise = torch.rand((len(users), self.n_items), generator=gen)
        if self.name == RANDOM:
            return noise.to(users.device)
        return (self.degree.unsqueeze(0) + 0.5 * noise).to(users.device)

    def candidate_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """:meth:`ranking_scores` on the ``items`` columns (the same draws as a full ranking)."""
        return self.ranking_scores(users)[:, items.to(users.device)]
