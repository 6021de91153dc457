"""``modalrec tune``: Optuna search over a model's search space, selected on validation only (docs/scale.md).

The space is the model's ``search_space`` (finite lists → categorical choices) with its
``search_ranges`` taking over the keys they name (log-uniform learning rates and regularisers,
integer layers); keys fixed with ``--set`` are not searched. Samplers: ``tpe`` (default, with
the constant liar so that parallel trials do not all try the same point), ``random`` and
``grid`` (the finite ``search_space`` only; the budget is at most the grid's size, and the driver
stops asking for trials once every grid point has been tried). Each trial trains with early
stopping and reports its validation metric after every evaluation; the pruner (``median``,
``hyperband`` or ``none``) stops a trial that does badly. A trial's value is its best validation
metric (``valid_metric``, Recall@20 by default) and a trial never evaluates test; when the study
has finished, the best trial's saved best-epoch weights are loaded and evaluated on test once.

The study lives in an Optuna storage: ``sqlite:///<report>/study.db`` by default; a
``postgresql://`` URL lets ``modalrec tune`` processes on several machines share one study.
``--trials N`` is the study's total of finished (complete or pruned) trials, exact across all
processes: before a trial starts, the driver counts the trials that precede it in the study
(finished, running or waiting) and gives it up, untrained, when the budget is already taken.
Running the same command again resumes the study until it has N finished trials. Trials go
through an executor like a benchmark's (local or Ray tasks); the driver alone tells Optuna
how a trial ended, and keeps the heartbeat of the trials it runs, so the trials of a process
that died are marked failed by the next one after the grace period.

The parts: :mod:`~modalrec.experiments.search_space` (what is searched),
:mod:`~modalrec.experiments.study` (storage, sampler, pruner, study),
:mod:`~modalrec.experiments.tune_trial` (one trial) and :mod:`~modalrec.experiments.tune_report`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modalrec.config import resolve_config
from modalrec.data.dataset import load_dataset
from modalrec.errors import ConfigError, Interrupted, ModalrecError
from modalrec.experiments.executors import (
    Executor,
    LocalExecutor,
    StopWaiting,
    TrialOutcome,
    TrialProgress,
    require_extra,
)
from modalrec.experiments.search_space import suggest, tune_space
from modalrec.experiments.store import default_report_dir
from modalrec.experiments.study import (
    Heartbeat,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    safe_url,
    study_identity,
    trials_in_study,
)
from modalrec.experiments.trials import remember_dataset
from modalrec.experiments.tune_report import TuneReport, format_param, write_tune_report
from modalrec.experiments.tune_trial import run_tune_trial
from modalrec.interrupt import SIGNAL_EXIT_CODES, graceful_interrupts
from modalrec.models import get_model_class
from modalrec.run_files import code_version
from modalrec.run_model import model_record


def run_tune(
    model: str,
    data_dir: str | Path,
    trials: int,
    out: str | Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    modalities: list[str] | None = None,
    preset: str | None = None,
    device: str = "cpu",
    cache_dir: str | Path | bool | None = None,
    executor: Executor | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    pruner_startup: int = 3,
    pruner_warmup: int = 2,
) -> TuneReport:
    """Search ``model``'s space on ``data_dir`` until the study has ``trials`` finished trials (see module docstring).

    ``seed`` seeds the sampler; the trials all train with the configuration's ``seed`` (``--set
    seed=…``), so they differ only by their parameters. ``pruner_startup`` trials run unpruned
    and no trial is pruned before epoch ``pruner_warmup`` (median pruner).
    """
    optuna = _quiet_optuna()
    if trials < 1:
        raise ConfigError(f"--trials {trials}: give at least 1")
    cls = get_model_class(model)
    fixed = dict(overrides or {})
    dataset = load_dataset(data_dir).select_modalities(None)
    dataset.select_modalities(modalities)  # an unknown modality fails here
    config = resolve_config(cls, dataset.name, fixed, preset)
    metric = str(config.valid_metric).lower()
    space = _checked_space(cls, dataset.name, fixed, sampler, preset)
    trials = _grid_budget(space, sampler, trials, log)
    out = Path(out) if out is not None else default_report_dir("tune", dataset.name, cls.name)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    store = open_storage(optuna, url)
    model = model_record(cls)  # name, spec (a worker resolves it again) and source hash
    identity = {
        "model": cls.name,
        "data": dataset.fingerprint,
        "modalities": modalities,
        "fixed": json.loads(json.dumps(fixed, default=str)),
        "metric": metric,
        "source": model["model_source_hash"],
    }
    name = _study_for_source(optuna, store, study_name or f"{cls.name}-{dataset.name}", identity["source"], log)
    pruning = [pruner, int(config.epochs), pruner_startup, pruner_warmup]  # what make_pruner takes after optuna
    study = _study(optuna, store, name, url, identity, (sampler, seed, space, trials), pruning)
    data_path = str(Path(data_dir).resolve())
    remember_dataset((data_path, dataset.fingerprint), dataset)
    workers = int(getattr(executor, "workers_per_trial", 1))  # each trial a data-parallel run on that many workers
    template = {
        **model,
        "seed": int(config.seed),
        "study": name,
        "storage": url,
        "prune": pruner != "none",
        "pruner": pruning,
        "metric": metric,
        "modalities": modalities,
        "data_dir": data_path,
        "fingerprint": dataset.fingerprint,
        "preset": preset,
        "device": device,
        "cache_dir": str(cache_dir) if isinstance(cache_dir, Path) else cache_dir,
        **({"workers": workers} if workers > 1 else {}),
    }
    driver = _TuneDriver(optuna, study, executor or LocalExecutor(), trials, space, fixed, out, template, log)
    done_before = driver.count()
    log(
        f"tune {cls.name} on {dataset.name}: {len(space)} parameters ({', '.join(space)}), sampler {sampler}, "
        f"pruner {pruner}, selecting on valid {metric}; study {name!r} in {safe_url(url)} has {done_before} of "
        f"{trials} finished trials → {out}"
    )
    driver.run(store, done_before, progress)
    return write_tune_report(
        optuna, study, model["model_spec"], data_dir, fixed, metric, out, url, name, trials, driver.ran_here, log
    )


def _quiet_optuna() -> Any:
    """Optuna (from the ``scale`` extra), logging warnings only and without the warnings the driver expects."""
    optuna = require_extra("optuna", "modalrec tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: used on purpose
    # the driver keeps the heartbeats itself (see Heartbeat), which Optuna only expects of Study.optimize
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def _study(
    optuna: Any,
    storage: Any,
    name: str,
    url: str,
    identity: dict[str, Any],
    sampling: tuple[str, int, dict[str, dict[str, Any]], int],
    pruning: list,
) -> Any:
    """The study ``name``, created or loaded, with its sampler (``sampling``: kind, seed, space, budget) and pruner."""
    kind, seed, space, budget = sampling
    # A resumed study (or a second process) seeds its sampler past the trials already there: the same seed
    # again would draw the same first points again.
    offset = trials_in_study(optuna, storage, name)
    sampler = make_sampler(optuna, kind, seed + offset, space, budget)
    return open_study(optuna, storage, name, sampler, make_pruner(optuna, *pruning), identity, url)


def _study_for_source(optuna: Any, storage: Any, name: str, source: str | None, log: Callable[[str], None]) -> str:
    """The study to use: ``name``, unless that study was made with other code of the model (its recorded source
    hash differs): then ``<name>-<hash>``, a study of its own — the old trials are not reused, the search starts
    again (or continues, when that study exists already). A study made before hashes were recorded is reused."""
    made_for = study_identity(optuna, storage, name) or {}
    if source is None or made_for.get("source") in (None, source):
        return name
    new = f"{name}-{source[:8]}"
    log(f"study {name!r} was made with other code of the model (model source changed since): not reused; study {new!r}")
    return new


def _checked_space(cls: Any, dataset_name: str, fixed: dict[str, Any], sampler: str, preset: str | None) -> dict:
    """The search space; every value the sampler can draw is checked to be a valid setting first."""
    space = tune_space(cls, fixed, sampler)
    if not space:
        raise ConfigError(f"{cls.name}: nothing to search (every search_space key is fixed by --set)")
    for key, d in space.items():
        for v in d["choices"] if "choices" in d else [d["low"], d["high"]]:
            resolve_config(cls, dataset_name, {**fixed, key: v}, preset, source=f"search space of {key}")
    return space


def _grid_size(space: dict[str, dict[str, Any]]) -> int:
    """How many points the grid sampler's grid has: every combination of the finite choices."""
    return math.prod(len(d["choices"]) for d in space.values())


