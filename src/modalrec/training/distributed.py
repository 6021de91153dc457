"""Data-parallel training of one run: what each worker does besides a single process's work (docs/scale.md).

Every worker holds the whole model and draws the same epoch (the same seed gives every worker the same
permutation and negatives); worker r of N takes its contiguous part of each global batch, PyTorch's
``DistributedDataParallel`` averages the gradients, so each step is the single-process step on the
whole batch up to float summation order — exactly so for a loss that is a mean over the batch's samples
of per-sample terms (BPR and its regularisers; not for a loss coupling the batch's rows, e.g. in-batch
negatives, which then sees each worker's part). Validation and test rank the users in the
single-process blocks, split among the workers (:meth:`~modalrec.evaluation.Evaluator.shard_blocks`);
the per-user vectors are gathered on every worker, so all of them take the same early-stopping
decisions and the merged vectors equal a single process's exactly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from modalrec.evaluation import EvalResult, Evaluator, result_from_per_user
from modalrec.models.base import Batch

if TYPE_CHECKING:
    from modalrec.models.base import Recommender


class LossModule(nn.Module):
    """``forward(batch) = model.loss(batch)``: the module DistributedDataParallel wraps, so that its gradient
    hooks see every parameter the loss uses (DDP only synchronises what runs through ``forward``)."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return self.model.loss(Batch(users, pos, neg))


@dataclass(frozen=True)
class DataParallel:
    """Worker ``rank`` of ``world`` in an initialised ``torch.distributed`` process group."""

    rank: int
    world: int

    def batch_part(self, lo: int, hi: int) -> tuple[int, int]:
        """This worker's contiguous part of the global batch ``[lo, hi)``; the whole batch when it has fewer
        samples than workers (every worker then takes the same step, and the average is that step)."""
        n = hi - lo
        if n < self.world:
            return lo, hi
        per = -(-n // self.world)
        start = lo + self.rank * per
        return start, min(hi, start + per)

    def wrap(self, model: Recommender) -> nn.Module:
        """The DDP module of ``model``'s loss. Buffers are not broadcast at every step: every worker built the
        same model from the same seed and data, and buffers hold data (features, graphs), not training state."""
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [model.device.index] if model.device.type == "cuda" else None
        with warnings.catch_warnings():  # torch 2.13 renames the flag; the old name keeps init-time sync off
            warnings.simplefilter("ignore", FutureWarning)
            return DistributedDataParallel(
                LossModule(model), device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=True
            )

    def mean(self, value: torch.Tensor) -> float:
        """The mean of ``value`` (a scalar) over the workers, the same on every worker."""
        total = value.detach().to(torch.float64).reshape(1).clone()
        dist.all_reduce(total)
        return float(total.item()) / self.world

    def evaluate(self, evaluator: Evaluator, model: Recommender) -> EvalResult:
        """``evaluator.evaluate(model)`` with the ranking blocks split among the workers, merged on every worker."""
        part = evaluator.evaluate(model, evaluator.shard_blocks(self.rank, self.world))
        parts: list[tuple[np.ndarray, dict[str, np.ndarray], float] | None] = [None] * self.world
        dist.all_gather_object(parts, (part.users, part.per_user, part.seconds))
        got = [p for p in parts if p is not None]
        users = np.concatenate([p[0] for p in got])
        per_user = {name: np.concatenate([p[1][name] for p in got]) for name in part.per_user}
        return result_from_per_user(part.split, per_user, users, max(p[2] for p in got), part.mode)

    def broadcast_flag(self, flag: bool) -> bool:
        """Worker 0's ``flag``, on every worker (a decision only worker 0 takes, e.g. a tuner's pruning)."""
        box = [bool(flag)]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def barrier(self) -> None:
        dist.barrier()
