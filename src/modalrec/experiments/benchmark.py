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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modalrec.config import config_drift, describe_preset, load_defaults, resolve_config
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.data.split import COLD_ITEMS, resplit_dataset
from modalrec.errors import Interrupted, ModalrecError, RunError
from modalrec.evaluate import Evaluator
from modalrec.experiments.rankers import RANKERS, FixedRanker, ranker_name
from modalrec.experiments.report import ReportWriter
from modalrec.experiments.significance import align_users, paired_ttest
from modalrec.experiments.tables import DEFAULT_METRICS, ResultTable, metric_label
from modalrec.io import read_yaml, write_json, write_npz
from modalrec.models import get_model_class
from modalrec.models.base import COLD_UNABLE
from modalrec.runs import RESUME_FILE, new_run_dir, per_user_metrics, resume_run, train_run
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

    def test_values(self, metric: str) -> np.ndarray:
        """The test ``metric`` of each seed's run."""
        return np.array([r["test"].get(metric, math.nan) for r in self.records], dtype=float)


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
        """Store a finished run's record (atomically); returns its path."""
        p = self.path(record["model"], record["setting_id"], record["seed"])
        write_json(p, record)
        return p


class Experiment:
    """Trains (model, setting, seed) runs into a report folder, reusing finished ones."""

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
        self.trained = 0
        self.reused = 0

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

    def run(self, model: str, overrides: dict[str, Any], modalities: list[str] | None, seed: int) -> dict:
        """Train one run, or return the stored record when it already finished."""
        cls = get_model_class(model)
        dataset = self.dataset.select_modalities(modalities)
        overrides = {**self.base, **overrides}
        setting = self._setting(overrides, modalities, dataset)
        sid = setting_id(cls.name, setting)
        record = self.store.get(cls.name, sid, seed)
        drift = self.drift(cls, record, overrides, seed) if record is not None else []
        if record is not None and not drift:
            self.reused += 1
            self.log(f"  {cls.name} seed {seed} [{sid}] finished earlier — reused")
            return record
        if drift:
            what = f"{cls.name} seed {seed} [{sid}] was made with another configuration ({'; '.join(drift)})"
            if self.reuse_only:
                raise NotFinished(f"{what}: not reused")
            kept = self.store.retire(cls.name, sid, seed)
            self.log(f"  {what} — training it again (the old record is kept as {kept.name})")
        if self.reuse_only:
            raise NotFinished(f"{cls.name} seed {seed} [{sid}] has not finished")
        t0 = time.perf_counter()
        try:
            run_dir, result = self._resume_or_train(cls.name, sid, dataset, modalities, {**overrides, "seed": seed})
        except Interrupted as exc:
            where = str(exc).split(" — ")[0]
            raise Interrupted(
                f"{cls.name} seed {seed} [{sid}]: {where} — run the same command again to resume", exc.exit_code
            ) from None
        record = {
            "model": cls.name,
            "seed": seed,
            "setting_id": sid,
            "setting": setting,
            "run_dir": str(Path(run_dir).resolve()),
            "best_epoch": result.best_epoch,
            "valid": result.valid.metrics,
            "test": result.test.metrics,
            "seconds": round(time.perf_counter() - t0, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.store.put(record)
        self.trained += 1
        self.log(
            f"  {cls.name} seed {seed} [{sid}] {_short(overrides) or 'defaults'}: best epoch {result.best_epoch}, "
            f"valid {_brief(result.valid.metrics)}, test {_brief(result.test.metrics)} ({record['seconds']:.1f}s)"
        )
        return record

    def _setting(self, overrides: dict[str, Any], modalities: list[str] | None, dataset: Dataset) -> dict:
        setting = {"overrides": overrides, "modalities": modalities, "data": dataset.fingerprint}
        if self.preset is not None:  # only then: the ids of runs made before --preset existed stay valid
            setting["preset"] = self.preset
        return setting

    def adopt(
        self, model: str, overrides: dict[str, Any], modalities: list[str] | None, seed: int, run_dir: str | Path
    ) -> dict:
        """Record a finished ``modalrec train`` run as this experiment's (model, overrides, seed) trial.

        Refused (one line) unless the run is exactly what :meth:`run` would train: same model,
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
        current = resolve_config(cls.config_name, self.dataset.name, {**overrides, "seed": seed}, self.preset)
        drift = config_drift(cls.config_name, stored["config"], current.to_dict())
        if drift:
            raise ModalrecError(f"{run_dir}: its configuration differs ({'; '.join(drift)})")
        sid = setting_id(cls.name, self._setting(overrides, modalities, dataset))
        record = {
            "model": cls.name,
            "seed": seed,
            "setting_id": sid,
            "setting": self._setting(overrides, modalities, dataset),
            "run_dir": str(run_dir),
            "best_epoch": metrics["best_epoch"],
            "valid": metrics["valid"],
            "test": metrics["test"],
            "seconds": round(float(metrics["timings"]["total_train_seconds"]), 3),
            "finished": time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.localtime(run_dir.joinpath("metrics.json").stat().st_mtime)
            ),
            "adopted": True,
        }
        if self.store.get(cls.name, sid, seed) is not None:  # never overwrite a record: keep it aside
            self.store.retire(cls.name, sid, seed)
        self.store.put(record)
        return record

    def drift(self, cls, record: dict, overrides: dict[str, Any], seed: int) -> list[str]:
        """Differences between a stored run's configuration and what this command resolves today.

        The setting id hashes only the overrides, so a changed default (or a new option) would
        otherwise hand back a run of the old model. A run folder whose config.yaml is gone or
        unreadable cannot be checked and is trusted as it is.
        """
        try:
            stored = read_yaml(Path(record["run_dir"]) / "config.yaml")["config"]
        except (OSError, KeyError, TypeError, ValueError, ModalrecError):
            return []
        current = resolve_config(cls.config_name, self.dataset.name, {**overrides, "seed": seed}, self.preset)
        return config_drift(cls.config_name, stored, current.to_dict())

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

    def _resume_or_train(
        self, model: str, sid: str, dataset: Dataset, modalities: list[str] | None, overrides: dict[str, Any]
    ) -> tuple[Path, TrainResult]:
        """Continue the trial's interrupted run from its resume state, else train it into a fresh folder.

        A leftover folder whose state cannot be resumed (code or data changed, damaged file, none
        written) is kept as it is; the trial then starts again in ``…-try<n>``.
        """
        base = self.out / "runs" / f"{model}-{sid}-seed{overrides['seed']}"
        tries = [base] + [base.with_name(f"{base.name}-try{n}") for n in range(2, 1000)]
        existing = [p for p in tries if p.exists()]
        if existing and (existing[-1] / RESUME_FILE).is_file():
            try:
                run_dir, result = resume_run(
                    existing[-1], overrides, self.device, quiet=True, cache_dir=self.cache_dir, dataset=dataset
                )
                self.log(f"  {model} seed {overrides['seed']} [{sid}] resumed from {existing[-1].name}")
                return run_dir, result
            except RunError as exc:
                self.log(f"  warning: cannot resume {existing[-1]} ({exc}); training the trial again")
        run_out = next(p for p in tries if not p.exists())  # a leftover folder is kept, never overwritten
        return train_run(
            model,
            self.data_dir,
            modalities,
            overrides,
            preset=self.preset,
            out=run_out,
            device=self.device,
            quiet=True,
            cache_dir=self.cache_dir,
            dataset=dataset,
        )

    def run_entry(self, entry: Entry) -> EntryResult:
        """Run an entry: grid search on the first seed (selected on validation), then every seed."""
        if entry.model in RANKERS:
            records = [self.run_ranker(entry.model, seed) for seed in entry.seeds or self.seeds]
            return EntryResult(entry, {}, records, [], "recall@20")
        metric = self.select_metric(entry.model)
        cls = get_model_class(entry.model)
        config = resolve_config(cls.config_name, self.dataset.name, {**self.base, **entry.overrides}, self.preset)
        self.log(f"{entry.label}: {describe_preset(config)}")
        grid = self._grid(entry)
        chosen = dict(entry.overrides)
        grid_records: list[dict] = []
        if grid:
            settings = grid_settings(grid)
            self.log(f"{entry.label}: grid of {len(settings)} settings, selecting on valid {metric}")
            best_score = -math.inf
            for s in settings:
                rec = self.run(entry.model, {**entry.overrides, **s}, entry.modalities, (entry.seeds or self.seeds)[0])
                rec = {**rec, "grid_setting": s}
                grid_records.append(rec)
                score = rec["valid"].get(metric, -math.inf)
                if score > best_score:  # strict: ties keep the earlier setting
                    best_score, chosen = score, {**entry.overrides, **s}
            self.log(f"{entry.label}: chose {_short(chosen)} (valid {metric} {best_score:.4f})")
        else:
            self.log(f"{entry.label}: {_short({**self.base, **chosen}) or 'defaults'}")
        seeds = entry.seeds or self.seeds
        records = []
        for seed in seeds:
            try:
                records.append(self.run(entry.model, chosen, entry.modalities, seed))
            except NotFinished:
                if not self.reuse_only or seed == seeds[0]:  # reuse-only: the seeds that finished, first included
                    raise
                self.log(f"  {entry.label} seed {seed}: not finished — left out of the mean")
        return EntryResult(entry, chosen, records, grid_records, metric)


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
    mean, std, n = {}, {}, {}
    for r in results:
        label = r.entry.label
        mean[label] = {m: float(np.nanmean(r.test_values(m))) for m in metrics}
        std[label] = {m: float(np.std(r.test_values(m), ddof=1)) if len(r.records) > 1 else 0.0 for m in metrics}
        n[label] = len(r.records)
    return ResultTable([r.entry.label for r in results], list(metrics), mean, std, n, target=target, title=title)


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
    return max(results, key=lambda r: float(np.nanmean(r.test_values(metric)))).entry.label


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
    if target is not None and len(results) > 1:
        sig = significance(results, target, metrics)
        for m in metrics:  # mark the target's cell when it beats the best competitor significantly
            best_other = max(
                (r for r in results if r.entry.label != target), key=lambda r: float(np.nanmean(r.test_values(m)))
            ).entry.label
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
                }
                for r in results
            ],
            "significance": sig,
        },
    )
    return Report(writer.folder, table, results, sig, target, list(writer.written), exp.trained, exp.reused)


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
    exp = Experiment(data_dir, out, seeds or [999], overrides, device, cache_dir, log, dataset, preset)
    for e in entries:
        exp.check(e)
    if target is not None:
        target = next((n for n in names if n.lower() == target.lower()), None) or _no_target(target, names)
    log(f"benchmark of {', '.join(names)} on {dataset.name}, seeds {exp.seeds} → {out}")
    searched = any(e.grid for e in entries)
    title = f"{dataset.name}: test metrics" + (" (grid search on validation)" if searched else "")
    exp.reuse_only = reuse_only
    writer = ReportWriter(out)
    results: list[EntryResult] = []
    missing: list[str] = []
    for e in entries:
        try:
            results.append(exp.run_entry(e))
        except NotFinished as exc:
            log(f"{e.label}: left out ({exc})")
            missing.append(e.label)
            continue
        if len(results) + len(missing) < len(entries):  # the rows so far: a long benchmark shows what finished
            partial_target = target if target in {r.entry.label for r in results} else None
            write_table_report(
                exp, results, partial_target, metrics, title + " (partial)", writer, "benchmark", complete=False
            )
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
