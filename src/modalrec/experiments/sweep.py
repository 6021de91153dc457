"""One- or two-parameter sensitivity sweeps (MeAIM supplement Figs. 1–4).

Every value (or pair of values) is trained for every seed through the resumable results
store of :mod:`modalrec.experiments.store`; the report has a table of valid and test
metrics per point (the point best on validation is marked — the test metrics are only
plotted, never used to choose) and a figure of Recall/NDCG@10/@20 on test: line plots for
one parameter, heat maps for two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from modalrec.data.dataset import load_dataset
from modalrec.errors import ModalrecError
from modalrec.experiments.campaign import Experiment
from modalrec.experiments.entries import Entry, EntryResult
from modalrec.experiments.executors import Executor
from modalrec.experiments.store import default_report_dir
from modalrec.models import get_model_class, model_spec_of
from modalrec.reporting.labels import metric_label
from modalrec.reporting.writer import ReportWriter

SWEEP_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")  # the table's test columns and the figure's panels


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside brackets: ``[2,3],[3,3]`` → ``['[2,3]', '[3,3]']``."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_param(spec: str) -> tuple[str, list[Any]]:
    """``name=v1,v2,…`` → (name, [values]); each value is read as YAML (``0.1``, ``true``, ``[2, 3]``)."""
    if "=" not in spec:
        raise ModalrecError(f"--param {spec!r} must look like name=v1,v2,...")
    name, raw = spec.split("=", 1)
    name = name.strip()
    values = []
    for item in _split_top_level(raw):
        try:
            values.append(yaml.safe_load(item))
        except yaml.YAMLError:
            raise ModalrecError(f"--param {name}: value {item!r} is not valid YAML") from None
    if not name or not values:
        raise ModalrecError(f"--param {spec!r}: give a name and at least one value")
    if len({repr(v) for v in values}) != len(values):
        raise ModalrecError(f"--param {name}: a value is listed twice")
    return name, values


@dataclass
class SweepReport:
    """What a sweep wrote and its per-point results."""

    folder: Path
    params: list[tuple[str, list[Any]]]
    points: list[tuple[dict[str, Any], EntryResult]]
    selected: dict[str, Any]
    files: list[Path]
    figures: list[Path]
    trained: int
    reused: int
    failed: int = 0


def run_sweep(
    model: str,
    data_dir: str | Path,
    params: list[str],
    seeds: list[int] | None = None,
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    cache_dir: str | Path | bool | None = None,
    log: Callable[[str], None] = print,
    executor: Executor | None = None,
    progress: bool = False,
) -> SweepReport:
    """Train ``model`` (any model spec) at every point of one or two parameters' values and write table + figure."""
    parsed = _parse_params(params)
    cls = get_model_class(model)
    name = cls.name
    base = dict(overrides or {})
    clash = [p for p, _ in parsed if p in base]
    if clash:
        raise ModalrecError(f"{clash[0]} is swept; do not also fix it with --set")
    dataset = load_dataset(data_dir)
    tag = "_".join(p for p, _ in parsed)
    out = Path(out) if out is not None else default_report_dir("sweep", dataset.name, f"{name}-{tag}")
    exp = Experiment(data_dir, out, seeds or [999], base, device, cache_dir, log, dataset, None, executor, progress)
    points = _points(parsed)
    entries = [Entry(", ".join(f"{k}={v}" for k, v in pt.items()), model_spec_of(cls), pt) for pt in points]
    for e in entries:
        exp.check(e)
    log(f"sweep of {name} over {tag} on {dataset.name}: {len(points)} points × {len(exp.seeds)} seeds → {out}")
    results = [r for r in exp.run_entries(entries) if r is not None]
    select = results[0].select_metric
    best = _best_on_valid(results, select, out)
    writer = ReportWriter(out)
    keys = [p for p, _ in parsed]
    title = f"**{name} sensitivity on {dataset.name}** (mean ± std over seeds {exp.seeds}; "
    title += f"▶ = best on validation {metric_label(select)})"
    writer.write_text("sweep.md", _sweep_markdown(title, keys, points, results, select, best))
    writer.write_text("sweep.csv", _sweep_csv(keys, points, results, select))
    fig_path = writer.save_figure("sweep.png", _sweep_figure(f"{name} on {dataset.name}", parsed, results, best))
    summary = {
        "kind": "sweep",
        "model": name,
        "model_spec": model_spec_of(cls),
        "data": str(data_dir),
        "seeds": exp.seeds,
        "params": {k: v for k, v in parsed},
        "base_overrides": base,
        "selected_on_valid": points[best],
        "select_metric": select,
        "retrained": exp.retrained,
        "points": [
            {"point": pt, "runs": [{k: r[k] for k in ("seed", "run_dir", "valid", "test")} for r in res.records]}
            for pt, res in zip(points, results, strict=True)
        ],
    }
    writer.write_json("summary.json", summary)
    pairs = list(zip(points, results, strict=True))
    files = list(writer.written)
    return SweepReport(out, parsed, pairs, points[best], files, [fig_path], exp.trained, exp.reused, exp.failed)


