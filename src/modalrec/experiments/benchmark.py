"""Benchmarks: every model under one protocol, optional grid search selected on VALIDATION only.

A report folder holds ``results/<model>/<setting id>/seed-<seed>.json`` — one JSON per
finished run, keyed by (model, seed, setting) where the setting is the canonical JSON of
the overrides, the modality subset and the dataset fingerprint (its SHA-1 prefix is the
setting id) — and the run directories under ``runs/``. A finished run is never trained
again, and a run that was interrupted continues from its resume state, so an interrupted
benchmark resumes where it stopped when the same command (same ``--out``) is run again.
The test split is never used for any decision: grid settings are ranked by the model's
``valid_metric`` (Recall@20 by default) on the first seed; the remaining seeds then run the
chosen setting only.

``--protocol cold-items`` benchmarks item cold start: the dataset (unless it already is a
cold-items split) is split once into ``<report>/data/cold-items-r<ratio>-seed<seed>`` (the
first seed), every model is trained there and evaluated with the cold (default) or all
evaluation mode, and two untrained rows, Popularity and Random, are added. ID-only models
rank cold items at random (see ``Recommender.ranking_scores``); the table says which rows
those are.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modalrec.config import config_drift, describe_preset, load_defaults, resolve_config
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.data.split import COLD_ITEMS, resplit_dataset
from modalrec.errors import DataError, Interrupted, ModalrecError, RunError
from modalrec.evaluate import Evaluator
from modalrec.experiments.executors import Executor, LocalExecutor, TrialOutcome, TrialProgress, _Stop
from modalrec.experiments.rankers import RANKERS, FixedRanker, ranker_name
from modalrec.experiments.report import ReportWriter
from modalrec.experiments.significance import align_users, paired_ttest
from modalrec.experiments.tables import DEFAULT_METRICS, ResultTable, metric_label
from modalrec.interrupt import SIGNAL_EXIT_CODES, graceful_interrupts
from modalrec.io import read_yaml, write_json, write_npz
from modalrec.models import get_model_class
from modalrec.models.base import COLD_UNABLE
from modalrec.runs import (
    RESUME_FILE,
    code_version,
    new_run_dir,
    per_user_metrics,
    resume_refusal,
    resume_run,
    train_run,
)
from modalrec.train import TrainResult

BENCHMARK_PROTOCOLS = ("default", COLD_ITEMS)

ALPHA = 0.05
MARK = "*"


class NotFinished(ModalrecError):
    """A run that a ``reuse_only`` experiment would have had to train."""


@dataclass
class Entry:
    """One table row: a model with fixed overrides, optionally a grid to search."""

    label: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    modalities: list[str] | None = None
    grid: dict[str, list] | None = None
    seeds: list[int] | None = None  # this row's seeds instead of the benchmark's


@dataclass
class EntryResult:
    """The chosen setting of an entry, its finished runs (one per seed) and the grid it searched."""

    entry: Entry
    overrides: dict[str, Any]
    records: list[dict]
    grid_records: list[dict] = field(default_factory=list)
    select_metric: str = "recall@20"
    failures: list[dict] = field(default_factory=list)  # failure records of this entry's trials (grid and seeds)

    def failure_note(self) -> str | None:
        """``seed 2: RuntimeError: …`` — why trials of this row failed (None when none did)."""
        if not self.failures:
            return None
        first = self.failures[0]
        more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        n = len(self.failures)
        return f"{n} trial{'s' if n > 1 else ''}: seed {first['seed']} [{first['setting_id']}]: {first['failed']}{more}"

    def test_values(self, metric: str) -> np.ndarray:
        """The test ``metric`` of each seed's run."""
        return np.array([r["test"].get(metric, math.nan) for r in self.records], dtype=float)

    def test_mean(self, metric: str) -> float:
        """Mean test ``metric`` over the seeds (NaN when every trial of the row failed)."""
        v = self.test_values(metric)
        return float(np.nanmean(v)) if v.size and not np.isnan(v).all() else math.nan


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def setting_id(model: str, setting: dict) -> str:
    """Short stable id of a (model, setting) pair."""
    return hashlib.sha1(_canonical({"model": model.lower(), **setting}).encode()).hexdigest()[:10]


