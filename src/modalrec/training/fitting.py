"""``fit``: the :class:`Trainer` with its standard callbacks — the entry point runs and experiments train through."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modalrec.training.callbacks import CheckpointSchedule, InterruptPoll, ProgressCallback, PruningCallback
from modalrec.training.state import TrainResult
from modalrec.training.trainer import Callback, Trainer

if TYPE_CHECKING:
    from modalrec.config import Config
    from modalrec.data.dataset import Dataset
    from modalrec.models.base import Recommender


def fit(
    model: Recommender,
    dataset: Dataset,
    config: Config,
    log: Callable[[str], None] = print,
    progress: bool = False,
    device: str | torch.device = "cpu",
    rng: np.random.Generator | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    interrupt: Callable[[], int | None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    evaluate_test: bool = True,
    *,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``model`` with early stopping on ``config.valid_metric``; test once on the best weights.

    The validation metric must improve strictly to count; after ``stopping_step``
    evaluations without improvement training stops, but never before ``min_epochs`` epochs
    (a model started near zero can sit on a plateau for more than the patience first). A NaN/inf loss stops training and
    keeps the best result so far. The test split is evaluated exactly once, on the
    restored best weights, and is never used for any decision.

    Resumable: every ``checkpoint_every`` epochs (0 = at every evaluation) ``checkpoint`` is
    called with the complete trainer state (weights, optimiser, LR schedule, early-stopping state,
    best weights, history, every RNG state, the model's :meth:`extra_state`); ``fit(...,
    resume=that state)`` continues bit-for-bit as if never stopped (same device and thread count).
    ``interrupt()`` is polled after every batch and every epoch; when it returns a signal number
    the state at that point (mid-epoch if need be) goes to ``checkpoint`` and
    :class:`TrainingStopped` is raised.

    ``on_epoch(epoch, score)`` is called after every validation evaluation with the epoch and its
    ``valid_metric``; an exception it raises ends training there and propagates (a tuner's pruning:
    ``modalrec tune`` reports the score to Optuna and stops a trial the pruner gives up on).
    ``evaluate_test=False`` skips the test pass (the result's ``test`` is None): a tuning trial is
    selected on validation and never evaluates test.

    ``callbacks`` (:class:`Callback`) run after the progress display, the resume-state schedule and the pruning
    hook, and before the interrupt poll — so a stop one of them requests (or a signal it sends) takes effect
    at that same batch or epoch boundary.
    """
    hooks: list[Callback] = [ProgressCallback(log, progress), CheckpointSchedule()]
    if on_epoch is not None:
        hooks.append(PruningCallback(on_epoch))
    hooks += callbacks
    if interrupt is not None:
        hooks.append(InterruptPoll(interrupt))
    trainer = Trainer(model, dataset, config, log=log, device=device, rng=rng, write_state=checkpoint, callbacks=hooks)
    return trainer.fit(resume, evaluate_test)