def _parse_params(params: list[str]) -> list[tuple[str, list[Any]]]:
    """``--param`` (and ``--param2``) parsed; one or two parameters, not the same one twice."""
    if not 1 <= len(params) <= 2:
        raise ModalrecError("give one or two parameters (--param and --param2)")
    parsed = [parse_param(p) for p in params]
    if len(parsed) == 2 and parsed[0][0] == parsed[1][0]:
        raise ModalrecError(f"--param and --param2 both set {parsed[0][0]}")
    return parsed


def _points(parsed: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every value of one parameter, or every pair of two (the first parameter varies slowest)."""
    if len(parsed) == 1:
        return [{parsed[0][0]: v} for v in parsed[0][1]]
    return [{parsed[0][0]: a, parsed[1][0]: b} for a in parsed[0][1] for b in parsed[1][1]]


def _best_on_valid(results: list[EntryResult], select: str, out: Path) -> int:
    """The index of the point with the best mean validation ``select`` metric (ties: the first)."""
    # a point whose every trial failed has no mean and cannot be selected
    valid_means = [
        float(np.mean([r["valid"][select] for r in res.records])) if res.records else -math.inf for res in results
    ]
    if all(v == -math.inf for v in valid_means):
        raise ModalrecError(f"every trial of the sweep failed (first: {results[0].failure_note()}); see {out}/results")
    return int(np.argmax(valid_means))


def _mean_std(res: EntryResult, split: str, m: str) -> tuple[float, float]:
    """Mean and sample std over the seeds of a point's ``split`` metric ``m`` (std 0 for one seed, NaN for none)."""
    v = np.array([r[split].get(m, math.nan) for r in res.records], dtype=float)
    if not v.size:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _sweep_markdown(
    title: str,
    keys: list[str],
    points: list[dict[str, Any]],
    results: list[EntryResult],
    select: str,
    best: int,
) -> str:
    """``sweep.md``: a row per point, valid ``select`` and the test metrics (mean ± std); ▶ marks the selected."""
    head = [*keys, f"valid {metric_label(select)}", *(f"test {metric_label(m)}" for m in SWEEP_METRICS)]
    md = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(keys) + "---:|" * (len(head) - len(keys))]
    for i, (pt, res) in enumerate(zip(points, results, strict=True)):
        stats = [_mean_std(res, "valid", select), *(_mean_std(res, "test", m) for m in SWEEP_METRICS)]
        cells = [f"{mean:.4f}" + (f" ± {std:.4f}" if len(res.records) > 1 else "") for mean, std in stats]
        row = [*(str(pt[k]) for k in keys)]
        if i == best:
            row[0] = "▶ " + row[0]
        if res.failures:
            row[-1] += f" (failed: {res.failure_note()})"
        md.append("| " + " | ".join(row + cells) + " |")
    return "\n".join(md) + "\n"


def _sweep_csv(keys: list[str], points: list[dict[str, Any]], results: list[EntryResult], select: str) -> str:
    """``sweep.csv``: a line per point with its seeds, mean valid ``select`` and each test metric's mean and std."""
    lines = [",".join([*keys, "seeds", f"valid_{select}", *(c for m in SWEEP_METRICS for c in (m, f"{m}_std"))])]
    for pt, res in zip(points, results, strict=True):
        row = [*(yaml.safe_dump(pt[k], default_flow_style=True).strip().replace(",", ";") for k in keys)]
        row += [str(len(res.records)), f"{_mean_std(res, 'valid', select)[0]:.6f}"]
        for m in SWEEP_METRICS:
            tm, ts = _mean_std(res, "test", m)
            row += [f"{tm:.6f}", f"{ts:.6f}"]
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def _sweep_figure(what: str, parsed: list[tuple[str, list[Any]]], results: list[EntryResult], best: int):
    """Line plots of the test metrics over one parameter, or heat maps over two; the selected point marked."""
    from modalrec.reporting import plots

    keys = [p for p, _ in parsed]
    title = f"{what}: sensitivity to {' × '.join(keys)} (test)"
    if len(parsed) == 1:
        mean = {m: np.array([_mean_std(r, "test", m)[0] for r in results]) for m in SWEEP_METRICS}
        std = {m: np.array([_mean_std(r, "test", m)[1] for r in results]) for m in SWEEP_METRICS}
        return plots.sweep_lines(keys[0], parsed[0][1], mean, std, title, selected=best)
    n0, n1 = len(parsed[0][1]), len(parsed[1][1])
    grids = {m: np.array([_mean_std(r, "test", m)[0] for r in results]).reshape(n0, n1) for m in SWEEP_METRICS}
    title += "; red box: selected on validation"
    return plots.sweep_heatmaps(
        (keys[0], keys[1]), (parsed[0][1], parsed[1][1]), grids, title, selected=divmod(best, n1)
    )