def grid_settings(grid: dict[str, list]) -> list[dict[str, Any]]:
    """All combinations of a search space, in YAML order (the first key varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


class ResultsStore:
    """One JSON file per finished run under ``<folder>/results``, keyed by (model, seed, setting)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, model: str, sid: str, seed: int) -> Path:
        """Where the record of (model, setting id, seed) lives."""
        return self.folder / "results" / model / sid / f"seed-{seed}.json"

    def get(self, model: str, sid: str, seed: int) -> dict | None:
        """The record of a finished run, or None."""
        p = self.path(model, sid, seed)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError:
            return None  # a damaged record counts as not finished

    def retire(self, model: str, sid: str, seed: int) -> Path:
        """Move a record aside (``seed-N.superseded-K.json``) so a new run can take its place; returns where."""
        p = self.path(model, sid, seed)
        k = 1
        while (dest := p.with_name(f"{p.stem}.superseded-{k}.json")).exists():
            k += 1
        p.rename(dest)
        return dest

    def put(self, record: dict) -> Path:
        """Store a finished run's record (atomically); returns its path. An earlier failure record goes."""
        p = self.path(record["model"], record["setting_id"], record["seed"])
        write_json(p, record)
        self.failure_path(record["model"], record["setting_id"], record["seed"]).unlink(missing_ok=True)
        return p

    def failure_path(self, model: str, sid: str, seed: int) -> Path:
        """Where the failure record of (model, setting id, seed) lives (beside the record it did not get)."""
        return self.folder / "results" / model / sid / f"seed-{seed}.failed.json"

    def put_failure(self, spec: dict, reason: str) -> dict:
        """Record that a trial failed and why (a failed trial is not finished: it runs again on resume)."""
        record = {
            "model": spec["model"],
            "seed": spec["seed"],
            "setting_id": spec["sid"],
            "setting": spec["setting"],
            "failed": reason,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(self.failure_path(spec["model"], spec["sid"], spec["seed"]), record)
        return record


_DATASETS: dict[tuple[str, str], Dataset] = {}  # this process's loaded datasets, by (path, fingerprint)


def _trial_dataset(spec: dict[str, Any]) -> Dataset:
    """The trial's dataset view: the one this process already holds, else loaded from ``data_dir`` and checked."""
    key = (spec["data_dir"], spec["fingerprint"])
    dataset = _DATASETS.get(key)
    if dataset is None:
        dataset = load_dataset(spec["data_dir"])
        if dataset.fingerprint != spec["fingerprint"]:
            raise DataError(
                spec["data_dir"],
                "is not the dataset the campaign started with (content hash differs); every worker must see the same "
                "data at the same path",
            )
        _remember_dataset(key, dataset)
    return dataset.select_modalities(spec["modalities"])


def _remember_dataset(key: tuple[str, str], dataset: Dataset) -> None:
    _DATASETS.pop(key, None)
    _DATASETS[key] = dataset
    while len(_DATASETS) > 4:  # a long-lived worker keeps only the latest few
        _DATASETS.pop(next(iter(_DATASETS)))


def trial_key(spec_or_record: dict[str, Any]) -> tuple[str, str, int]:
    """(model, setting id, seed): what identifies a trial in the results store."""
    sid = spec_or_record.get("sid", spec_or_record.get("setting_id"))
    return spec_or_record["model"], str(sid), int(spec_or_record["seed"])


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one trial, or continue its interrupted run, and return its record; writes no results store.

    ``spec`` is a plain dict (picklable, so a Ray task can take it): ``model``, ``sid``, ``seed``,
    ``setting``, ``overrides`` (seed included), ``modalities``, ``data_dir`` and ``fingerprint`` of
    the dataset, ``out`` (the report folder; the run goes to ``<out>/runs/<model>-<sid>-seed<seed>``),
    ``preset``, ``device``, ``cache_dir`` and ``code`` (the driver's :func:`code_version`: a worker
    running other code refuses). The local and the Ray executor both call this function.
    """
    if spec.get("code") is not None and spec["code"] != code_version():
        raise RunError(
            f"this worker runs modalrec {code_version()}, the driver {spec['code']}; "
            "install the same version everywhere"
        )
    dataset = _trial_dataset(spec)
    t0 = time.perf_counter()
    notes: list[str] = []
    run_dir, result = _resume_or_train(spec, dataset, notes)
    return {
        "model": spec["model"],
        "seed": spec["seed"],
        "setting_id": spec["sid"],
        "setting": spec["setting"],
        "run_dir": str(Path(run_dir).resolve()),
        "best_epoch": result.best_epoch,
        "valid": result.valid.metrics,
        "test": result.test.metrics,
        "seconds": round(time.perf_counter() - t0, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "notes": notes,
    }


def _resume_or_train(spec: dict[str, Any], dataset: Dataset, notes: list[str]) -> tuple[Path, TrainResult]:
    """Continue the trial's interrupted run from its resume state, else train it into a fresh folder.

    A leftover folder whose state cannot be resumed (code or data changed, damaged file, none
    written) is kept as it is; the trial then starts again in ``…-try<n>``.
    """
    overrides = dict(spec["overrides"])
    tries = _trial_folders(spec)
    leftover = _leftover_run(tries)
    if leftover is not None:
        try:
            run_dir, result = resume_run(
                leftover, overrides, spec["device"], quiet=True, cache_dir=spec["cache_dir"], dataset=dataset
            )
            notes.append(f"resumed from {leftover.name}")
            return run_dir, result
        except RunError as exc:
            notes.append(f"warning: cannot resume {leftover} ({exc}); training the trial again")
    run_out = next(p for p in tries if not p.exists())  # a leftover folder is kept, never overwritten
    return train_spec(spec, run_out, dataset, overrides)


def _trial_folders(spec: dict[str, Any]) -> list[Path]:
    """The run folders a trial may use, in order: ``<model>-<sid>-seed<seed>``, then ``…-try2``, ``…-try3`` …"""
    base = Path(spec["out"]) / "runs" / f"{spec['model']}-{spec['sid']}-seed{spec['overrides']['seed']}"
    return [base] + [base.with_name(f"{base.name}-try{n}") for n in range(2, 1000)]


def _leftover_run(tries: list[Path]) -> Path | None:
    """The trial's latest existing folder when it holds a resume state (an interrupted run), else None."""
    existing = [p for p in tries if p.exists()]
    return existing[-1] if existing and (existing[-1] / RESUME_FILE).is_file() else None


def announce_resume(spec: dict[str, Any]) -> str | None:
    """A line for the driver's log, before the trial is submitted: it continues an interrupted run,
    or that run cannot be continued (the code changed, the state is damaged) and the trial starts over.

    The trial itself decides (:func:`_resume_or_train`); this only says it at once instead of when
    the trial ends, hours later. None when the trial has no interrupted run.
    """
    leftover = _leftover_run(_trial_folders(spec))
    if leftover is None:
        return None
    why = resume_refusal(leftover)
    if why is None:
        return f"continues its interrupted run {leftover.name}"
    return f"cannot resume {leftover.name} ({why}); training the trial again, the old folder is kept"


def train_spec(
    spec: dict[str, Any], out: Path, dataset: Dataset, overrides: dict[str, Any] | None = None, **fit_options: Any
) -> tuple[Path, TrainResult]:
    """Train a trial spec into ``out`` (quietly, on the spec's device and cache); ``fit_options`` go to train_run."""
    return train_run(
        spec["model"],
        spec["data_dir"],
        spec["modalities"],
        spec["overrides"] if overrides is None else overrides,
        preset=spec["preset"],
        out=out,
        device=spec["device"],
        quiet=True,
        cache_dir=spec["cache_dir"],
        dataset=dataset,
        **fit_options,
    )


@dataclass
class _EntryState:
    """Where one entry of a campaign stands: its grid on the first seed, then its seeds."""

    entry: Entry
    stage: str  # "grid" | "seeds" | "done"
    metric: str
    specs: list[dict[str, Any]]  # this stage's trials
    settings: list[dict[str, Any]] = field(default_factory=list)  # grid stage: the setting of each spec
    pending: set = field(default_factory=set)
    chosen: dict[str, Any] = field(default_factory=dict)
    grid_records: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)


