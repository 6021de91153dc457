"""``modalrec tune``: Optuna search over a model's search space, selected on validation only (docs/scale.md).

The space is the model's ``search_space`` (finite lists → categorical choices) with its
``search_ranges`` taking over the keys they name (log-uniform learning rates and regularisers,
integer layers); keys fixed with ``--set`` are not searched. Samplers: ``tpe`` (default, with
the constant liar so that parallel trials do not all try the same point), ``random`` and
``grid`` (the finite ``search_space`` only). Each trial trains with early stopping and reports
its validation metric after every evaluation; the pruner (``median``, ``hyperband`` or
``none``) stops a trial that does badly. A trial's value is its best validation metric
(``valid_metric``, Recall@20 by default) and a trial never evaluates test; when the study
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
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modalrec.config import load_defaults, load_search_ranges, resolve_config
from modalrec.data.dataset import load_dataset
from modalrec.errors import ConfigError, Interrupted, ModalrecError
from modalrec.experiments.benchmark import _remember_dataset, _trial_dataset, default_report_dir
from modalrec.experiments.executors import Executor, LocalExecutor, TrialProgress, _Stop, require_extra
from modalrec.experiments.report import ReportWriter
from modalrec.experiments.tables import metric_label
from modalrec.interrupt import SIGNAL_EXIT_CODES, graceful_interrupts
from modalrec.models import get_model_class
from modalrec.runs import code_version

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 60


# ---------------------------------------------------------------------- the search space
def tune_space(model: str, fixed: dict[str, Any], sampler: str = "tpe") -> dict[str, dict[str, Any]]:
    """``{key: {"choices": [...]}}`` or ``{key: {"low", "high", "log", "int"}}`` of the keys ``tune`` searches.

    ``search_space`` lists become choices; a ``search_ranges`` entry replaces the list of its key
    (except with the grid sampler, which needs finite lists); ``fixed`` keys are left out.
    """
    cls = get_model_class(model)
    space: dict[str, dict[str, Any]] = {k: {"choices": list(v)} for k, v in load_defaults(cls.config_name)[2].items()}
    if sampler != "grid":
        space.update(load_search_ranges(cls.config_name))
    return {k: v for k, v in space.items() if k not in fixed}


def _encode(value: Any) -> Any:
    """Optuna's categorical choices are scalars: a list value (e.g. ``[2, 3]``) travels as its YAML text."""
    return yaml.safe_dump(value, default_flow_style=True).strip() if isinstance(value, list | dict) else value


def _decode(value: Any, choices: list[Any]) -> Any:
    return next((c for c in choices if _encode(c) == value), value)


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one point of ``space`` through an Optuna trial; returns the config overrides."""
    params: dict[str, Any] = {}
    for key, d in space.items():
        if "choices" in d:
            params[key] = _decode(trial.suggest_categorical(key, [_encode(c) for c in d["choices"]]), d["choices"])
        elif d["int"]:
            params[key] = trial.suggest_int(key, int(d["low"]), int(d["high"]), log=d["log"])
        else:
            params[key] = trial.suggest_float(key, float(d["low"]), float(d["high"]), log=d["log"])
    return params


# ---------------------------------------------------------------------- one trial (driver or worker)
class _Pruned(Exception):
    def __init__(self, epoch: int, score: float) -> None:
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch, self.score = epoch, score


def run_tune_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one tuning trial (no test pass) and return how it ended; called by either executor.

    After each validation evaluation the score goes to the Optuna trial (``trial.report``); when
    the pruner says so, training stops there. Returns ``{"state": "complete" | "pruned",
    "value", "valid", "best_epoch", "epochs", "run_dir", "seconds"}``; the caller tells the study.
    """
    from modalrec.errors import RunError
    from modalrec.experiments import benchmark as bench

    optuna = require_extra("optuna", "modalrec tune")
    if spec.get("code") is not None and spec["code"] != code_version():
        raise RunError(f"this worker runs modalrec {code_version()}, the driver {spec['code']}")
    dataset = _trial_dataset(spec)
    # the pruner is not kept in the storage: the worker builds the driver's own from the spec
    study = optuna.load_study(
        study_name=spec["study"], storage=storage_url(spec["storage"]), pruner=_pruner(optuna, *spec["pruner"])
    )
    trial = optuna.trial.Trial(study, spec["trial_id"])
    epochs: list[int] = []

    def on_epoch(epoch: int, score: float) -> None:
        epochs.append(epoch)
        trial.report(score, epoch)
        if spec["prune"] and trial.should_prune():
            raise _Pruned(epoch, score)

    t0 = time.perf_counter()
    run_dir = Path(spec["run_dir"])
    try:
        run_dir, result = bench.train_spec(spec, run_dir, dataset, on_epoch=on_epoch, evaluate_test=False)
    except _Pruned as p:
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


