"""One trial of a campaign: train a (model, setting, seed) run, or continue its interrupted run.

Every executor (``local`` or ``ray``, :mod:`modalrec.experiments.executors`) runs :func:`run_trial`
on a *trial spec*, a plain picklable dict, and hands its record back to the driver, which alone
writes the results store. A worker process keeps the datasets it loaded (a few, by path and
content hash), so consecutive trials on the same data do not read it again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from modalrec.data.dataset import Dataset, load_dataset
from modalrec.errors import ConfigError, DataError, RunError
from modalrec.models import Recommender, resolve_model
from modalrec.run_files import RESUME_FILE, code_version
from modalrec.run_model import model_record
from modalrec.run_resume import resume_refusal, resume_run
from modalrec.runs import train_run
from modalrec.training import TrainResult

_DATASETS: dict[tuple[str, str], Dataset] = {}  # this process's loaded datasets, by (path, fingerprint)


def trial_dataset(spec: dict[str, Any]) -> Dataset:
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
        remember_dataset(key, dataset)
    return dataset.select_modalities(spec["modalities"])


def remember_dataset(key: tuple[str, str], dataset: Dataset) -> None:
    """Keep ``dataset`` for the trials of this process under ``key`` = (data path, fingerprint); the latest few stay."""
    _DATASETS.pop(key, None)
    _DATASETS[key] = dataset
    while len(_DATASETS) > 4:  # a long-lived worker keeps only the latest few
        _DATASETS.pop(next(iter(_DATASETS)))


def check_code_version(spec: dict[str, Any], hint: str = "") -> None:
    """Refuse a spec the driver made with other code (``spec["code"]``): a worker must run the driver's version."""
    if spec.get("code") is not None and spec["code"] != code_version():
        raise RunError(f"this worker runs modalrec {code_version()}, the driver {spec['code']}{hint}")


def trial_model(spec: dict[str, Any]) -> type[Recommender]:
    """The model class of a trial spec: its ``model_spec`` resolved in this process (a worker imports the user's
    file from the path the spec names), checked to have the driver's source (``model_source_hash``)."""
    model = spec.get("model_spec") or spec["model"]
    try:
        cls = resolve_model(model)
    except ConfigError as exc:
        if "does not exist" not in str(exc):
            raise
        # a Ray worker on another machine: it reads the model's file where the driver did, like the data
        raise ConfigError(f"{exc} on this worker; every worker must see the model's file at that path") from exc
    expected = spec.get("model_source_hash")
    if expected is not None and model_record(cls)["model_source_hash"] != expected:
        raise RunError(
            f"this worker sees other code for {model} than the driver did "
            "(the file changed meanwhile, or differs on this machine)"
        )
    return cls


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one trial, or continue its interrupted run, and return its record; writes no results store.

    ``spec`` is a plain dict (picklable, so a Ray task can take it): ``model``, ``sid``, ``seed``,
    ``setting``, ``overrides`` (seed included), ``modalities``, ``data_dir`` and ``fingerprint`` of
    the dataset, ``out`` (the report folder; the run goes to ``<out>/runs/<model>-<sid>-seed<seed>``),
    ``preset``, ``device``, ``cache_dir``, ``code`` (the driver's :func:`code_version`: a worker
    running other code refuses), ``model_spec`` and ``model_source_hash`` (the model is resolved from
    its spec here, and refused when its source differs from the driver's). The local and the Ray
    executor both call this function.
    """
    check_code_version(spec, "; install the same version everywhere")
    cls = trial_model(spec)
    dataset = trial_dataset(spec)
    t0 = time.perf_counter()
    notes: list[str] = []
    run_dir, result = _resume_or_train(spec, dataset, notes)
    return {
        **model_record(cls),  # model, model_spec, model_source_hash: a later campaign compares the hash
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
    written, the model's source changed) is kept as it is; the trial then starts again in ``…-try<n>``.
    """
    overrides = dict(spec["overrides"])
    tries = _trial_folders(spec)
    leftover = _leftover_run(tries)
    if leftover is not None:
        try:
            if int(spec.get("workers", 1)) > 1:  # the same workers continue it (a changed code refuses, as below)
                from modalrec.run_distributed import finished_result, resume_distributed

                resume_refusal_line = resume_refusal(leftover)
                if resume_refusal_line is not None:
                    raise RunError(resume_refusal_line)
                run_dir = resume_distributed(leftover, int(spec["workers"]), device=spec["device"], quiet=True)
                notes.append(f"resumed from {leftover.name} on {spec['workers']} workers")
                return run_dir, finished_result(run_dir)
            run_dir, result = resume_run(
                leftover, overrides, spec["device"], quiet=True, cache_dir=spec["cache_dir"], dataset=dataset
            )
            notes.append(f"resumed from {leftover.name}")
            return run_dir, result
        except RunError as exc:
            notes.append(f"warning: cannot resume {leftover} ({exc}); training the trial again")
    run_out = next(p for p in tries if not p.exists())  # a leftover folder is kept, never overwritten
    return train_spec(spec, run_out, dataset, overrides)


def try_folders(base: Path) -> list[Path]:
    """The run folders a trial may use, in order: ``base``, then ``…-try2``, ``…-try3`` … (a leftover is kept)."""
    return [base] + [base.with_name(f"{base.name}-try{n}") for n in range(2, 1000)]


def _trial_folders(spec: dict[str, Any]) -> list[Path]:
    """The run folders of a trial spec: ``<out>/runs/<model>-<sid>-seed<seed>``, then its ``-try<n>`` folders."""
    return try_folders(Path(spec["out"]) / "runs" / f"{spec['model']}-{spec['sid']}-seed{spec['overrides']['seed']}")


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
    spec: dict[str, Any],
    out: Path,
    dataset: Dataset,
    overrides: dict[str, Any] | None = None,
    **fit_options: Any,
) -> tuple[Path, TrainResult]:
    """Train a trial spec into ``out`` (quietly, on the spec's device and cache); ``fit_options`` go to train_run.

    The model is the spec's ``model_spec``, checked first to have the driver's source (:func:`trial_model`)."""
    trial_model(spec)
    if int(spec.get("workers", 1)) > 1:
        from modalrec.run_distributed import finished_result, train_distributed

        if "on_epoch" in fit_options:  # a closure cannot reach the workers: they take a picklable factory instead
            raise ConfigError("a trial on data-parallel workers takes pruning=<a hook factory>, not on_epoch")
        run_dir = train_distributed(
            spec.get("model_spec") or spec["model"],
            spec["data_dir"],
            int(spec["workers"]),
            modalities=spec["modalities"],
            overrides=spec["overrides"] if overrides is None else overrides,
            preset=spec["preset"],
            out=out,
            device=spec["device"],
            quiet=True,
            cache_dir=spec["cache_dir"],
            **fit_options,
        )
        return run_dir, finished_result(run_dir)
    return train_run(
        spec.get("model_spec") or spec["model"],
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
