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

from modalrec.config import load_defaults, resolve_config
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.errors import Interrupted, ModalrecError, RunError
from modalrec.experiments.report import ReportWriter
from modalrec.experiments.significance import align_users, paired_ttest
from modalrec.experiments.tables import DEFAULT_METRICS, ResultTable, metric_label
from modalrec.io import write_json
from modalrec.models import get_model_class
from modalrec.runs import RESUME_FILE, per_user_metrics, resume_run, train_run
from modalrec.train import TrainResult

ALPHA = 0.05
MARK = "*"


@dataclass
class Entry:
    """One table row: a model with fixed overrides, optionally a grid to search."""

    label: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    modalities: list[str] | None = None
    grid: dict[str, list] | None = None


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
    ) -> None:
        if not seeds:
            raise ModalrecError("give at least one seed")
        self.data_dir = Path(data_dir)
        self.dataset = dataset if dataset is not None else load_dataset(data_dir)
        self.out = Path(out)  # created by the first run or report file, after every check passed
        self.seeds = [int(s) for s in seeds]
        self.base = dict(base_overrides or {})
        self.device, self.cache_dir, self.log = device, cache_dir, log
        self.store = ResultsStore(self.out)
        self.trained = 0
        self.reused = 0

    def check(self, entry: Entry) -> None:
        """Fail early (before any training) on an unknown model, key or value type."""
        cls = get_model_class(entry.model)
        self.dataset.select_modalities(entry.modalities)  # an unknown modality fails here, not mid-run
        keys = {**self.base, **entry.overrides}
        for setting in grid_settings(self._grid(entry)) or [{}]:
            resolve_config(cls.config_name, self.dataset.name, {**keys, **setting})

    def _grid(self, entry: Entry) -> dict[str, list]:
        fixed = {**self.base, **entry.overrides}
        return {k: list(v) for k, v in (entry.grid or {}).items() if k not in fixed}

    def select_metric(self, model: str) -> str:
        """The validation metric a model is selected on: its resolved ``valid_metric``."""
        cls = get_model_class(model)
        return str(resolve_config(cls.config_name, self.dataset.name, self.base).valid_metric).lower()

    def run(self, model: str, overrides: dict[str, Any], modalities: list[str] | None, seed: int) -> dict:
        """Train one run, or return the stored record when it already finished."""
        cls = get_model_class(model)
        dataset = self.dataset.select_modalities(modalities)
        overrides = {**self.base, **overrides}
        setting = {"overrides": overrides, "modalities": modalities, "data": dataset.fingerprint}
        sid = setting_id(cls.name, setting)
        record = self.store.get(cls.name, sid, seed)
        if record is not None:
            self.reused += 1
            self.log(f"  {cls.name} seed {seed} [{sid}] finished earlier — reused")
            return record
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
            out=run_out,
            device=self.device,
            quiet=True,
            cache_dir=self.cache_dir,
            dataset=dataset,
        )

    def run_entry(self, entry: Entry) -> EntryResult:
        """Run an entry: grid search on the first seed (selected on validation), then every seed."""
        metric = self.select_metric(entry.model)
        grid = self._grid(entry)
        chosen = dict(entry.overrides)
        grid_records: list[dict] = []
        if grid:
            settings = grid_settings(grid)
            self.log(f"{entry.label}: grid of {len(settings)} settings, selecting on valid {metric}")
            best_score = -math.inf
            for s in settings:
                rec = self.run(entry.model, {**entry.overrides, **s}, entry.modalities, self.seeds[0])
                rec = {**rec, "grid_setting": s}
                grid_records.append(rec)
                score = rec["valid"].get(metric, -math.inf)
                if score > best_score:  # strict: ties keep the earlier setting
                    best_score, chosen = score, {**entry.overrides, **s}
            self.log(f"{entry.label}: chose {_short(chosen)} (valid {metric} {best_score:.4f})")
        else:
            self.log(f"{entry.label}: {_short({**self.base, **chosen}) or 'defaults'}")
        records = [self.run(entry.model, chosen, entry.modalities, seed) for seed in self.seeds]
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
) -> Report:
    """Table (Markdown, CSV, LaTeX), significance tests, summary JSON and, after a grid, grid.csv."""
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
    writer.write_text("table.md", table.to_markdown() + _table_note(target, bool(sig)))
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
            "data": str(exp.data_dir),
            "dataset": exp.dataset.name,
            "seeds": exp.seeds,
            "base_overrides": exp.base,
            "target": target,
            "rows": [
                {
                    "label": r.entry.label,
                    "model": r.entry.model,
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
) -> Report:
    """Run every model under the same protocol and write the table report (see module docstring).

    ``modalities`` selects the content modalities every model gets (default: all of them).

    ``overrides`` apply to every model (e.g. ``epochs``); with ``grid`` each model's
    ``search_space`` is searched (keys fixed by ``overrides`` are not searched). ``target``
    is the row of the Improv. % line and of the t-tests (default: best mean test Recall@20).
    """
    if not models:
        raise ModalrecError("--models: name at least one model")
    names = [get_model_class(m).name for m in models]
    if len(set(names)) != len(names):
        raise ModalrecError(f"--models lists a model twice: {', '.join(models)}")
    dataset = load_dataset(data_dir)
    out = Path(out) if out is not None else default_report_dir("benchmark", dataset.name)
    exp = Experiment(data_dir, out, seeds or [999], overrides, device, cache_dir, log, dataset)
    entries = []
    for name in names:
        space = load_defaults(get_model_class(name).config_name)[2] if grid else None
        entries.append(Entry(name, name, modalities=modalities, grid=space))
    for e in entries:
        exp.check(e)
    if target is not None:
        target = next((n for n in names if n.lower() == target.lower()), None) or _no_target(target, names)
    log(f"benchmark of {', '.join(names)} on {dataset.name}, seeds {exp.seeds} → {out}")
    results = [exp.run_entry(e) for e in entries]
    if target is None and len(results) > 1:
        target = choose_target(results)
    title = f"{dataset.name}: test metrics" + (" (grid search on validation)" if grid else "")
    return write_table_report(exp, results, target, metrics, title, ReportWriter(out), "benchmark")


def _no_target(target: str, names: list[str]) -> str:
    raise ModalrecError(f"--target {target!r} is not among --models ({', '.join(names)})")
