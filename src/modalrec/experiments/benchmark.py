"""Benchmarks: every model under one protocol, optional grid search selected on VALIDATION only.

Every (model, setting, seed) trial is a run of the report folder's results store
(:mod:`modalrec.experiments.store`): a finished run is never trained again, and a run that
was interrupted continues from its resume state, so an interrupted benchmark resumes where it
stopped when the same command (same ``--out``) is run again. The test split is never used for
any decision: grid settings are ranked by the model's ``valid_metric`` (Recall@20 by default)
on the first seed; the remaining seeds then run the chosen setting only.

``--protocol cold-items`` benchmarks item cold start: the dataset (unless it already is a
cold-items split) is split once into ``<report>/data/cold-items-r<ratio>-seed<seed>`` (the
first seed), every model is trained there and evaluated with the cold (default) or all
evaluation mode, and two untrained rows, Popularity and Random, are added. ID-only models
rank cold items at random (see ``Recommender.ranking_scores``); the table says which rows
those are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modalrec.config import load_defaults
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.data.split import COLD_ITEMS, resplit_dataset
from modalrec.errors import ModalrecError
from modalrec.experiments.campaign import Experiment
from modalrec.experiments.entries import Entry, EntryResult
from modalrec.experiments.executors import Executor
from modalrec.experiments.rankers import RANKERS, ranker_name
from modalrec.experiments.store import default_report_dir
from modalrec.experiments.table_report import Report, choose_target, write_table_report
from modalrec.experiments.tables import DEFAULT_METRICS
from modalrec.models import get_model_class, model_spec_of
from modalrec.reporting.writer import ReportWriter

BENCHMARK_PROTOCOLS = ("default", COLD_ITEMS)


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

    ``plan`` (from :func:`~modalrec.experiments.plans.load_plan`) replaces ``models``/``grid`` with
    explicit rows: a row's own overrides, modalities and search space; ``modalities`` then fills in
    only for rows that name none.

    ``modalities`` selects the content modalities every model gets (default: all of them).
    ``preset`` names every model's preset; by default (or ``"none"``) no preset applies, not even
    one named like the dataset. The applied preset is logged for each model.

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
    entries = _entries(models, grid, modalities, plan)
    dataset = load_dataset(data_dir)
    out = Path(out) if out is not None else default_report_dir("benchmark", dataset.name, _protocol_tag(protocol))
    if protocol == COLD_ITEMS:
        present = {e.model for e in entries}
        entries += [Entry(r, r) for r in RANKERS if r not in present]
        data_dir, dataset = _cold_items_data(data_dir, dataset, out, seeds, cold_ratio, log)
    names = [e.label for e in entries]
    exp = Experiment(
        data_dir, out, seeds or [999], overrides, device, cache_dir, log, dataset, preset, executor, progress
    )
    for e in entries:
        exp.check(e)
    target = _named_target(target, names)
    log(f"benchmark of {', '.join(names)} on {dataset.name}, seeds {exp.seeds} → {out}")
    title = f"{dataset.name}: test metrics" + (" (grid search on validation)" if any(e.grid for e in entries) else "")
    exp.reuse_only = reuse_only
    writer = ReportWriter(out)
    partial = _PartialReports(exp, len(entries), target, metrics, title, writer)
    outcomes = exp.run_entries(entries, partial.on_entry)
    results = [r for r in outcomes if r is not None]
    missing = [e.label for e, r in zip(entries, outcomes, strict=True) if r is None]
    if not results:
        raise ModalrecError(f"no row of the benchmark has finished runs in {out} (--reuse-only trains nothing)")
    target = _final_target(target, results, missing)
    return write_table_report(exp, results, target, metrics, title, writer, "benchmark", complete=not missing)


def _entries(models: list[str], grid: bool, modalities: list[str] | None, plan: list[Entry] | None) -> list[Entry]:
    """The table rows: the plan's (``modalities`` filling in for rows naming none), else one per model."""
    if plan:
        return [
            e if e.modalities is not None else Entry(e.label, e.model, e.overrides, modalities, e.grid, e.seeds)
            for e in plan
        ]
    if not models:
        raise ModalrecError("--models: name at least one model")
    rows = [_model_row(m) for m in models]
    if len({label for label, _ in rows}) != len(rows):
        raise ModalrecError(f"--models lists a model twice: {', '.join(models)}")
    entries = []
    for label, name in rows:
        space = load_defaults(get_model_class(name))[2] if grid and name not in RANKERS else None
        entries.append(Entry(label, name, modalities=modalities, grid=space))
    return entries


