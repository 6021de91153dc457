"""Non-personalised reference rankers for benchmark tables: popularity and random, and their evaluation.

They are not trained and have no parameters; they offer the small part of the model interface
the evaluator uses (``training``, ``eval``/``train``, ``ranking_scores``, ``candidate_scores``). Their ties and
draws come from a torch generator seeded by (seed, first user of the block), so a ranking
is the same whatever the block order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modalrec.evaluation import Evaluator
from modalrec.io import write_json, write_npz
from modalrec.runs import new_run_dir

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


def evaluate_ranker(kind: str, dataset: Dataset, seed: int, cfg: Any, run_out: Path) -> tuple[Path, dict[str, dict]]:
    """Evaluate a reference ranker on valid and test like a trained model; returns (run folder, metrics per split).

    ``cfg`` is the shared evaluation configuration (topk, metrics, mask_valid_at_test, eval_batch_size,
    eval_mode). The run folder ``run_out`` gets the per-user metrics of each split and ``metrics.json``.
    """
    ranker = FixedRanker(kind, dataset, seed)
    results = {}
    for split in ("valid", "test"):
        ev = Evaluator(
            dataset,
            split,
            list(cfg.topk),
            tuple(cfg.metrics),
            mask_valid=split == "test" and bool(cfg.mask_valid_at_test),
            block_size=int(cfg.eval_batch_size),
            mode=cfg.get("eval_mode"),
        )
        results[split] = ev.evaluate(ranker)
    run_dir = new_run_dir(kind, dataset.name, run_out)
    for split, res in results.items():
        write_npz(run_dir / f"{split}_per_user.npz", users=res.users, **res.per_user)
    metrics = {split: res.metrics for split, res in results.items()}
    write_json(run_dir / "metrics.json", {"model": kind, "eval_mode": results["test"].mode, **metrics})
    return run_dir, metrics
