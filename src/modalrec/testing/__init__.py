"""The model contract kit: the checks every built-in model passes, for any :class:`~modalrec.models.Recommender`.

``check_model(MyModel)`` (or a spec: ``"path/to/mymodels.py:MyModel"``, a registered name) trains the model on a
small built-in synthetic dataset (300 users × 250 items with image and text features; pass ``dataset`` for
another) and runs, sharing its trainings between them:

- ``loss``: the per-epoch training loss is finite and falls below the first epoch's;
- ``beats random``: after the training, test Recall@20 is above 1.5 × what a uniformly random ranking expects;
- ``ranking paths``: ranking user blocks gives the scores of ranking all users at once; :meth:`score_pairs` and
  the model's own exact path ``naive_pair_scores(users, items)``, when it has one, agree with
  :meth:`full_scores`; putting the model back in training and then evaluation mode changes no score;
- ``candidate scores``: :meth:`candidate_scores` equals the matching columns of :meth:`ranking_scores`;
- ``same seed``: a second training with the same seed gives the same losses, validation metrics and weights
  over its epochs (it is capped at 2 epochs: nothing may depend on the epoch cap either);
- ``save/load``: the weights written as a run's ``model.pt`` load (weights only) into a new model that gives the
  same scores;
- ``explanation``: what :meth:`explain` returns, when anything, has one row of weights per pair and one column
  per part;
- ``cold rule``: on a cold-items re-split of the data, a ``cold_start = "content"`` model's cold-item scores move
  when the item's features change and not when its own trained rows do; an ID-only (``"unable"``) model's cold
  items get random scores. A model that reads features but declares ``"unable"`` gets a warning line.

Every check gives one line — ``PASS name: figure``, ``WARN name: figure — why`` or ``FAIL name: figure — why``.
For a user's pytest::

    from modalrec.testing import check_model

    def test_my_model_keeps_the_contract():
        report = check_model("mymodels.py:ImgLightGCN")
        assert report.ok, str(report)

The command line does the same: ``modalrec check-model mymodels.py:ImgLightGCN``. Each check is also a function
of :mod:`modalrec.testing.checks`, for a test of its own; :mod:`modalrec.testing.kit` holds the report, the data
and the shared trainings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modalrec.api import caller_global_state
from modalrec.config import load_defaults
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.errors import ConfigError
from modalrec.models import Recommender, resolve_model
from modalrec.testing.checks import (
    check_beats_random,
    check_candidate_scores,
    check_cold_rule,
    check_explanation,
    check_loss,
    check_ranking_paths,
    check_same_seed,
    check_save_load,
)
from modalrec.testing.kit import (
    CHECK_NAMES,
    DEFAULT_EPOCHS,
    CheckResult,
    ContractKit,
    ModelCheckReport,
    check_dataset,
    failure,
)

__all__ = ["CHECK_NAMES", "CheckResult", "ModelCheckReport", "check_model"]


def _guarded(name: str, run: Callable[[], CheckResult]) -> CheckResult:
    """``run()``, or a failed check naming what it raised."""
    try:
        return run()
    except Exception as exc:
        return CheckResult(name, False, "raised", failure(exc))


def check_model(
    cls_or_spec: str | type[Recommender],
    *,
    dataset: Dataset | str | Path | None = None,
    epochs: int = DEFAULT_EPOCHS,
    seed: int | None = None,
    settings: dict[str, Any] | None = None,
    preset: str | None = None,
) -> ModelCheckReport:
    """Run the contract checks (this module's docstring) on a model class or spec; one result per check.

    ``dataset``: a :class:`Dataset` or a dataset folder (default: :func:`check_dataset`); ``epochs`` of the main
    training (at least 2 to see the loss fall); ``seed`` (default: the model's configured seed); ``settings``
    override the model's (on top of :data:`CHECK_SETTINGS`); ``preset`` defaults to ``tiny`` when the model
    declares one. A bad spec, or a setting or dataset the model refuses, raises a one-line
    :class:`~modalrec.errors.ModalrecError` before any check; anything raised inside a check fails that check.
    The caller's global torch settings and random states are as they were afterwards.
    """
    cls = resolve_model(cls_or_spec)
    if epochs < 1:
        raise ConfigError(f"epochs = {epochs}: train at least 1 epoch (2 or more to see the loss fall)")
    if dataset is None:
        dataset = check_dataset()
    elif not isinstance(dataset, Dataset):
        dataset = load_dataset(dataset)
    if preset is None and "tiny" in load_defaults(cls)[1]:
        preset = "tiny"
    with caller_global_state():  # the trainings seed the global RNGs and switch torch to deterministic kernels
        return _run_checks(ContractKit(cls, dataset, epochs, seed, settings, preset))


def _run_checks(kit: ContractKit) -> ModelCheckReport:
    """Every check of :data:`CHECK_NAMES`, in order, sharing the kit's main training."""
    kit.train_main()
    report = ModelCheckReport(kit.cls.name)
    dataset = kit.dataset
    main = kit.main
    if main is None:
        report.checks.append(CheckResult("loss", False, "training raised", kit.main_error or ""))
        why = f"needs the trained model; the training raised {kit.main_error}"
        report.checks += [CheckResult(name, False, "not run", why) for name in CHECK_NAMES[1:-1]]
    else:
        report.checks += [
            _guarded("loss", lambda: check_loss(main.result)),
            _guarded("beats random", lambda: check_beats_random(main.result, dataset)),
            _guarded("ranking paths", lambda: check_ranking_paths(main.model)),
            _guarded("candidate scores", lambda: check_candidate_scores(main.model)),
            _guarded("same seed", lambda: check_same_seed(kit, main)),
            _guarded("save/load", lambda: check_save_load(main, dataset)),
            _guarded("explanation", lambda: check_explanation(main.model)),
        ]
    report.checks.append(_guarded("cold rule", lambda: check_cold_rule(kit)))
    return report
