"""One trial of ``modalrec tune``, on the driver or on a worker: train with pruning, never evaluate test.

Each trial trains with early stopping and reports its validation metric to its Optuna trial
after every evaluation; when the pruner says so, training stops there. The driver (not the
trial) tells the study how the trial ended.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from modalrec.experiments.executors import require_extra
from modalrec.experiments.study import make_pruner, storage_url
from modalrec.experiments.trials import check_code_version, train_spec, trial_dataset


class Pruned(Exception):
    """Raised from the per-epoch callback when the pruner stops a trial: the epoch and its score."""

    def __init__(self, epoch: int, score: float) -> None:
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch, self.score = epoch, score


def run_tune_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one tuning trial (no test pass) and return how it ended; called by either executor.

    After each validation evaluation the score goes to the Optuna trial (``trial.report``); when
    the pruner says so, training stops there. Returns ``{"state": "complete" | "pruned",
    "value", "valid", "best_epoch", "epochs", "run_dir", "seconds"}``; the caller tells the study.
    """
    optuna = require_extra("optuna", "modalrec tune")
    check_code_version(spec)
    dataset = trial_dataset(spec)
    # the pruner is not kept in the storage: the worker builds the driver's own from the spec
    study = optuna.load_study(
        study_name=spec["study"], storage=storage_url(spec["storage"]), pruner=make_pruner(optuna, *spec["pruner"])
    )
    trial = optuna.trial.Trial(study, spec["trial_id"])
    epochs: list[int] = []

    def on_epoch(epoch: int, score: float) -> None:
        epochs.append(epoch)
        trial.report(score, epoch)
        if spec["prune"] and trial.should_prune():
            raise Pruned(epoch, score)

    t0 = time.perf_counter()
    run_dir = Path(spec["run_dir"])
    try:
        run_dir, result = train_spec(spec, run_dir, dataset, on_epoch=on_epoch, evaluate_test=False)
    except Pruned as p:
        return {
            "state": "pruned",
            "value": p.score,
            "epochs": len(epochs),
            "best_epoch": None,
            "valid": None,
            "run_dir": str(run_dir.resolve()),
            "seconds": round(time.perf_counter() - t0, 3),
        }
    return {
        "state": "complete",
        "value": float(result.valid.metrics[spec["metric"]]),
        "valid": result.valid.metrics,
        "best_epoch": result.best_epoch,
        "epochs": len(epochs),
        "run_dir": str(Path(run_dir).resolve()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