# ---------------------------------------------------------------------- the study
@dataclass
class TuneReport:
    """What ``tune`` wrote: the folder, the study, the best trial and every file."""

    folder: Path
    storage: str
    study_name: str
    finished: int
    ran_here: int
    best: dict[str, Any]
    files: list[Path]


def storage_url(url: str) -> str:
    """``postgresql://…`` with the driver that is installed named explicitly (psycopg 3, else psycopg2).

    SQLAlchemy's default driver for a bare ``postgresql://`` differs between its versions; naming it
    makes the URL work with whichever of the two the environment has.
    """
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util

    rest = url.split("://", 1)[1]
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    raise ModalrecError(
        f"--storage {_safe_url(url)}: no PostgreSQL driver (psycopg) is installed; it is in the 'scale' extra: "
        "pip install -e '.[scale]'"
    )


def _storage(optuna: Any, url: str) -> Any:
    """The study storage; a few tries, as processes started together race to create Optuna's tables."""
    for attempt in range(5):
        try:
            return _open_storage(optuna, url)
        except ModalrecError:
            if attempt == 4 or "duplicate key" not in str(sys.exc_info()[1]).lower():
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _open_storage(optuna: Any, url: str) -> Any:
    try:
        return optuna.storages.RDBStorage(
            storage_url(url), heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
        )
    except ImportError as exc:  # the database driver (psycopg) is missing
        raise ModalrecError(
            f"--storage {_safe_url(url)}: {exc}; the PostgreSQL driver is in the 'scale' extra: "
            "pip install -e '.[scale]'"
        ) from None
    except Exception as exc:  # noqa: BLE001 — SQLAlchemy's errors: unreachable server, bad URL, refused login
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModalrecError(f"--storage {_safe_url(url)}: cannot open the study storage ({reason})") from None