class Experiment:
    """Runs (model, setting, seed) trials of a report folder through an executor, reusing finished ones.

    The trials go to ``executor`` (default: :class:`~modalrec.experiments.executors.LocalExecutor`,
    one after another in this process); this process (the driver) writes every record into the
    results store as trials come back, and records a failed trial (``seed-<seed>.failed.json``,
    with its reason) without stopping the others. A failed trial is tried again when the same
    command runs again.
    """

    def __init__(
        self,
        data_dir: str | Path,
        out: str | Path,
        seeds: list[int],
        base_overrides: dict[str, Any] | None = None,
        device: str = "cpu",
        cache_dir: str | Path | bool | None = None,
        log: Callable[[str], None] = print,
        dataset: Dataset | None = None,
        preset: str | None = None,
        executor: Executor | None = None,
        progress: bool = False,
    ) -> None:
        if not seeds:
            raise ModalrecError("give at least one seed")
        self.data_dir = Path(data_dir)
        self.dataset = dataset if dataset is not None else load_dataset(data_dir)
        self.out = Path(out)  # created by the first run or report file, after every check passed
        self.seeds = [int(s) for s in seeds]
        self.base = dict(base_overrides or {})
        self.device, self.cache_dir, self.log = device, cache_dir, log
        self.preset = preset  # None: the preset named like the dataset, if any; "none": no preset
        self.reuse_only = False  # True: never train; rows with a missing run are left out of the table
        self.store = ResultsStore(self.out)
        self.executor = executor if executor is not None else LocalExecutor()
        self.progress_bar = progress
        self.trained = 0
        self.reused = 0
        self.failed = 0

    def check(self, entry: Entry) -> None:
        """Fail early (before any training) on an unknown model, key or value type."""
        if entry.model in RANKERS:
            self.ranker_config()
            return
        cls = get_model_class(entry.model)
        self.dataset.select_modalities(entry.modalities)  # an unknown modality fails here, not mid-run
        keys = {**self.base, **entry.overrides}
        for setting in grid_settings(self._grid(entry)) or [{}]:
            resolve_config(cls.config_name, self.dataset.name, {**keys, **setting}, self.preset)

    def _grid(self, entry: Entry) -> dict[str, list]:
        fixed = {**self.base, **entry.overrides}
        return {k: list(v) for k, v in (entry.grid or {}).items() if k not in fixed}

    def select_metric(self, model: str) -> str:
        """The validation metric a model is selected on: its resolved ``valid_metric``."""
        cls = get_model_class(model)
        return str(resolve_config(cls.config_name, self.dataset.name, self.base, self.preset).valid_metric).lower()

    def trial(self, model: str, overrides: dict[str, Any], modalities: list[str] | None, seed: int) -> dict[str, Any]:
        """The trial spec of (model, overrides, modalities, seed): what :func:`run_trial` takes."""
        cls = get_model_class(model)
        dataset = self.dataset.select_modalities(modalities)
        overrides = {**self.base, **overrides}
        setting = self._setting(overrides, modalities, dataset)
        data_dir = str(self.data_dir.resolve())
        _remember_dataset((data_dir, self.dataset.fingerprint), self.dataset)  # local trials reuse it
        cache = str(self.cache_dir) if isinstance(self.cache_dir, Path) else self.cache_dir
        return {
            "model": cls.name,
            "sid": setting_id(cls.name, setting),
            "seed": int(seed),
            "setting": setting,
            "overrides": {**overrides, "seed": int(seed)},
            "modalities": modalities,
            "data_dir": data_dir,
            "fingerprint": self.dataset.fingerprint,
            "out": str(self.out.resolve()),
            "preset": self.preset,
            "device": self.device,
            "cache_dir": cache,
            "code": code_version(),
        }

    def _setting(self, overrides: dict[str, Any], modalities: list[str] | None, dataset: Dataset) -> dict:
        setting = {"overrides": overrides, "modalities": modalities, "data": dataset.fingerprint}
        if self.preset is not None:  # only then: the ids of runs made before --preset existed stay valid
            setting["preset"] = self.preset
        return setting

    def adopt(
        self, model: str, overrides: dict[str, Any], modalities: list[str] | None, seed: int, run_dir: str | Path
    ) -> dict:
        """Record a finished ``modalrec train`` run as this experiment's (model, overrides, seed) trial.

        Refused (one line) unless the run is exactly the trial :meth:`trial` describes: same model,
        same data (content hash and modalities), and a resolved configuration without
        :func:`config_drift`. The record says ``"adopted": true``; the run folder stays where it is.
        """
        cls = get_model_class(model)
        run_dir = Path(run_dir).resolve()
        dataset = self.dataset.select_modalities(modalities)
        overrides = {**self.base, **overrides}
        try:
            stored = read_yaml(run_dir / "config.yaml")
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModalrecError(f"{run_dir}: not a finished run ({exc.__class__.__name__}: {exc})") from None
        if stored.get("model") != cls.name:
            raise ModalrecError(f"{run_dir}: a {stored.get('model')} run, not {cls.name}")
        data = stored.get("data") or {}
        if data.get("fingerprint") != dataset.fingerprint or list(data.get("modalities") or []) != dataset.modalities:
            raise ModalrecError(f"{run_dir}: trained on other data or modalities than {self.data_dir}")
        if metrics.get("test") is None:
            raise ModalrecError(f"{run_dir}: has no test metrics (a tune trial); train it with `modalrec train`")
        drift = self._drift(cls.name, stored["config"], {**overrides, "seed": seed}, metrics)
        if drift:
            raise ModalrecError(f"{run_dir}: its configuration differs ({'; '.join(drift)})")
        setting = self._setting(overrides, modalities, dataset)
        sid = setting_id(cls.name, setting)
        record = {
            "model": cls.name,
            "seed": seed,
            "setting_id": sid,
            "setting": setting,
            "run_dir": str(run_dir),
            "best_epoch": metrics["best_epoch"],
            "valid": metrics["valid"],
            "test": metrics["test"],
            "seconds": round(float(metrics["timings"]["total_train_seconds"]), 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime((run_dir / "metrics.json").stat().st_mtime)),
            "adopted": True,
        }
        if self.store.get(cls.name, sid, seed) is not None:  # never overwrite a record: keep it aside
            self.store.retire(cls.name, sid, seed)
        self.store.put(record)
        return record

    def record_drift(self, spec: dict[str, Any], record: dict) -> list[str]:
        """Differences between a stored run's configuration and what the trial ``spec`` resolves today.

        The setting id hashes only the overrides, so a changed default (or a new option) would
        otherwise hand back a run of the old model. A run folder whose config.yaml or
        metrics.json is gone or unreadable cannot be checked and is trusted as it is.
        """
        try:
            run_dir = Path(record["run_dir"])
            stored = read_yaml(run_dir / "config.yaml")["config"]
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, KeyError, TypeError, ValueError, ModalrecError):
            return []
        return self._drift(spec["model"], stored, spec["overrides"], metrics)

    def _drift(self, model: str, stored: dict, overrides: dict[str, Any], metrics: dict) -> list[str]:
        cls = get_model_class(model)
        current = resolve_config(cls.config_name, self.dataset.name, overrides, self.preset).to_dict()
        epochs_run = (metrics.get("timings") or {}).get("epochs_run")
        return config_drift(cls.config_name, stored, current, None if epochs_run is None else int(epochs_run))

    def ranker_config(self):
        """The shared evaluation settings (topk, metrics, eval mode…) a reference ranker is evaluated with."""
        overall = load_defaults("overall")[0]
        return resolve_config("overall", None, {k: v for k, v in self.base.items() if k in overall}, "none")

    def run_ranker(self, kind: str, seed: int) -> dict:
        """Evaluate a reference ranker (valid and test, same protocol as the models), or reuse its record."""
        cfg = self.ranker_config()
        setting = {"ranker": kind, "eval_mode": cfg.get("eval_mode"), "data": self.dataset.fingerprint}
        sid = setting_id(kind, setting)
        record = self.store.get(kind, sid, seed)
        if record is not None:
            self.reused += 1
            return record
        t0 = time.perf_counter()
        ranker = FixedRanker(kind, self.dataset, seed)
        results = {}
        for split in ("valid", "test"):
            ev = Evaluator(
                self.dataset,
                split,
                list(cfg.topk),
                tuple(cfg.metrics),
                mask_valid=split == "test" and bool(cfg.mask_valid_at_test),
                block_size=int(cfg.eval_batch_size),
                mode=cfg.get("eval_mode"),
            )
            results[split] = ev.evaluate(ranker)
        run_out, n = self.out / "runs" / f"{kind}-{sid}-seed{seed}", 1
        while run_out.exists():  # left over by an interrupted run: keep it, write a fresh folder
            n += 1
            run_out = self.out / "runs" / f"{kind}-{sid}-seed{seed}-try{n}"
        run_dir = new_run_dir(kind, self.dataset.name, run_out)
        for split, res in results.items():
            write_npz(run_dir / f"{split}_per_user.npz", users=res.users, **res.per_user)
        metrics = {split: res.metrics for split, res in results.items()}
        write_json(run_dir / "metrics.json", {"model": kind, "eval_mode": results["test"].mode, **metrics})
        record = {
            "model": kind,
            "seed": seed,
            "setting_id": sid,
            "setting": setting,
            "run_dir": str(run_dir.resolve()),
            "best_epoch": -1,
            "valid": metrics["valid"],
            "test": metrics["test"],
            "seconds": round(time.perf_counter() - t0, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.store.put(record)
        self.trained += 1
        self.log(f"  {kind} seed {seed}: test {_brief(record['test'])} (untrained reference ranker)")
        return record

    def run_entry(self, entry: Entry) -> EntryResult:
        """Run one entry (see :meth:`run_entries`)."""
        (result,) = self.run_entries([entry])
        if result is None:
            raise NotFinished(f"{entry.label}: has not finished")
        return result

    def run_entries(
        self, entries: list[Entry], on_entry: Callable[[int, EntryResult | None], None] | None = None
    ) -> list[EntryResult | None]:
        """Run entries: each one's grid on its first seed (selected on validation), then every seed.

        All entries' trials go to the executor together (a grid's seeds after its grid), so a Ray
        executor runs trials of different rows at once; with the local executor they run one
        after another in entry order. ``on_entry(index, result)`` is called as each entry
        completes. ``None`` in the result list: under ``reuse_only``, an entry whose grid or
        first seed has not finished (left out).
        """
        results: list[EntryResult | None] = [None] * len(entries)
        states: dict[int, _EntryState] = {}
        known: dict[tuple, dict] = {}  # finished, failed or (reuse-only) missing trials of this campaign
        waiting: dict[tuple, list[int]] = {}
        queue: deque[dict[str, Any]] = deque()
        progress = TrialProgress(0, self.log, bar=self.progress_bar)

        def need(i: int, specs: list[dict[str, Any]]) -> None:
            st = states[i]
            st.specs, st.pending = specs, set()
            for spec in specs:
                key = trial_key(spec)
                if key not in known:
                    record = self.store.get(*key)
                    drift = self.record_drift(spec, record) if record is not None else []
                    if drift:
                        what = f"{key[0]} seed {key[2]} [{key[1]}] was made with another configuration"
                        what += f" ({'; '.join(drift)})"
                        if self.reuse_only:
                            self.log(f"  {what}: left out, not reused")
                        else:
                            kept = self.store.retire(*key)
                            self.log(f"  {what} — training it again (the old record is kept as {kept.name})")
                        record = None
                    if record is not None:
                        known[key] = record
                        self.reused += 1
                        progress.update(done=1)
                        self.log(f"  {key[0]} seed {key[2]} [{key[1]}] finished earlier — reused")
                    elif self.reuse_only:
                        known[key] = {"missing": True, **_key_dict(key)}
                    else:
                        st.pending.add(key)
                        if key not in waiting:
                            waiting[key] = []
                            queue.append(spec)
                        waiting[key].append(i)
            if not st.pending:
                advance(i)

        def finish(i: int, result: EntryResult | None) -> None:
            states[i].stage = "done"
            results[i] = result
            if on_entry is not None:
                on_entry(i, result)

        def advance(i: int) -> None:
            st = states[i]
            entry, seeds = st.entry, st.entry.seeds or self.seeds
            if st.stage == "grid":
                best_score = -math.inf
                chosen = None
                for s, spec in zip(st.settings, st.specs, strict=True):
                    rec = known[trial_key(spec)]
                    if rec.get("missing"):
                        self.log(f"{entry.label}: left out ({_describe_key(trial_key(spec))} has not finished)")
                        return finish(i, None)
                    if rec.get("failed"):
                        st.failures.append(rec)
                        continue
                    st.grid_records.append({**rec, "grid_setting": s})
                    score = rec["valid"].get(st.metric, -math.inf)
                    if chosen is None or score > best_score:  # strict: ties keep the earlier setting
                        best_score, chosen = score, {**entry.overrides, **s}
                if chosen is None:
                    self.log(f"{entry.label}: every grid setting failed — the row has no result")
                    return finish(i, EntryResult(entry, dict(entry.overrides), [], [], st.metric, st.failures))
                self.log(f"{entry.label}: chose {_short(chosen)} (valid {st.metric} {best_score:.4f})")
                st.chosen, st.stage = chosen, "seeds"
                return need(i, [self.trial(entry.model, chosen, entry.modalities, seed) for seed in seeds])
            records = []
            for seed, spec in zip(seeds, st.specs, strict=True):
                rec = known[trial_key(spec)]
                if rec.get("missing"):
                    if seed == seeds[0]:  # reuse-only: the seeds that finished, the first included
                        self.log(f"{entry.label}: left out ({_describe_key(trial_key(spec))} has not finished)")
                        return finish(i, None)
                    self.log(f"  {entry.label} seed {seed}: not finished — left out of the mean")
                elif rec.get("failed"):
                    st.failures.append(rec)
                else:
                    records.append(rec)
            finish(i, EntryResult(entry, st.chosen, records, st.grid_records, st.metric, st.failures))

        for i, entry in enumerate(entries):
            seeds = entry.seeds or self.seeds
            if entry.model in RANKERS:
                records = [self.run_ranker(entry.model, seed) for seed in seeds]
                states[i] = _EntryState(entry, "done", "recall@20", [])
                finish(i, EntryResult(entry, {}, records, [], "recall@20"))
                continue
            metric = self.select_metric(entry.model)
            cls = get_model_class(entry.model)
            config = resolve_config(cls.config_name, self.dataset.name, {**self.base, **entry.overrides}, self.preset)
            self.log(f"{entry.label}: {describe_preset(config)}")
            grid = self._grid(entry)
            if grid:
                settings = grid_settings(grid)
                self.log(f"{entry.label}: grid of {len(settings)} settings, selecting on valid {metric}")
                states[i] = _EntryState(entry, "grid", metric, [], settings=settings)
                progress.add_total(len(settings) + len(seeds) - 1)
                specs = [
                    self.trial(entry.model, {**entry.overrides, **s}, entry.modalities, seeds[0]) for s in settings
                ]
            else:
                self.log(f"{entry.label}: {_short({**self.base, **entry.overrides}) or 'defaults'}")
                states[i] = _EntryState(entry, "seeds", metric, [], chosen=dict(entry.overrides))
                progress.add_total(len(seeds))
                specs = [self.trial(entry.model, entry.overrides, entry.modalities, seed) for seed in seeds]
            need(i, specs)

        executor = self.executor
        try:
            with graceful_interrupts() as flag:
                while queue or executor.in_flight():
                    while queue and executor.in_flight() < executor.capacity:
                        next_spec = queue.popleft()
                        line = announce_resume(next_spec)
                        if line:
                            self.log(f"  {_describe_key(trial_key(next_spec))} {line}")
                        executor.submit(next_spec)
                    progress.update(running=min(executor.in_flight(), executor.capacity))
                    try:
                        outcome = executor.next_done(poll=lambda: flag() is not None)
                    except _Stop:
                        outcome = None
                    if outcome is not None:  # stored first: a trial that finished is never lost to an interrupt
                        key = trial_key(outcome.spec)
                        known[key] = self._store_outcome(outcome)
                        progress.update(
                            done=0 if outcome.failed else 1,
                            failed=1 if outcome.failed else 0,
                            running=min(executor.in_flight(), executor.capacity),
                        )
                        self._log_outcome(outcome, progress)
                        for i in waiting.pop(key, []):
                            states[i].pending.discard(key)
                            if not states[i].pending and states[i].stage != "done":
                                advance(i)
                    if flag() is not None:
                        stopped = executor.cancel()
                        raise Interrupted(
                            f"stopped {stopped} running trial{'s' if stopped != 1 else ''} (their runs keep their "
                            f"last resume state); {self.trained} trial{'s' if self.trained != 1 else ''} trained "
                            f"and stored in {self.out} — run the same command again to resume",
                            SIGNAL_EXIT_CODES.get(flag() or signal.SIGINT, 130),
                        )
        finally:
            if executor.in_flight():
                executor.cancel()
            progress.close()
        return results

    def _store_outcome(self, outcome: TrialOutcome) -> dict[str, Any]:
        """The driver's part: store the record (or the failure, with its reason); returns what the entry sees."""
        spec = outcome.spec
        if outcome.failed:
            self.failed += 1
            return self.store.put_failure(spec, outcome.error or "unknown error")
        record = dict(outcome.record)
        notes = record.pop("notes", [])
        for note in notes:
            self.log(f"  {spec['model']} seed {spec['seed']} [{spec['sid']}] {note}")
        self.store.put(record)
        self.trained += 1
        return record

    def _log_outcome(self, outcome: TrialOutcome, progress: TrialProgress) -> None:
        spec = outcome.spec
        what = _short(spec["setting"]["overrides"]) or "defaults"
        head = f"  {spec['model']} seed {spec['seed']} [{spec['sid']}] {what}"
        if outcome.failed:
            self.log(f"{head}: FAILED — {outcome.error} [{progress.counts()}]")
            return
        rec = outcome.record
        self.log(
            f"{head}: best epoch {rec['best_epoch']}, valid {_brief(rec['valid'])}, test {_brief(rec['test'])} "
            f"({rec['seconds']:.1f}s) [{progress.counts()}]"
        )


def _key_dict(key: tuple) -> dict[str, Any]:
    return {"model": key[0], "setting_id": key[1], "seed": key[2]}


def _describe_key(key: tuple) -> str:
    return f"{key[0]} seed {key[2]} [{key[1]}]"


def _brief(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {metrics[k]:.4f}" for k in ("recall@20", "ndcg@20") if k in metrics)


def _short(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


# ---------------------------------------------------------------------- aggregation
def per_user_mean(result: EntryResult, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, per-user test metric averaged over the seeds' runs) of an entry."""
    users, total, count = None, None, 0
    for rec in result.records:
        pu = per_user_metrics(rec["run_dir"], "test")
        u, v = pu["users"], pu[metric].astype(np.float64)
        if users is None:
            users, total = u, v.copy()
        else:
            users, total, v = align_users(users, total, u, v)
            total = total + v
        count += 1
    return users, total / max(count, 1)


def summary_table(
    results: list[EntryResult], metrics: tuple[str, ...] = DEFAULT_METRICS, target: str | None = None, title: str = ""
) -> ResultTable:
    """Mean ± std over seeds per row and metric."""
    mean, std, n, failed = {}, {}, {}, {}
    for r in results:
        label = r.entry.label
        mean[label] = {m: r.test_mean(m) for m in metrics}
        std[label] = {m: float(np.std(r.test_values(m), ddof=1)) if len(r.records) > 1 else 0.0 for m in metrics}
        n[label] = len(r.records)
        if r.failures:
            failed[label] = r.failure_note()
    return ResultTable(
        [r.entry.label for r in results], list(metrics), mean, std, n, target=target, title=title, failed=failed
    )


def significance(
    results: list[EntryResult], target: str, metrics: tuple[str, ...] = DEFAULT_METRICS
) -> dict[str, dict[str, dict]]:
    """Paired t-tests of the target row against every other row over per-user test metrics.

    Per user, each row's metric is averaged over its seeds; the test pairs the users both
    rows evaluated (all test users of the dataset). Returns ``{other: {metric: {...}}}``.
    """
    by_label = {r.entry.label: r for r in results}
    out: dict[str, dict[str, dict]] = {}
    for metric in metrics:
        tu, tv = per_user_mean(by_label[target], metric)
        for r in results:
            if r.entry.label == target:
                continue
            ou, ov = per_user_mean(r, metric)
            common, a, b = align_users(tu, tv, ou, ov)
            t = paired_ttest(a, b)
            out.setdefault(r.entry.label, {})[metric] = {
                "t": t.statistic,
                "p": t.pvalue,
                "df": t.df,
                "mean_diff": t.mean_diff,
                "users": int(common.size),
                "significant": bool(t.pvalue < ALPHA) if not math.isnan(t.pvalue) else False,
            }
    return out


def significance_markdown(sig: dict[str, dict[str, dict]], target: str, metrics: tuple[str, ...]) -> str:
    """The t-test p-values as a Markdown table (rows = other rows, columns = metrics)."""
    lines = [
        f"Paired two-sided t-test of **{target}** against each other row over per-user test metrics "
        f"(per-user values averaged over seeds); p-values, `{MARK}` where p < {ALPHA}.",
        "",
        "| vs | " + " | ".join(metric_label(m) for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for other, per in sig.items():
        cells = []
        for m in metrics:
            p = per[m]["p"]
            cells.append("–" if math.isnan(p) else f"{p:.2e}{MARK if per[m]['significant'] else ''}")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def significance_csv(sig: dict[str, dict[str, dict]], target: str) -> str:
    """The t-tests as CSV: one line per (other row, metric) with t, p, df, mean difference, users."""
    rows = ["target,other,metric,t,p,df,mean_diff,users,significant"]
    for other, per in sig.items():
        for m, s in per.items():
            rows.append(
                f"{target},{other},{m},{s['t']:.6g},{s['p']:.6g},{s['df']},{s['mean_diff']:.6g},{s['users']},"
                f"{int(s['significant'])}"
            )
    return "\n".join(rows) + "\n"


def choose_target(results: list[EntryResult], metric: str = "recall@20") -> str:
    """The row with the highest mean test ``metric`` (reporting only; nothing is tuned on it)."""
    scored = [r for r in results if r.records] or results
    return max(scored, key=lambda r: r.test_mean(metric) if r.records else -math.inf).entry.label


@dataclass
class Report:
    """What a benchmark/ablation wrote: the folder, the table, tests and every file."""

    folder: Path
    table: ResultTable
    results: list[EntryResult]
    significance: dict
    target: str | None
    files: list[Path]
    trained: int
    reused: int
    failed: int = 0


def write_table_report(
    exp: Experiment,
    results: list[EntryResult],
    target: str | None,
    metrics: tuple[str, ...],
    title: str,
    writer: ReportWriter,
    kind: str,
    complete: bool = True,
) -> Report:
    """Table (Markdown, CSV, LaTeX), significance tests, summary JSON and, after a grid, grid.csv.

    ``complete`` is False for the partial report written after each finished row; the
    summary JSON records it.
    """
    table = summary_table(results, metrics, target, title)
    sig: dict = {}
    tested = [r for r in results if r.records]  # a row whose every trial failed has nothing to test
    if target is not None and len(tested) > 1 and any(r.entry.label == target for r in tested):
        sig = significance(tested, target, metrics)
        for m in metrics:  # mark the target's cell when it beats the best competitor significantly
            best_other = max((r for r in tested if r.entry.label != target), key=lambda r: r.test_mean(m)).entry.label
            s = sig[best_other][m]
            if s["significant"] and s["mean_diff"] > 0:
                table.markers.setdefault(target, {})[m] = MARK
    unable = [r.entry.label for r in results if _cold_start_kind(r.entry.model) == COLD_UNABLE]
    cold_note = ""
    if exp.dataset.has_cold_items:
        cold_note = (
            f"Cold-items split, eval mode {_eval_mode(exp)}."
            + (
                f" ID-only rows ({', '.join(unable)}) cannot score an item without interactions: their cold "
                "items are ranked at random (unable)."
                if unable
                else ""
            )
            + " Popularity ranks cold items (all without training interactions) in random order.\n"
        )
    writer.write_text("table.md", table.to_markdown() + _table_note(target, bool(sig)) + cold_note)
    writer.write_text("table.csv", table.to_csv())
    writer.write_text("table.tex", table.to_latex())
    if sig:
        writer.write_text("significance.md", significance_markdown(sig, target, metrics))
        writer.write_text("significance.csv", significance_csv(sig, target))
    grid_rows = [(r.entry.label, g) for r in results for g in r.grid_records]
    if grid_rows:
        keys = sorted({k for _, g in grid_rows for k in g["grid_setting"]})
        lines = [
            ",".join(["row", *keys, "selected", *(f"valid_{m}" for m in metrics), *(f"test_{m}" for m in metrics)])
        ]
        for label, g in grid_rows:
            res = next(r for r in results if r.entry.label == label)
            sel = all(res.overrides.get(k) == v for k, v in g["grid_setting"].items())
            lines.append(
                ",".join(
                    [
                        label,
                        *(
                            json.dumps(g["grid_setting"][k]).replace(",", ";") if k in g["grid_setting"] else ""
                            for k in keys
                        ),
                        str(int(sel)),
                    ]
                    + [f"{g['valid'].get(m, math.nan):.6f}" for m in metrics]
                    + [f"{g['test'].get(m, math.nan):.6f}" for m in metrics]
                )
            )
        writer.write_text("grid.csv", "\n".join(lines) + "\n")
    writer.write_json(
        "summary.json",
        {
            "kind": kind,
            "complete": complete,
            "data": str(exp.data_dir),
            "dataset": exp.dataset.name,
            "seeds": exp.seeds,
            "base_overrides": exp.base,
            "target": target,
            "rows": [
                {
                    "label": r.entry.label,
                    "model": r.entry.model,
                    "cold_start": _cold_start_kind(r.entry.model) if exp.dataset.has_cold_items else None,
                    "overrides": r.overrides,
                    "modalities": r.entry.modalities,
                    "select_metric": r.select_metric,
                    "grid_size": len(r.grid_records),
                    "runs": [
                        {k: rec[k] for k in ("seed", "setting_id", "run_dir", "best_epoch", "valid", "test")}
                        for rec in r.records
                    ],
                    "test_mean": table.mean[r.entry.label],
                    "test_std": table.std[r.entry.label],
                    "failed": [
                        {k: f[k] for k in ("seed", "setting_id", "failed")} | {"overrides": f["setting"]["overrides"]}
                        for f in r.failures
                    ],
                }
                for r in results
            ],
            "significance": sig,
        },
    )
    return Report(writer.folder, table, results, sig, target, list(writer.written), exp.trained, exp.reused, exp.failed)


def _cold_start_kind(model: str) -> str:
    """How a row scores cold items: a model's ``cold_start`` (content | unable), or ``reference`` for a ranker."""
    return "reference" if model in RANKERS else get_model_class(model).cold_start


def _eval_mode(exp: Experiment) -> str:
    mode = exp.base.get("eval_mode")
    return str(mode) if mode is not None else ("cold" if exp.dataset.has_cold_items else "warm")


def _table_note(target: str | None, tested: bool) -> str:
    note = "\nTest metrics, mean ± std over seeds; best **bold**, second <u>underlined</u>."
    if target is not None:
        note += f" Improv. % = {target} over the best other row."
    if tested:
        note += f" `{MARK}`: paired t-test p < {ALPHA} against the best other row (see significance.md)."
    return note + "\n"


def default_report_dir(kind: str, dataset_name: str, extra: str = "") -> Path:
    """``reports/<kind>-<dataset>[-extra]`` — stable, so re-running the same command resumes."""
    name = f"{kind}-{dataset_name}" + (f"-{extra}" if extra else "")
    return Path("reports") / "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


def load_plan(path: str | Path) -> list[Entry]:
    """Table rows from a plan YAML: ``rows: [{model, label?, set?, grid?, modalities?, seeds?}, ...]``.

    ``set`` fixes overrides for that row only; ``grid`` is a search space of its own
    (``{key: [values, ...]}``) or the word ``default`` for the model's ``search_space``;
    ``seeds`` replaces the benchmark's seeds for that row (e.g. one seed for a costly variant).
    Labels must be unique (they name the table rows and the t-tests).
    """
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ModalrecError(f"{path}: cannot read the plan ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ModalrecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ModalrecError(f"{path}: a plan needs a non-empty list under 'rows:'")
    entries: list[Entry] = []
    for n, row in enumerate(rows, 1):
        where = f"{path} row {n}"
        if not isinstance(row, dict) or "model" not in row:
            raise ModalrecError(f"{where}: each row is a mapping with at least 'model:'")
        unknown = set(row) - {"model", "label", "set", "grid", "modalities", "seeds"}
        if unknown:
            raise ModalrecError(
                f"{where}: unknown field {sorted(unknown)[0]!r} (model, label, set, grid, modalities, seeds)"
            )
        seeds = row.get("seeds")
        if seeds is not None and (
            not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds)
        ):
            raise ModalrecError(f"{where}: 'seeds' must be a non-empty list of integers")
        try:
            cls = get_model_class(str(row["model"]))
        except ModalrecError as exc:
            raise ModalrecError(f"{where}: {exc}") from None
        overrides = row.get("set") or {}
        if not isinstance(overrides, dict):
            raise ModalrecError(f"{where}: 'set' must map keys to values")
        grid = row.get("grid")
        if grid == "default":
            grid = load_defaults(cls.config_name)[2]
        elif grid is not None and (
            not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values())
        ):
            raise ModalrecError(f"{where}: 'grid' must be 'default' or map each key to a non-empty list")
        modalities = row.get("modalities")
        if isinstance(modalities, str):
            modalities = [m.strip() for m in modalities.split(",") if m.strip()]
        entries.append(Entry(str(row.get("label") or cls.name), cls.name, dict(overrides), modalities, grid, seeds))
    labels = [e.label for e in entries]
    dup = next((lb for lb in labels if labels.count(lb) > 1), None)
    if dup is not None:
        raise ModalrecError(f"{path}: two rows are labelled {dup!r}; give each a unique 'label:'")
    return entries


def run_benchmark(
    models: list[str],
    data_dir: str | Path,
    seeds: list[int] | None = None,
    grid: bool = False,
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    target: str | None = None,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    device: str = "cpu",
    cache_dir: str | Path | bool | None = None,
    log: Callable[[str], None] = print,
    modalities: list[str] | None = None,
    plan: list[Entry] | None = None,
    preset: str | None = None,
    reuse_only: bool = False,
    protocol: str = "default",
    cold_ratio: float = 0.2,
    eval_mode: str | None = None,
    executor: Executor | None = None,
    progress: bool = False,
) -> Report:
    """Run every model under the same protocol and write the table report (see module docstring).

    ``reuse_only`` trains nothing: the table holds the rows whose grid and first seed have
    finished in ``out`` (averaged over the seeds that finished; the summary gives each row's
    runs); the others are named in the log, and the summary is marked incomplete.

    ``plan`` (from :func:`load_plan`) replaces ``models``/``grid`` with explicit rows: a
    row's own overrides, modalities and search space; ``modalities`` then fills in only
    for rows that name none.

    ``modalities`` selects the content modalities every model gets (default: all of them).
    ``preset`` names every model's preset; by default a model's preset named like the dataset
    applies, ``"none"`` applies none. The applied preset is logged for each model.

    ``overrides`` apply to every model (e.g. ``epochs``); with ``grid`` each model's
    ``search_space`` is searched (keys fixed by ``overrides`` are not searched). ``target``
    is the row of the Improv. % line and of the t-tests (default: best mean test Recall@20).

    ``protocol`` ``cold-items`` (see the module docstring) splits with ``cold_ratio`` unless
    the dataset already declares cold items, and adds the Popularity and Random rows.
    ``eval_mode`` (warm | cold | all; None = the dataset's default) applies to every row.
    ``Popularity``/``Random`` may also be named in ``models`` under any protocol.

    ``executor`` runs the trials (default: one after another in this process; see
    :mod:`modalrec.experiments.executors`); ``progress`` shows a bar of trials done / running /
    failed. A failed trial is recorded and marked in the table; the others go on.
    """
    if protocol not in BENCHMARK_PROTOCOLS:
        raise ModalrecError(f"--protocol {protocol!r}: choose from {', '.join(BENCHMARK_PROTOCOLS)}")
    overrides = dict(overrides or {})
    if eval_mode is not None:
        overrides["eval_mode"] = eval_mode
    if plan:
        entries = [
            e if e.modalities is not None else Entry(e.label, e.model, e.overrides, modalities, e.grid, e.seeds)
            for e in plan
        ]
    else:
        if not models:
            raise ModalrecError("--models: name at least one model")
        model_names = [ranker_name(m) or get_model_class(m).name for m in models]
        if len(set(model_names)) != len(model_names):
            raise ModalrecError(f"--models lists a model twice: {', '.join(models)}")
        entries = []
        for name in model_names:
            space = load_defaults(get_model_class(name).config_name)[2] if grid and name not in RANKERS else None
            entries.append(Entry(name, name, modalities=modalities, grid=space))
    dataset = load_dataset(data_dir)
    out = Path(out) if out is not None else default_report_dir("benchmark", dataset.name, _protocol_tag(protocol))
    if protocol == COLD_ITEMS:
        present = {e.model for e in entries}
        entries += [Entry(r, r) for r in RANKERS if r not in present]
        if not dataset.has_cold_items:
            split_seed = (seeds or [999])[0]
            split_dir = out / "data" / f"cold-items-r{cold_ratio:g}-seed{split_seed}"
            if not split_dir.exists():  # deterministic: a resumed benchmark finds the same split here
                log(f"cold-items split of {data_dir} (ratio {cold_ratio:g}, seed {split_seed}) → {split_dir}")
                resplit_dataset(data_dir, COLD_ITEMS, split_seed, split_dir, cold_ratio=cold_ratio)
            data_dir = split_dir
            dataset = load_dataset(split_dir)
    names = [e.label for e in entries]
    exp = Experiment(
        data_dir, out, seeds or [999], overrides, device, cache_dir, log, dataset, preset, executor, progress
    )
    for e in entries:
        exp.check(e)
    if target is not None:
        target = next((n for n in names if n.lower() == target.lower()), None) or _no_target(target, names)
    log(f"benchmark of {', '.join(names)} on {dataset.name}, seeds {exp.seeds} → {out}")
    searched = any(e.grid for e in entries)
    title = f"{dataset.name}: test metrics" + (" (grid search on validation)" if searched else "")
    exp.reuse_only = reuse_only
    writer = ReportWriter(out)
    done: dict[int, EntryResult | None] = {}

    def on_entry(i: int, result: EntryResult | None) -> None:
        done[i] = result
        finished = [done[j] for j in sorted(done) if done[j] is not None]
        if finished and len(done) < len(entries):  # the rows so far: a long benchmark shows what finished
            partial_target = target if target in {r.entry.label for r in finished} else None
            write_table_report(
                exp, finished, partial_target, metrics, title + " (partial)", writer, "benchmark", complete=False
            )

    outcomes = exp.run_entries(entries, on_entry)
    results = [r for r in outcomes if r is not None]
    missing = [e.label for e, r in zip(entries, outcomes, strict=True) if r is None]
    if not results:
        raise ModalrecError(f"no row of the benchmark has finished runs in {out} (--reuse-only trains nothing)")
    if target is not None and target in missing:
        target = None
    if target is None and len(results) > 1:
        target = choose_target(results)
    return write_table_report(exp, results, target, metrics, title, writer, "benchmark", complete=not missing)


def _protocol_tag(protocol: str) -> str:
    return "" if protocol == "default" else protocol


def _no_target(target: str, names: list[str]) -> str:
    raise ModalrecError(f"--target {target!r} is not among --models ({', '.join(names)})")
