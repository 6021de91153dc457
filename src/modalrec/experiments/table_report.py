"""The table report of a benchmark or ablation: the table, its significance tests, the grid and the summary.

Files written into the report folder: ``table.md``/``.csv``/``.tex``; with a target row and
more than one row, ``significance.md``/``.csv``; after a grid search, ``grid.csv``; and
``summary.json`` (every row's setting, runs, means and failures). The test split decides
nothing here: it is only reported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modalrec.experiments.campaign import Experiment
from modalrec.experiments.entries import EntryResult
from modalrec.experiments.rankers import RANKERS
from modalrec.experiments.significance import (
    ALPHA,
    MARK,
    significance,
    significance_csv,
    significance_markdown,
)
from modalrec.experiments.tables import DEFAULT_METRICS, ResultTable
from modalrec.models import get_model_class
from modalrec.models.base import COLD_UNABLE
from modalrec.reporting.writer import ReportWriter


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


def choose_target(results: list[EntryResult], metric: str = "recall@20") -> str:
    """The row with the highest mean test ``metric`` (reporting only; nothing is tuned on it)."""
    scored = [r for r in results if r.records] or results
    return max(scored, key=lambda r: r.test_mean(metric) if r.records else -math.inf).entry.label


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
    sig = _test_and_mark(table, results, target, metrics)
    writer.write_text("table.md", table.to_markdown() + _table_note(target, bool(sig)) + _cold_note(exp, results))
    writer.write_text("table.csv", table.to_csv())
    writer.write_text("table.tex", table.to_latex())
    if sig:
        writer.write_text("significance.md", significance_markdown(sig, target, metrics))
        writer.write_text("significance.csv", significance_csv(sig, target))
    grid = _grid_csv(results, metrics)
    if grid is not None:
        writer.write_text("grid.csv", grid)
    writer.write_json("summary.json", _summary(exp, results, table, target, sig, kind, complete))
    return Report(writer.folder, table, results, sig, target, list(writer.written), exp.trained, exp.reused, exp.failed)


def _test_and_mark(
    table: ResultTable, results: list[EntryResult], target: str | None, metrics: tuple[str, ...]
) -> dict[str, dict[str, dict]]:
    """The target's t-tests against the other rows (``{}`` when there is nothing to test); marks its cells.

    A target cell gets :data:`MARK` where it beats the best other row significantly (p < :data:`ALPHA`).
    """
    tested = [r for r in results if r.records]  # a row whose every trial failed has nothing to test
    if target is None or len(tested) <= 1 or not any(r.entry.label == target for r in tested):
        return {}
    sig = significance(tested, target, metrics)
    for m in metrics:
        best_other = max((r for r in tested if r.entry.label != target), key=lambda r: r.test_mean(m)).entry.label
        s = sig[best_other][m]
        if s["significant"] and s["mean_diff"] > 0:
            table.markers.setdefault(target, {})[m] = MARK
    return sig


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


def _cold_note(exp: Experiment, results: list[EntryResult]) -> str:
    """On a cold-items split: the eval mode, which rows cannot score cold items, how Popularity ranks them."""
    if not exp.dataset.has_cold_items:
        return ""
    unable = [r.entry.label for r in results if _cold_start_kind(r.entry.model) == COLD_UNABLE]
    note = f"Cold-items split, eval mode {_eval_mode(exp)}."
    if unable:
        note += (
            f" ID-only rows ({', '.join(unable)}) cannot score an item without interactions: their cold "
            "items are ranked at random (unable)."
        )
    return note + " Popularity ranks cold items (all without training interactions) in random order.\n"


def _grid_csv(results: list[EntryResult], metrics: tuple[str, ...]) -> str | None:
    """Every grid setting a row searched, its valid and test metrics and whether it was selected (None: no grid)."""
    grid_rows = [(r.entry.label, g) for r in results for g in r.grid_records]
    if not grid_rows:
        return None
    keys = sorted({k for _, g in grid_rows for k in g["grid_setting"]})
    lines = [",".join(["row", *keys, "selected", *(f"valid_{m}" for m in metrics), *(f"test_{m}" for m in metrics)])]
    for label, g in grid_rows:
        res = next(r for r in results if r.entry.label == label)
        setting = g["grid_setting"]
        sel = all(res.overrides.get(k) == v for k, v in setting.items())
        values = [json.dumps(setting[k]).replace(",", ";") if k in setting else "" for k in keys]
        lines.append(
            ",".join(
                [label, *values, str(int(sel))]
                + [f"{g['valid'].get(m, math.nan):.6f}" for m in metrics]
                + [f"{g['test'].get(m, math.nan):.6f}" for m in metrics]
            )
        )
    return "\n".join(lines) + "\n"


def _summary(
    exp: Experiment,
    results: list[EntryResult],
    table: ResultTable,
    target: str | None,
    sig: dict,
    kind: str,
    complete: bool,
) -> dict[str, Any]:
    """``summary.json``: the campaign, every row (its setting, runs, means and failures) and the t-tests."""
    return {
        "kind": kind,
        "complete": complete,
        "data": str(exp.data_dir),
        "dataset": exp.dataset.name,
        "seeds": exp.seeds,
        "base_overrides": exp.base,
        "target": target,
        "retrained": exp.retrained,  # stored runs not reused, and why (model source or configuration changed)
        "rows": [_summary_row(exp, r, table) for r in results],
        "significance": sig,
    }


def _summary_row(exp: Experiment, r: EntryResult, table: ResultTable) -> dict[str, Any]:
    """One row of ``summary.json``."""
    return {
        "label": r.entry.label,
        "model": r.entry.model,
        "cold_start": _cold_start_kind(r.entry.model) if exp.dataset.has_cold_items else None,
        "overrides": r.overrides,
        "modalities": r.entry.modalities,
        "select_metric": r.select_metric,
        "grid_size": len(r.grid_records),
        "runs": [
            {k: rec[k] for k in ("seed", "setting_id", "run_dir", "best_epoch", "valid", "test")} for rec in r.records
        ],
        "test_mean": table.mean[r.entry.label],
        "test_std": table.std[r.entry.label],
        "failed": [
            {k: f[k] for k in ("seed", "setting_id", "failed")} | {"overrides": f["setting"]["overrides"]}
            for f in r.failures
        ],
    }
