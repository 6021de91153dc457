"""The campaign driver: an :class:`Experiment` runs a table's rows as (model, setting, seed) trials.

Each row (:class:`~modalrec.experiments.entries.Entry`) searches its grid on its first seed,
selected on VALIDATION only, then runs the chosen setting on every seed. A finished trial is
never trained again (its record is in the results store), an interrupted one continues from
its resume state, and a trial whose stored configuration no longer resolves the same is
trained again (the old record is kept aside). Trials go to an executor; this process alone
writes the results store.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modalrec.config import config_drift, describe_preset, load_defaults, resolve_config
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.errors import Interrupted, ModalrecError
from modalrec.experiments.entries import Entry, EntryResult, NotFinished, grid_settings
from modalrec.experiments.executors import Executor, LocalExecutor, StopWaiting, TrialOutcome, TrialProgress
from modalrec.experiments.rankers import RANKERS, evaluate_ranker
from modalrec.experiments.store import ResultsStore, describe_key, missing_record, setting_id, trial_key
from modalrec.experiments.trials import announce_resume, remember_dataset, try_folders
from modalrec.interrupt import SIGNAL_EXIT_CODES, graceful_interrupts
from modalrec.io import read_yaml
from modalrec.models import get_model_class
from modalrec.run_files import code_version
from modalrec.run_model import model_record
from modalrec.training.large_data import apply_large_data_mode


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
        self.preset = preset  # the preset every model gets; None or "none": no preset
        self.reuse_only = False  # True: never train; rows with a missing run are left out of the table
        self.store = ResultsStore(self.out)
        self.executor = executor if executor is not None else LocalExecutor()
        self.progress_bar = progress
        self.trained = 0
        self.reused = 0
        self.failed = 0
        self.retrained: list[str] = []  # why stored runs were not reused (the report's summary lists them)

    # ------------------------------------------------------------ describing trials
    def check(self, entry: Entry) -> None:
        """Fail early (before any training) on an unknown model, key or value type."""
        if entry.model in RANKERS:
            self.ranker_config()
            return
        cls = get_model_class(entry.model)
        self.dataset.select_modalities(entry.modalities)  # an unknown modality fails here, not mid-run
        keys = {**self.base, **entry.overrides}
        for setting in grid_settings(self.search_grid(entry)) or [{}]:
            resolve_config(cls, self.dataset.name, {**keys, **setting}, self.preset)

    def search_grid(self, entry: Entry) -> dict[str, list]:
        """The entry's search space without the keys its own or the campaign's overrides fix."""
        fixed = {**self.base, **entry.overrides}
        return {k: list(v) for k, v in (entry.grid or {}).items() if k not in fixed}

    def select_metric(self, model: str) -> str:
        """The validation metric a model is selected on: its resolved ``valid_metric``."""
        cls = get_model_class(model)
        return str(resolve_config(cls, self.dataset.name, self.base, self.preset).valid_metric).lower()

    def trial(self, model: str, overrides: dict[str, Any], modalities: list[str] | None, seed: int) -> dict[str, Any]:
        """The trial spec of (model, overrides, modalities, seed): what :func:`run_trial` takes."""
        cls = get_model_class(model)
        dataset = self.dataset.select_modalities(modalities)
        overrides = {**self.base, **overrides}
        setting = self.setting(overrides, modalities, dataset)
        workers = int(getattr(self.executor, "workers_per_trial", 1))
        if workers > 1:  # only then: a data-parallel run is its own trial, and one-process ids stay as they were
            setting["workers"] = workers
        data_dir = str(self.data_dir.resolve())
        remember_dataset((data_dir, self.dataset.fingerprint), self.dataset)  # local trials reuse it
        cache = str(self.cache_dir) if isinstance(self.cache_dir, Path) else self.cache_dir
        return {
            **model_record(cls),  # model (the name), model_spec (resolved again by the worker), model_source_hash
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
            **({"workers": workers} if workers > 1 else {}),
        }

    def setting(self, overrides: dict[str, Any], modalities: list[str] | None, dataset: Dataset) -> dict:
        """What a trial's setting id hashes: its overrides, modalities, data fingerprint (and preset, when named)."""
        setting = {"overrides": overrides, "modalities": modalities, "data": dataset.fingerprint}
        if self.preset is not None:  # only then: the ids of runs made before --preset existed stay valid
            setting["preset"] = self.preset
        return setting

    # ------------------------------------------------------------ finished runs
    def record_drift(self, spec: dict[str, Any], record: dict) -> list[str]:
        """Differences between a stored run's configuration and what the trial ``spec`` resolves today.

        The setting id hashes only the overrides, so a changed default (or a new option) would
        otherwise hand back a run of the old model. A run folder whose config.yaml or
        metrics.json is gone or unreadable cannot be checked and is trusted as it is.
        """
        try:
            stored, metrics = run_files(Path(record["run_dir"]))
            stored = stored["config"]
        except (OSError, KeyError, TypeError, ValueError, ModalrecError):
            return []
        return self.drift(spec.get("model_spec") or spec["model"], stored, spec["overrides"], metrics)

    def source_changed(self, spec: dict[str, Any], record: dict) -> bool:
        """Whether the model's source changed since a stored run: its recorded source hash (the record's, else
        its run's config.yaml) differs from the trial ``spec``'s. Unknown — a run made before hashes were
        recorded — counts as unchanged, so those runs are reused as before."""
        then = record.get("model_source_hash")
        if then is None:
            try:
                then = read_yaml(Path(record["run_dir"]) / "config.yaml").get("model_source_hash")
            except (OSError, KeyError, TypeError, ValueError, AttributeError, ModalrecError):
                then = None
        now = spec.get("model_source_hash")
        return then is not None and now is not None and then != now

    def drift(self, model: str, stored: dict, overrides: dict[str, Any], metrics: dict) -> list[str]:
        """How a run's stored configuration differs from what ``overrides`` resolve to today (:func:`config_drift`)."""
        cls = get_model_class(model)
        current = resolve_config(cls, self.dataset.name, overrides, self.preset)
        current = apply_large_data_mode(current, self.dataset, cls)
        current = current.to_dict()
        epochs_run = (metrics.get("timings") or {}).get("epochs_run")
        return config_drift(cls, stored, current, None if epochs_run is None else int(epochs_run))

    # ------------------------------------------------------------ reference rankers
    def ranker_config(self):
        """The shared evaluation settings (topk, metrics, eval mode…) a reference ranker is evaluated with."""
        overall = load_defaults(None)[0]
        return resolve_config(None, None, {k: v for k, v in self.base.items() if k in overall}, "none")

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
        # left over by an interrupted run: keep it, write a fresh folder
        run_out = next(p for p in try_folders(self.out / "runs" / f"{kind}-{sid}-seed{seed}") if not p.exists())
        run_dir, metrics = evaluate_ranker(kind, self.dataset, seed, cfg, run_out)
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

    # ------------------------------------------------------------ running rows
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
        return _CampaignRun(self, entries, on_entry).run()