def _model_row(model: str) -> tuple[str, str]:
    """(label, model) of a ``--models`` item: a reference ranker's name twice, else the model's name and its
    canonical spec (:func:`~modalrec.models.spec.model_spec_of`: the name of a built-in model, the absolute
    ``file.py:Class`` of a model from a file, which a worker resolves again)."""
    ranker = ranker_name(model)
    if ranker:
        return ranker, ranker
    cls = get_model_class(model)
    return cls.name, model_spec_of(cls)


def _cold_items_data(
    data_dir: str | Path,
    dataset: Dataset,
    out: Path,
    seeds: list[int] | None,
    cold_ratio: float,
    log: Callable[[str], None],
) -> tuple[str | Path, Dataset]:
    """The cold-items data of the benchmark: the dataset itself when it has cold items, else its split in ``out``."""
    if dataset.has_cold_items:
        return data_dir, dataset
    split_seed = (seeds or [999])[0]
    split_dir = out / "data" / f"cold-items-r{cold_ratio:g}-seed{split_seed}"
    if not split_dir.exists():  # deterministic: a resumed benchmark finds the same split here
        log(f"cold-items split of {data_dir} (ratio {cold_ratio:g}, seed {split_seed}) → {split_dir}")
        resplit_dataset(data_dir, COLD_ITEMS, split_seed, split_dir, cold_ratio=cold_ratio)
    return split_dir, load_dataset(split_dir)


class _PartialReports:
    """Rewrites the table report as rows finish, so a long benchmark shows what has finished so far."""

    def __init__(
        self,
        exp: Experiment,
        n_entries: int,
        target: str | None,
        metrics: tuple[str, ...],
        title: str,
        writer: ReportWriter,
    ) -> None:
        self.exp, self.n_entries, self.target, self.metrics = exp, n_entries, target, metrics
        self.title, self.writer = title, writer
        self.done: dict[int, EntryResult | None] = {}

    def on_entry(self, i: int, result: EntryResult | None) -> None:
        """Entry ``i`` completed: write the report of the rows so far (not after the last one: the final report)."""
        self.done[i] = result
        finished = [self.done[j] for j in sorted(self.done) if self.done[j] is not None]
        if finished and len(self.done) < self.n_entries:
            partial_target = self.target if self.target in {r.entry.label for r in finished} else None
            write_table_report(
                self.exp,
                finished,
                partial_target,
                self.metrics,
                self.title + " (partial)",
                self.writer,
                "benchmark",
                complete=False,
            )


def _protocol_tag(protocol: str) -> str:
    return "" if protocol == "default" else protocol


def _named_target(target: str | None, names: list[str]) -> str | None:
    """The row ``--target`` names (case-insensitive), or None when it names none; an unknown row is an error."""
    if target is None:
        return None
    found = next((n for n in names if n.lower() == target.lower()), None)
    if found is None:
        raise ModalrecError(f"--target {target!r} is not among --models ({', '.join(names)})")
    return found


def _final_target(target: str | None, results: list[EntryResult], missing: list[str]) -> str | None:
    """The target of the final table: the named row unless it was left out, else the best of several rows."""
    if target is not None and target in missing:
        target = None
    if target is None and len(results) > 1:
        target = choose_target(results)
    return target
