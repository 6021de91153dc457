"""What the trainer carries from batch to batch (:class:`TrainState`), what it returns, and how it stops."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from modalrec.errors import ModalrecError
from modalrec.evaluation import EvalResult


@dataclass
class TrainState:
    """The trainer's progress and early-stopping state: the ``trainer`` entry of a resume state.

    :meth:`to_dict` gives exactly the dict a resume state (``resume.pt``) stores under ``trainer``, with
    these keys (:data:`TRAINER_KEYS`): ``epoch``, ``batch``, ``epoch_loss``, ``epoch_train_seconds``,
    ``best_score``, ``best_epoch``, ``best_state``, ``bad_evals``, ``history``, ``epoch_seconds``,
    ``eval_seconds`` and ``best_valid`` (an :class:`EvalResult` as a plain dict); :meth:`from_dict` reads it back.
    """

    epoch: int = 0  # the epoch to run next (or the one in progress when ``batch`` is set)
    batch: int | None = None  # mid-epoch: index of the next batch to run
    epoch_loss: float = 0.0  # sum of the batch losses of the epoch in progress
    epoch_train_seconds: float = 0.0  # training time of the epoch in progress before an interrupt
    best_score: float = -math.inf
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None  # the best epoch's weights, on the CPU
    best_valid: EvalResult | None = None
    bad_evals: int = 0  # evaluations since the last improvement
    history: list[dict] = field(default_factory=list)  # one record per finished epoch
    epoch_seconds: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The resume state's ``trainer`` dict (values shared, not copied; ``best_valid`` as a dict, last)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "best_valid"}
        out["best_valid"] = None if self.best_valid is None else dataclasses.asdict(self.best_valid)
        return out

    @classmethod
    def from_dict(cls, trainer: dict[str, Any]) -> TrainState:
        """Inverse of :meth:`to_dict`: refuses a dict whose keys are not exactly :data:`TRAINER_KEYS`."""
        missing, unknown = set(TRAINER_KEYS) - set(trainer), set(trainer) - set(TRAINER_KEYS)
        if missing or unknown:
            said = [
                f"{what} {', '.join(sorted(keys))}" for what, keys in (("lacks", missing), ("has", unknown)) if keys
            ]
            raise ModalrecError(f"resume state: its trainer entry {' and '.join(said)} (not a state of this trainer)")
        values = dict(trainer)
        if values["best_valid"] is not None:
            values["best_valid"] = EvalResult(**values["best_valid"])
        return cls(**values)


TRAINER_KEYS: tuple[str, ...] = tuple(TrainState().to_dict())  # in the order a resume state stores them


@dataclass
class TrainResult:
    """What :func:`modalrec.training.fit` returns: the best epoch's validation and test results, the run's record."""

    best_epoch: int
    valid: EvalResult
    test: EvalResult | None  # None when fit(..., evaluate_test=False): a tuning trial never sees test
    history: list[dict] = field(default_factory=list)
    stop_reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    validation: dict[str, int] = field(default_factory=dict)  # which valid users early stopping ranked


class TrainingStopped(Exception):
    """Raised by :func:`fit` when an interrupt was requested, after the resume state was handed over.

    ``epoch`` is the epoch to run next, or the one in progress when ``batch`` (the next batch) is set;
    ``saved`` whether a state was written (False when no checkpoint callback was given).
    """

    def __init__(self, signum: int, epoch: int, batch: int | None, n_batches: int, saved: bool) -> None:
        where = f"after epoch {epoch - 1}" if batch is None else f"in epoch {epoch}, after batch {batch} of {n_batches}"
        super().__init__(f"stopped {where}")
        self.signum, self.epoch, self.batch, self.n_batches, self.saved = signum, epoch, batch, n_batches, saved
        self.where = where