def run_files(run_dir: Path) -> tuple[dict, dict]:
    """(config.yaml, metrics.json) of a run folder, as read; raises what reading them raises."""
    return read_yaml(run_dir / "config.yaml"), json.loads((run_dir / "metrics.json").read_text())


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


class _CampaignRun:
    """One :meth:`Experiment.run_entries` call: the entries' stages, the trials they wait for, the executor loop.

    Every trial a stage needs is looked up first (a finished record is reused, unless its
    configuration drifted); the others are queued once, however many entries wait for them.
    As trials come back, the entries waiting for them advance: a finished grid selects its
    setting and queues its seeds; finished seeds complete the entry.
    """

    def __init__(
        self, exp: Experiment, entries: list[Entry], on_entry: Callable[[int, EntryResult | None], None] | None
    ) -> None:
        self.exp, self.entries, self.on_entry = exp, entries, on_entry
        self.results: list[EntryResult | None] = [None] * len(entries)
        self.states: dict[int, _EntryState] = {}
        self.known: dict[tuple, dict] = {}  # finished, failed or (reuse-only) missing trials of this campaign
        self.waiting: dict[tuple, list[int]] = {}  # queued or running trial -> the entries waiting for it
        self.queue: deque[dict[str, Any]] = deque()
        self.progress = TrialProgress(0, exp.log, bar=exp.progress_bar)

    def run(self) -> list[EntryResult | None]:
        """Start every entry, then run the queued trials until every entry is done."""
        for i, entry in enumerate(self.entries):
            self._start(i, entry)
        executor = self.exp.executor
        try:
            self._drive()
        finally:
            if executor.in_flight():
                executor.cancel()
            self.progress.close()
        return self.results

    # ------------------------------------------------------------ the entries' stages
    def _start(self, i: int, entry: Entry) -> None:
        """Evaluate a reference ranker at once; else log the row's setting and need its grid or its seeds."""
        exp = self.exp
        seeds = entry.seeds or exp.seeds
        if entry.model in RANKERS:
            records = [exp.run_ranker(entry.model, seed) for seed in seeds]
            self.states[i] = _EntryState(entry, "done", "recall@20", [])
            self._finish(i, EntryResult(entry, {}, records, [], "recall@20"))
            return
        metric = exp.select_metric(entry.model)
        cls = get_model_class(entry.model)
        config = resolve_config(cls, exp.dataset.name, {**exp.base, **entry.overrides}, exp.preset)
        exp.log(f"{entry.label}: {describe_preset(config)}")
        grid = exp.search_grid(entry)
        if grid:
            settings = grid_settings(grid)
            exp.log(f"{entry.label}: grid of {len(settings)} settings, selecting on valid {metric}")
            self.states[i] = _EntryState(entry, "grid", metric, [], settings=settings)
            self.progress.add_total(len(settings) + len(seeds) - 1)
            specs = [exp.trial(entry.model, {**entry.overrides, **s}, entry.modalities, seeds[0]) for s in settings]
        else:
            exp.log(f"{entry.label}: {_short({**exp.base, **entry.overrides}) or 'defaults'}")
            self.states[i] = _EntryState(entry, "seeds", metric, [], chosen=dict(entry.overrides))
            self.progress.add_total(len(seeds))
            specs = [exp.trial(entry.model, entry.overrides, entry.modalities, seed) for seed in seeds]
        self._need(i, specs)

    def _need(self, i: int, specs: list[dict[str, Any]]) -> None:
        """Entry ``i``'s stage runs ``specs``: known trials count at once, the others are queued; advance if none."""
        st = self.states[i]
        st.specs, st.pending = specs, set()
        for spec in specs:
            key = trial_key(spec)
            if key in self.known:
                continue
            record = self._reusable(spec, key)
            if record is not None:
                self.known[key] = record
                self.exp.reused += 1
                self.progress.update(done=1)
                self.exp.log(f"  {key[0]} seed {key[2]} [{key[1]}] finished earlier — reused")
            elif self.exp.reuse_only:
                self.known[key] = missing_record(key)
            else:
                st.pending.add(key)
                if key not in self.waiting:
                    self.waiting[key] = []
                    self.queue.append(spec)
                self.waiting[key].append(i)
        if not st.pending:
            self._advance(i)

    def _reusable(self, spec: dict[str, Any], key: tuple) -> dict | None:
        """The stored record of a trial, unless none is stored or its configuration drifted (then retired)."""
        exp = self.exp
        record = exp.store.get(*key)
        if record is None:
            return None
        if exp.source_changed(spec, record):
            what, again = f"{describe_key(key)}: model source changed since that run", ": retrained"
        else:
            drift = exp.record_drift(spec, record)
            if not drift:
                return record
            what = f"{describe_key(key)} was made with another configuration ({'; '.join(drift)})"
            again = " — training it again"
        if exp.reuse_only:
            exp.log(f"  {what}: left out, not reused")
        else:
            kept = exp.store.retire(*key)
            exp.retrained.append(what)
            exp.log(f"  {what}{again} (the old record is kept as {kept.name})")
        return None

    def _advance(self, i: int) -> None:
        """Every trial of entry ``i``'s stage is known: select its grid setting, or complete it."""
        if self.states[i].stage == "grid":
            self._select_setting(i)
        else:
            self._complete(i)

    def _select_setting(self, i: int) -> None:
        """The grid setting best on validation (ties: the earlier one); then the entry needs its seeds."""
        st, exp = self.states[i], self.exp
        entry = st.entry
        best_score, chosen = -math.inf, None
        for s, spec in zip(st.settings, st.specs, strict=True):
            rec = self.known[trial_key(spec)]
            if rec.get("missing"):
                exp.log(f"{entry.label}: left out ({describe_key(trial_key(spec))} has not finished)")
                return self._finish(i, None)
            if rec.get("failed"):
                st.failures.append(rec)
                continue
            st.grid_records.append({**rec, "grid_setting": s})
            score = rec["valid"].get(st.metric, -math.inf)
            if chosen is None or score > best_score:  # strict: ties keep the earlier setting
                best_score, chosen = score, {**entry.overrides, **s}
        if chosen is None:
            exp.log(f"{entry.label}: every grid setting failed — the row has no result")
            return self._finish(i, EntryResult(entry, dict(entry.overrides), [], [], st.metric, st.failures))
        exp.log(f"{entry.label}: chose {_short(chosen)} (valid {st.metric} {best_score:.4f})")
        st.chosen, st.stage = chosen, "seeds"
        seeds = entry.seeds or exp.seeds
        self._need(i, [exp.trial(entry.model, chosen, entry.modalities, seed) for seed in seeds])

    def _complete(self, i: int) -> None:
        """The entry's result over the seeds that finished (reuse-only: left out unless its first seed did)."""
        st, exp = self.states[i], self.exp
        entry = st.entry
        seeds = entry.seeds or exp.seeds
        records = []
        for seed, spec in zip(seeds, st.specs, strict=True):
            rec = self.known[trial_key(spec)]
            if rec.get("missing"):
                if seed == seeds[0]:  # reuse-only: the seeds that finished, the first included
                    exp.log(f"{entry.label}: left out ({describe_key(trial_key(spec))} has not finished)")
                    return self._finish(i, None)
                exp.log(f"  {entry.label} seed {seed}: not finished — left out of the mean")
            elif rec.get("failed"):
                st.failures.append(rec)
            else:
                records.append(rec)
        self._finish(i, EntryResult(entry, st.chosen, records, st.grid_records, st.metric, st.failures))

    def _finish(self, i: int, result: EntryResult | None) -> None:
        self.states[i].stage = "done"
        self.results[i] = result
        if self.on_entry is not None:
            self.on_entry(i, result)

    # ------------------------------------------------------------ the executor loop
    def _drive(self) -> None:
        """Keep the executor full, store each outcome as it comes back, advance the entries that waited for it."""
        executor = self.exp.executor
        with graceful_interrupts() as flag:
            while self.queue or executor.in_flight():
                self._submit_ready()
                self.progress.update(running=min(executor.in_flight(), executor.capacity))
                try:
                    outcome = executor.next_done(poll=lambda: flag() is not None)
                except StopWaiting:
                    outcome = None
                if outcome is not None:  # stored first: a trial that finished is never lost to an interrupt
                    self._take(outcome)
                if flag() is not None:
                    raise self._interrupted(flag())

    def _submit_ready(self) -> None:
        """Submit queued trials while the executor has room, saying at once which continue an interrupted run."""
        executor = self.exp.executor
        while self.queue and executor.in_flight() < executor.capacity:
            spec = self.queue.popleft()
            line = announce_resume(spec)
            if line:
                self.exp.log(f"  {describe_key(trial_key(spec))} {line}")
            executor.submit(spec)

    def _take(self, outcome: TrialOutcome) -> None:
        """Store a trial's outcome, log it, and advance the entries whose stage it completes."""
        executor = self.exp.executor
        key = trial_key(outcome.spec)
        self.known[key] = self._store(outcome)
        self.progress.update(
            done=0 if outcome.failed else 1,
            failed=1 if outcome.failed else 0,
            running=min(executor.in_flight(), executor.capacity),
        )
        self._log(outcome)
        for i in self.waiting.pop(key, []):
            self.states[i].pending.discard(key)
            if not self.states[i].pending and self.states[i].stage != "done":
                self._advance(i)

    def _store(self, outcome: TrialOutcome) -> dict[str, Any]:
        """The driver's part: store the record (or the failure, with its reason); returns what the entry sees."""
        exp, spec = self.exp, outcome.spec
        if outcome.failed:
            exp.failed += 1
            return exp.store.put_failure(spec, outcome.error or "unknown error")
        record = dict(outcome.record)
        notes = record.pop("notes", [])
        for note in notes:
            exp.log(f"  {spec['model']} seed {spec['seed']} [{spec['sid']}] {note}")
        exp.store.put(record)
        exp.trained += 1
        return record

    def _log(self, outcome: TrialOutcome) -> None:
        spec = outcome.spec
        what = _short(spec["setting"]["overrides"]) or "defaults"
        head = f"  {spec['model']} seed {spec['seed']} [{spec['sid']}] {what}"
        if outcome.failed:
            self.exp.log(f"{head}: FAILED — {outcome.error} [{self.progress.counts()}]")
            return
        rec = outcome.record
        self.exp.log(
            f"{head}: best epoch {rec['best_epoch']}, valid {_brief(rec['valid'])}, test {_brief(rec['test'])} "
            f"({rec['seconds']:.1f}s) [{self.progress.counts()}]"
        )

    def _interrupted(self, signum: int | None) -> Interrupted:
        """Stop the trials in flight (their runs keep their resume state); the error that ends the campaign."""
        stopped = self.exp.executor.cancel()
        trained = self.exp.trained
        return Interrupted(
            f"stopped {stopped} running trial{'s' if stopped != 1 else ''} (their runs keep their "
            f"last resume state); {trained} trial{'s' if trained != 1 else ''} trained "
            f"and stored in {self.exp.out} — run the same command again to resume",
            SIGNAL_EXIT_CODES.get(signum or signal.SIGINT, 130),
        )


def _brief(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {metrics[k]:.4f}" for k in ("recall@20", "ndcg@20") if k in metrics)


def _short(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())