def _grid_budget(space: dict[str, dict[str, Any]], sampler: str, trials: int, log: Callable[[str], None]) -> int:
    """The trial budget: with the grid sampler, at most the number of grid points."""
    if sampler == "grid":
        size = _grid_size(space)
        if trials > size:
            log(f"grid sampler: the grid has {size} points; --trials {trials} → {size}")
            return size
    return trials


class _TuneDriver:
    """The study's trials of this process: ask, submit to the executor, tell the study how each ended.

    Trials are started while the executor has room and the study's budget of finished trials is
    not taken; the driver alone tells Optuna how a trial ended and keeps its heartbeat meanwhile.
    """

    def __init__(
        self,
        optuna: Any,
        study: Any,
        executor: Executor,
        budget: int,
        space: dict[str, dict[str, Any]],
        fixed: dict[str, Any],
        out: Path,
        template: dict[str, Any],
        log: Callable[[str], None],
    ) -> None:
        self.optuna, self.study, self.executor, self.budget = optuna, study, executor, budget
        executor.trial_fn = run_tune_trial  # the executor's trials are tuning trials
        self.space, self.fixed, self.out, self.template, self.log = space, fixed, out, template, log
        self.states = optuna.trial.TrialState
        self.finished_states = (self.states.COMPLETE, self.states.PRUNED)
        self.inflight: dict[int, Any] = {}
        self.ran_here = self.failures = 0
        self.asking_done = False  # the budget is taken, or the grid has no point left: ask for no more trials

    def count(self, upto: int | None = None, which: tuple | None = None) -> int:
        """Trials of the study in the states ``which`` (default: finished), those numbered below ``upto`` only."""
        which = self.finished_states if which is None else which
        return sum(
            1 for t in self.study.get_trials(deepcopy=False) if t.state in which and (upto is None or t.number < upto)
        )

    def run(self, storage: Any, done_before: int, bar: bool) -> None:
        """Run trials until the budget is taken and none is in flight; on an interrupt, give up those running."""
        self.progress = TrialProgress(self.budget, self.log, bar=bar)
        self.progress.update(done=done_before)
        self.heartbeat = Heartbeat(storage)
        executor = self.executor
        try:
            with graceful_interrupts() as flag:
                while True:
                    self.optuna.storages.fail_stale_trials(self.study)
                    while not self.asking_done and executor.in_flight() < executor.capacity and flag() is None:
                        if self._grid_exhausted() or self.count() + len(self.inflight) >= self.budget:
                            break
                        if not self._start_one():
                            break
                    if not executor.in_flight():
                        break
                    self.progress.update(running=executor.in_flight())
                    try:
                        outcome = executor.next_done(poll=lambda: flag() is not None)
                    except StopWaiting:
                        outcome = None
                    if outcome is not None:
                        self._take(outcome)
                    if flag() is not None:
                        raise self._interrupted(flag())
        finally:
            self._close()

    def _start_one(self) -> bool:
        """Ask the study for a trial; give it up when the budget is taken (True: one started)."""
        states = self.states
        trial = self.study.ask()
        claimed = self.count(trial.number, (states.COMPLETE, states.PRUNED, states.RUNNING, states.WAITING))
        if claimed >= self.budget:  # other processes hold the rest of the budget: this trial is not run
            trial.set_user_attr("surplus", True)
            self.study.tell(trial, state=states.FAIL)
            self.asking_done = True
            return False
        params = suggest(trial, self.space)
        run_dir = self.out / "trials" / f"trial-{trial.number:04d}"
        n = 1
        while run_dir.exists():  # a folder left by an earlier study in this report: kept, never overwritten
            n += 1
            run_dir = self.out / "trials" / f"trial-{trial.number:04d}-{n}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("overrides", json.loads(json.dumps(params, default=str)))
        spec = {
            **self.template,
            "sid": f"trial-{trial.number}",
            "trial_number": trial.number,
            "trial_id": trial._trial_id,
            "overrides": {**self.fixed, **params},
            "run_dir": str(run_dir.resolve()),
            "code": code_version(),
        }
        self.heartbeat.add(trial._trial_id)
        self.inflight[trial.number] = trial
        self.executor.submit(spec)
        return True

    def _grid_exhausted(self) -> bool:
        """With the grid sampler: has every grid point been tried (True: ask for no more trials, and say so)?

        The budget is at most the grid's size, so this stops the driver before the budget only when
        failed trials took grid points (Optuna's grid sampler does not try a failed point again); asked
        past that, the sampler would run an already tried point a second time.
        """
        sampler = self.study.sampler
        if not isinstance(sampler, self.optuna.samplers.GridSampler) or not sampler.is_exhausted(self.study):
            return False
        size, finished = _grid_size(self.space), self.count()
        failed = f" ({size - finished} of them failed; a failed point is not tried again)" if finished < size else ""
        self.log(f"grid sampler: all {size} grid points have been tried{failed}; no more trials to run")
        self.asking_done = True
        return True

    def _take(self, outcome: TrialOutcome) -> None:
        """Tell the study how a trial ended (failed, pruned or complete) and log it."""
        number = outcome.spec["trial_number"]
        trial = self.inflight.pop(number)
        self.heartbeat.discard(trial._trial_id)
        if outcome.failed:
            self.failures += 1
            trial.set_user_attr("error", outcome.error)
            self.study.tell(trial, state=self.states.FAIL)
            self.progress.update(failed=1, running=self.executor.in_flight())
            self.log(f"  trial {number}: FAILED — {outcome.error} [{self.progress.counts()}]")
            if self.failures > self.budget:
                raise ModalrecError(f"{self.failures} trials failed (last: {outcome.error}); stopping the study")
            return
        res = outcome.record
        self.ran_here += 1
        trial.set_user_attr("epochs", res["epochs"])
        trial.set_user_attr("seconds", res["seconds"])
        metric = self.template["metric"]
        if res["state"] == "pruned":
            self.study.tell(trial, state=self.states.PRUNED)
            n = res["epochs"]
            what = f"pruned after {n} evaluation{'s' if n != 1 else ''} (valid {metric} {res['value']:.4f})"
        else:
            trial.set_user_attr("best_epoch", res["best_epoch"])
            self.study.tell(trial, res["value"])
            what = f"valid {metric} {res['value']:.4f} at epoch {res['best_epoch']}"
        self.progress.update(done=1, running=self.executor.in_flight())
        shown = _short(outcome.spec["overrides"], self.fixed)
        self.log(f"  trial {number} {shown}: {what} ({res['seconds']:.1f}s) [{self.progress.counts()}]")

    def _interrupted(self, signum: int | None) -> Interrupted:
        """Give up the trials in flight (they leave the budget to the next run); the error that ends the study."""
        stopped = self.executor.cancel()
        for trial in self.inflight.values():  # not finished: they leave the budget to the next run
            trial.set_user_attr("error", "interrupted")
            self.study.tell(trial, state=self.states.FAIL)
        self.inflight.clear()
        return Interrupted(
            f"tune stopped ({stopped} running trial{'s' if stopped != 1 else ''} given up); the study "
            f"keeps {self.count()} finished trials — run the same command again to continue it",
            SIGNAL_EXIT_CODES.get(signum or 2, 130),
        )

    def _close(self) -> None:
        """Stop the heartbeats; trials still in flight (the driver stopped on an error) are told failed."""
        self.heartbeat.close()
        if self.inflight:
            self.executor.cancel()
            for trial in self.inflight.values():
                try:
                    trial.set_user_attr("error", "driver stopped")
                    self.study.tell(trial, state=self.states.FAIL)
                except Exception:  # noqa: BLE001 — the storage may be what failed
                    pass
        self.progress.close()


def _short(params: dict[str, Any], fixed: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_param(v)}" for k, v in params.items() if k not in fixed) or "defaults"
