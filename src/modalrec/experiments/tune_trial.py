"""One trial of ``modalrec tune``, on the driver or on a worker: train with pruning, never evaluate test.

Each trial trains with early stopping and reports its validation metric to its Optuna trial
after every evaluation; when the pruner says so, training stops there. The driver (not the
trial) tells the study how the trial ended.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modalrec.experiments.executors import require_extra
from modalrec.experiments.study import make_pruner, storage_url
from modalrec.experiments.trials import check_code_version, train_spec, trial_dataset
from modalrec.training.callbacks import TrialPruned


def optuna_pruning_hook(spec: dict[str, Any]) -> Callable[[int, float], bool]:
    """``should_prune(epoch, score)`` for the tuning trial of ``spec``: reports the validation score to the
    trial (``trial.report``) and says whether the pruner stops it there (never when the study does not prune).

    It opens the study from the spec (storage URL, study name, trial id), so it can be built in whichever
    process trains: the driver, a Ray task, or worker 0 of a data-parallel group.
    """
    optuna = require_extra("optuna", "modalrec tune")
    # the pruner is not kept in the storage: the worker builds the driver's own from the spec
    study = optuna.load_study(
        study_name=spec["study"], storage=storage_url(spec["storage"]), pruner=make_pruner(optuna, *spec["pruner"])
    )
    trial = optuna.trial.Trial(study, spec["trial_id"])

    def should_prune(epoch: int, score: float) -> bool:
        trial.report(score, epoch)
        return bool(spec["prune"]) and trial.should_prune()

    return should_prune


def run_tune_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one tuning trial (no test pass) and return how it ended; called by either executor.

    After each validation evaluation the score goes to the Optuna trial (``trial.report``); when
    the pruner says so, training stops there. A trial on several data-parallel workers (``spec["workers"]``)
    does the same on worker 0 and stops every worker at that validation. Returns ``{"state": "complete" |
    "pruned", "value", "valid", "best_epoch", "epochs", "run_dir", "seconds"}``; the caller tells the study.
    """
    check_code_version(spec)
    dataset = trial_dataset(spec)
    t0 = time.perf_counter()
    run_dir = Path(spec["run_dir"])
    try:
        if int(spec.get("workers", 1)) > 1:
            # the workers build the hook themselves (worker 0 only): a partial of a module function pickles
            reporting = {key: spec[key] for key in ("study", "storage", "trial_id", "pruner", "prune")}
            hook = functools.partial(optuna_pruning_hook, reporting)
            run_dir, result = train_spec(spec, run_dir, dataset, evaluate_test=False, pruning=hook)
            evaluations = sum("valid" in row for row in result.history)
        else:
            should_prune = optuna_pruning_hook(spec)
            evaluated: list[int] = []

            def on_epoch(epoch: int, score: float) -> None:
                evaluated.append(epoch)
                if should_prune(epoch, score):
                    raise TrialPruned(epoch, score, len(evaluated))

            run_dir, result = train_spec(spec, run_dir, dataset, on_epoch=on_epoch, evaluate_test=False)
            evaluations = len(evaluated)
    except TrialPruned as p:
        return {
            "state": "pruned",
            "value": p.score,
            "epochs": p.evaluations,
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
        "epochs": evaluations,
        "run_dir": str(Path(run_dir).resolve()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