def _safe_url(url: str) -> str:
    """The URL without its password (it goes into error messages and reports)."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def _sampler(optuna: Any, kind: str, seed: int, space: dict[str, dict[str, Any]], budget: int) -> Any:
    if kind == "tpe":
        # Optuna's default of 10 random start-up trials would make a small budget a random search
        startup = min(10, max(3, budget // 4))
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler({k: [_encode(c) for c in d["choices"]] for k, d in space.items()}, seed=seed)
    raise ConfigError(f"--sampler {kind!r}: choose from {', '.join(SAMPLERS)}")


def _pruner(optuna: Any, kind: str, max_epochs: int, startup: int, warmup: int) -> Any:
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {kind!r}: choose from {', '.join(PRUNERS)}")


class _Heartbeat:
    """Records the heartbeat of the trials this process runs, so a process that dies leaves trials that go stale."""

    def __init__(self, storage: Any) -> None:
        self.storage, self.ids = storage, set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS / 2):
            with self._lock:
                ids = list(self.ids)
            for tid in ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception:  # noqa: BLE001 — a missed beat only makes the trial look stale sooner
                    pass

    def add(self, tid: int) -> None:
        with self._lock:
            self.ids.add(tid)
        self.storage.record_heartbeat(tid)

    def discard(self, tid: int) -> None:
        with self._lock:
            self.ids.discard(tid)

    def close(self) -> None:
        self._stop.set()


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
    optuna = require_extra("optuna", "modalrec tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: used on purpose
    # the driver keeps the heartbeats itself (see _Heartbeat), which Optuna only expects of Study.optimize
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    if trials < 1:
        raise ConfigError(f"--trials {trials}: give at least 1")
    cls = get_model_class(model)
    fixed = dict(overrides or {})
    dataset = load_dataset(data_dir).select_modalities(None)
    dataset.select_modalities(modalities)  # an unknown modality fails here
    config = resolve_config(cls.config_name, dataset.name, fixed, preset)
    metric = str(config.valid_metric).lower()
    space = tune_space(cls.name, fixed, sampler)
    if not space:
        raise ConfigError(f"{cls.name}: nothing to search (every search_space key is fixed by --set)")
    for key, d in space.items():  # every value the sampler can draw must be a valid setting
        for v in d["choices"] if "choices" in d else [d["low"], d["high"]]:
            resolve_config(cls.config_name, dataset.name, {**fixed, key: v}, preset, source=f"search space of {key}")
    if sampler == "grid":
        size = math.prod(len(d["choices"]) for d in space.values())
        if trials > size:
            log(f"grid sampler: the grid has {size} points; --trials {trials} → {size}")
            trials = size
    out = Path(out) if out is not None else default_report_dir("tune", dataset.name, cls.name)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = study_name or f"{cls.name}-{dataset.name}"
    store = _storage(optuna, url)
    identity = {
        "model": cls.name,
        "data": dataset.fingerprint,
        "modalities": modalities,
        "fixed": json.loads(json.dumps(fixed, default=str)),
        "metric": metric,
    }
    # A resumed study (or a second process) seeds its sampler past the trials already there: the same seed
    # again would draw the same first points again.
    existing = next((s for s in optuna.get_all_study_summaries(store) if s.study_name == name), None)
    offset = existing.n_trials if existing is not None else 0
    for attempt in range(5):  # two processes creating the same study at once: the loser loads it
        try:
            study = optuna.create_study(
                study_name=name,
                storage=store,
                sampler=_sampler(optuna, sampler, seed + offset, space, trials),
                pruner=_pruner(optuna, pruner, int(config.epochs), pruner_startup, pruner_warmup),
                direction="maximize",
                load_if_exists=True,
            )
            break
        except optuna.exceptions.DuplicatedStudyError:
            if attempt == 4:
                raise
            time.sleep(0.5)
    made_for = study.user_attrs.get("modalrec")
    if made_for is None:
        study.set_user_attr("modalrec", identity)
    elif made_for != identity:
        diff = next(k for k in identity if identity[k] != made_for.get(k))
        raise ModalrecError(
            f"study {name!r} in {_safe_url(url)} was made for another {diff} ({made_for.get(diff)!r}, now "
            f"{identity[diff]!r}); use another --study-name or --out"
        )
    executor = executor if executor is not None else LocalExecutor()
    executor.trial_fn = run_tune_trial
    data_path = str(Path(data_dir).resolve())
    _remember_dataset((data_path, dataset.fingerprint), dataset)
    states = optuna.trial.TrialState
    finished_states = (states.COMPLETE, states.PRUNED)

    def count(upto: int | None = None, which=finished_states) -> int:
        return sum(
            1 for t in study.get_trials(deepcopy=False) if t.state in which and (upto is None or t.number < upto)
        )

    done_before = count()
    log(
        f"tune {cls.name} on {dataset.name}: {len(space)} parameters ({', '.join(space)}), sampler {sampler}, "
        f"pruner {pruner}, selecting on valid {metric}; study {name!r} in {_safe_url(url)} has {done_before} of "
        f"{trials} finished trials → {out}"
    )
    progress_bar = TrialProgress(trials, log, bar=progress)
    progress_bar.update(done=done_before)
    inflight: dict[int, Any] = {}
    heartbeat = _Heartbeat(store)
    ran_here = failures = 0
    budget_taken = False

    def start_one() -> bool:
        """Ask the study for a trial; give it up when the budget is taken (True: one started)."""
        nonlocal budget_taken
        trial = study.ask()
        claimed = count(trial.number, (states.COMPLETE, states.PRUNED, states.RUNNING, states.WAITING))
        if claimed >= trials:  # other processes hold the rest of the budget: this trial is not run
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=states.FAIL)
            budget_taken = True
            return False
        params = suggest(trial, space)
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        n = 1
        while run_dir.exists():  # a folder left by an earlier study in this report: kept, never overwritten
            n += 1
            run_dir = out / "trials" / f"trial-{trial.number:04d}-{n}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("overrides", json.loads(json.dumps(params, default=str)))
        spec = {
            "model": cls.name,
            "sid": f"trial-{trial.number}",
            "seed": int(config.seed),
            "trial_number": trial.number,
            "trial_id": trial._trial_id,
            "study": name,
            "storage": url,
            "prune": pruner != "none",
            "pruner": [pruner, int(config.epochs), pruner_startup, pruner_warmup],
            "metric": metric,
            "overrides": {**fixed, **params},
            "modalities": modalities,
            "data_dir": data_path,
            "fingerprint": dataset.fingerprint,
            "run_dir": str(run_dir.resolve()),
            "preset": preset,
            "device": device,
            "cache_dir": str(cache_dir) if isinstance(cache_dir, Path) else cache_dir,
            "code": code_version(),
        }
        heartbeat.add(trial._trial_id)
        inflight[trial.number] = trial
        executor.submit(spec)
        return True

    try:
        with graceful_interrupts() as flag:
            while True:
                optuna.storages.fail_stale_trials(study)
                while not budget_taken and executor.in_flight() < executor.capacity and flag() is None:
                    if count(None, finished_states) + len(inflight) >= trials or not start_one():
                        break
                if not executor.in_flight():
                    break
                progress_bar.update(running=executor.in_flight())
                try:
                    outcome = executor.next_done(poll=lambda: flag() is not None)
                except _Stop:
                    outcome = None
                if outcome is not None:
                    number = outcome.spec["trial_number"]
                    trial = inflight.pop(number)
                    heartbeat.discard(trial._trial_id)
                    res = outcome.record
                    if outcome.failed:
                        failures += 1
                        trial.set_user_attr("error", outcome.error)
                        study.tell(trial, state=states.FAIL)
                        progress_bar.update(failed=1, running=executor.in_flight())
                        log(f"  trial {number}: FAILED — {outcome.error} [{progress_bar.counts()}]")
                        if failures > trials:
                            raise ModalrecError(f"{failures} trials failed (last: {outcome.error}); stopping the study")
                    else:
                        ran_here += 1
                        trial.set_user_attr("epochs", res["epochs"])
                        trial.set_user_attr("seconds", res["seconds"])
                        if res["state"] == "pruned":
                            study.tell(trial, state=states.PRUNED)
                            n = res["epochs"]
                            what = f"pruned after {n} evaluation{'s' if n != 1 else ''}"
                            what += f" (valid {metric} {res['value']:.4f})"
                        else:
                            trial.set_user_attr("best_epoch", res["best_epoch"])
                            study.tell(trial, res["value"])
                            what = f"valid {metric} {res['value']:.4f} at epoch {res['best_epoch']}"
                        progress_bar.update(done=1, running=executor.in_flight())
                        shown = _short(outcome.spec["overrides"], fixed)
                        log(f"  trial {number} {shown}: {what} ({res['seconds']:.1f}s) [{progress_bar.counts()}]")
                if flag() is not None:
                    stopped = executor.cancel()
                    for trial in inflight.values():  # not finished: they leave the budget to the next run
                        trial.set_user_attr("error", "interrupted")
                        study.tell(trial, state=states.FAIL)
                    inflight.clear()
                    raise Interrupted(
                        f"tune stopped ({stopped} running trial{'s' if stopped != 1 else ''} given up); the study "
                        f"keeps {count()} finished trials — run the same command again to continue it",
                        SIGNAL_EXIT_CODES.get(flag() or 2, 130),
                    )
    finally:
        heartbeat.close()
        if inflight:
            executor.cancel()
            for trial in inflight.values():
                try:
                    trial.set_user_attr("error", "driver stopped")
                    study.tell(trial, state=states.FAIL)
                except Exception:  # noqa: BLE001 — the storage may be what failed
                    pass
        progress_bar.close()
    return _write_report(optuna, study, cls.name, data_dir, fixed, metric, out, url, name, trials, ran_here, log)


def _short(params: dict[str, Any], fixed: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items() if k not in fixed) or "defaults"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------- outputs
def _write_report(
    optuna: Any,
    study: Any,
    model: str,
    data_dir: str | Path,
    fixed: dict[str, Any],
    metric: str,
    out: Path,
    url: str,
    name: str,
    budget: int,
    ran_here: int,
    log: Callable[[str], None],
) -> TuneReport:
    """best_config.yaml, best.json, trials.csv/.md, optimization_history.png, param_importances.png."""
    states = optuna.trial.TrialState
    all_trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    complete = [t for t in all_trials if t.state == states.COMPLETE]
    finished = sum(1 for t in all_trials if t.state in (states.COMPLETE, states.PRUNED))
    if not complete:
        raise ModalrecError(f"study {name!r} has no completed trial (all pruned or failed); see {out}")
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earlier trial
    writer = ReportWriter(out)
    run_dir = Path(best.user_attrs["run_dir"])
    test = _best_test(run_dir, log)
    params = {**fixed, **best.user_attrs.get("overrides", best.params)}
    header = (
        f"# best of {len(complete)} completed trials (study {name!r}): valid {metric} {best.value:.6f}, trial "
        f"{best.number}\n# modalrec train --model {model} --data {data_dir} --config best_config.yaml\n"
    )
    files = [writer.write_text("best_config.yaml", header + yaml.safe_dump(params, sort_keys=False))]
    best_info = {
        "model": model,
        "study": name,
        "storage": _safe_url(url),
        "trial": best.number,
        "params": params,
        "valid_metric": metric,
        "valid": best.value,
        "best_epoch": best.user_attrs.get("best_epoch"),
        "test": test,
        "test_note": "evaluated once, on the best trial's restored best-epoch weights; never used to select",
        "run_dir": str(run_dir),
        "finished_trials": finished,
        "budget": budget,
    }
    files.append(writer.write_json("best.json", best_info))
    keys = sorted({k for t in all_trials for k in t.params})
    head = ["trial", "state", f"valid_{metric}", "epochs", "seconds", *keys, "best", "note"]
    rows = []
    for t in all_trials:
        shown = t.user_attrs.get("overrides", {})
        rows.append(
            [
                str(t.number),
                t.state.name.lower(),
                "" if t.value is None else f"{t.value:.6f}",
                str(t.user_attrs.get("epochs", "")),
                str(t.user_attrs.get("seconds", "")),
                *(_fmt(shown.get(k, t.params.get(k, ""))) for k in keys),
                "1" if t.number == best.number else "0",
                str(t.user_attrs.get("error", "")),
            ]
        )
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows(rows)
    files.append(writer.write_text("trials.csv", buf.getvalue()))
    md = [
        f"**{model}: {len(all_trials)} trials of study {name!r}** — value = best valid {metric_label(metric)} "
        f"(selection on validation only); ▶ = best",
        "",
        "| " + " | ".join(head[:-2] + ["note"]) + " |",
        "|" + "---:|" * 2 + "---:|" * 3 + "---|" * len(keys) + "---|",
    ]
    for r in rows:
        cells = r[:-2] + [r[-1]]
        if r[-2] == "1":
            cells[0] = "▶ " + cells[0]
        md.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if test:
        md += ["", f"Best trial {best.number} on test (evaluated once): " + _brief(test)]
    files.append(writer.write_text("trials.md", "\n".join(md) + "\n"))
    files.append(writer.save_figure("optimization_history.png", _history_figure(all_trials, states, metric)))
    files.append(writer.save_figure("param_importances.png", _importance_figure(optuna, study, len(complete), log)))
    log(
        f"best: trial {best.number}, valid {metric} {best.value:.4f}"
        + (f"; test {_brief(test)} (evaluated once)" if test else "")
    )
    return TuneReport(out, _safe_url(url), name, finished, ran_here, best_info, files)


def _brief(metrics: dict[str, float]) -> str:
    return ", ".join(f"{metric_label(k)} {metrics[k]:.4f}" for k in ("recall@20", "ndcg@20") if k in metrics)


def _best_test(run_dir: Path, log: Callable[[str], None]) -> dict[str, float] | None:
    """Test metrics of the best trial: its saved best-epoch weights, evaluated once (cached in its run folder)."""
    from modalrec.io import write_json, write_npz
    from modalrec.runs import evaluate_run, load_run

    cached = run_dir / "test_metrics.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if not (run_dir / "model.pt").is_file():
        log(f"warning: the best trial's run folder {run_dir} is not on this machine; test not evaluated here")
        return None
    result = evaluate_run(load_run(run_dir), "test")
    write_npz(run_dir / "test_per_user.npz", users=result.users, **result.per_user)
    write_json(cached, result.metrics)
    return result.metrics


def _history_figure(trials: list[Any], states: Any, metric: str):
    from modalrec.analysis.plots import plt  # with the non-interactive backend selected

    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in trials if t.state == states.COMPLETE]
    pruned = [t for t in trials if t.state == states.PRUNED and t.value is not None]
    pruned += [t for t in trials if t.state == states.PRUNED and t.value is None and t.intermediate_values]
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], label="complete", color="tab:blue", zorder=3)
        order = sorted(done, key=lambda t: t.number)
        best, xs, ys = -math.inf, [], []
        for t in order:
            best = max(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    if pruned:
        last = [list(t.intermediate_values.values())[-1] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="gray", label="pruned (last report)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"valid {metric_label(metric)}")
    ax.set_title("Optimisation history (validation; test is never used)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def _importance_figure(optuna: Any, study: Any, n_complete: int, log: Callable[[str], None]):
    from modalrec.analysis.plots import plt  # with the non-interactive backend selected

    fig, ax = plt.subplots(figsize=(7, 4))
    message = None
    importances: dict[str, float] = {}
    if n_complete < 2:
        message = f"parameter importance needs at least 2 completed trials ({n_complete} so far)"
    else:
        try:
            with warnings.catch_warnings():  # e.g. "importances will be equal" on a handful of trials: shown as is
                warnings.simplefilter("ignore", UserWarning)
                importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as exc:  # e.g. every completed trial had the same parameters
            message = f"parameter importance not available: {str(exc).splitlines()[0]}"
        if not importances and message is None:
            message = "parameter importance not available: the completed trials do not vary their parameters"
    if message is not None:
        log(f"note: {message}")
        ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
    else:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (Optuna's default evaluator; normalised to sum to 1)")
    ax.set_title("Parameter importances")
    fig.tight_layout()
    return fig
