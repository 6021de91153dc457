"""Continuing an interrupted run from its ``resume.pt``, or saying in one line why it cannot continue.

A resume state (:data:`~modalrec.run_files.RESUME_FILE`, written while training by :mod:`modalrec.runs`)
records modalrec's code version, the model's spec and source hash, the configuration, the dataset's identity
and the trainer's state. A resume continues only where the result equals an uninterrupted run's — same code,
data, configuration and device type — unless ``force`` accepts the difference, with a warning in the log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modalrec.config import Config, resolve_config
from modalrec.data.dataset import Dataset
from modalrec.errors import RunError, worded_for_cli
from modalrec.models import Recommender
from modalrec.run_files import (
    RESUME_FILE,
    RESUME_FORMAT,
    RESUME_VERSION,
    code_version,
    load_recorded_dataset,
    load_run_file,
)
from modalrec.run_model import load_weights, recorded_spec, run_model_class, source_change
from modalrec.runs import RunLog, check_device, describe_position, prepare_model, train_into, write_run_config
from modalrec.training import TrainResult

# configuration keys that do not change what training computes: changing them needs no --force
RESUME_NEUTRAL_KEYS = frozenset({"checkpoint_every"})


def read_resume_state(run_dir: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The resume state of an unfinished run, loaded onto the CPU; one-line errors for every bad case.

    ``mmap``: map the tensors instead of reading them (a cheap look at the metadata)."""
    run_dir = Path(run_dir)
    path = run_dir / RESUME_FILE
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    if (run_dir / "metrics.json").is_file():  # written last, just before resume.pt is removed
        raise RunError(f"{run_dir}: the run has finished (metrics.json is there); nothing to resume")
    if not path.is_file():
        raise RunError(
            f"{run_dir}: no {RESUME_FILE} — the run stopped before its first resume state was written "
            "(or this is not a run directory); start it again"
        )
    try:
        state = load_run_file(path, mmap=mmap)
    except RunError:
        raise
    except Exception as exc:  # a truncated zip, a pickle error, …: all mean the file is damaged
        raise RunError(f"{path}: corrupt or truncated resume state ({exc.__class__.__name__}); cannot resume") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise RunError(f"{path}: not a modalrec resume state")
    if state.get("version") != RESUME_VERSION:
        raise RunError(f"{path}: resume-state format {state.get('version')}, this modalrec reads {RESUME_VERSION}")
    missing = [k for k in ("code", "model", "config", "dataset", "train") if k not in state]
    if missing:
        raise RunError(f"{path}: corrupt resume state (no {missing[0]!r})")
    return state


def _code_changes(state: dict[str, Any], cls: type[Recommender]) -> list[str]:
    """What changed in the code since a resume state was written: modalrec's own version, the model's source."""
    changes = []
    if state["code"] != code_version():
        changes.append(f"modalrec {state['code']} → {code_version()}")
    model_change = source_change(cls, state)
    if model_change is not None:
        changes.append(model_change)
    return changes


def _check_resume_code(changes: list[str], path: Path, force: bool) -> str | None:
    """Refuse changed code (one line) unless ``force``; then the warning to log, else None."""
    if not changes:
        return None
    what = "; ".join(changes)
    if not force:
        changed = f"{path}: the code changed since the state was written ({what}), so the run cannot continue exactly"
        raise worded_for_cli(
            RunError(f"{changed} — start a new run, or pass force=True to continue anyway"),
            f"{changed} — start a new run, or pass --force to continue anyway",
        )
    return f"warning: --force: continuing with changed code ({what}); the result will differ from an uninterrupted run"


def resume_refusal(run_dir: str | Path) -> str | None:
    """Why :func:`resume_run` would refuse ``run_dir`` for its state alone (damaged, other code, its model's
    file gone or changed), else None.

    A cheap look (the tensors are memory-mapped), so a driver can say at once that a trial starts
    over; the dataset and configuration checks are left to :func:`resume_run`.
    """
    path = Path(run_dir) / RESUME_FILE
    try:
        state = read_resume_state(run_dir, mmap=True)
        _check_resume_code(_code_changes(state, run_model_class(state, path, run_dir=run_dir)), path, force=False)
    except RunError as exc:
        return str(exc)
    return None


def _config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = [k for k in {**old, **new} if k not in RESUME_NEUTRAL_KEYS and old.get(k) != new.get(k)]
    return [f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in keys]


def resume_run(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    quiet: bool = False,
    progress: bool = False,
    force: bool = False,
    cache_dir: str | Path | bool | None = None,
    data_dir: str | Path | None = None,
    dataset: Dataset | None = None,
) -> tuple[Path, TrainResult]:
    """Continue an interrupted run from its ``resume.pt``; the finished run equals an uninterrupted one.

    The model is the one the state records (its spec, resolved again). Refuses (one-line
    :class:`RunError`) when the dataset changed since the state was written, when the file is
    damaged or the model's file is gone, when modalrec's code or the model's source changed
    (``force`` continues anyway, with a warning: the result differs from an uninterrupted run),
    when ``overrides`` change the configuration (``force`` accepts that: training continues under
    the new values) and when the state was written on another device type (``force`` continues
    anyway, loaded with ``map_location``; the result then differs in the last bits).
    """
    run_dir = Path(run_dir)
    check_device(device)
    state = read_resume_state(run_dir)
    path = run_dir / RESUME_FILE
    cls = run_model_class(state, path, run_dir=run_dir)
    warned = [w for w in [_check_resume_code(_code_changes(state, cls), path, force)] if w]
    dataset = _resume_dataset(run_dir, state["dataset"], data_dir, dataset)
    saved = dict(state["config"])
    config, notes = _resume_config(run_dir, cls, dataset, saved, overrides, force)
    notes += _resume_device_notes(state["train"], path, device, force)
    model, config, graphs = prepare_model(cls, dataset, device=device, cache_dir=cache_dir, config=config)
    # with changed code (--force), a state that no longer fits is said in one line here, not deep in the trainer
    misfit = load_weights(model, state["train"]["model_state"]) if warned else None
    if misfit is not None:
        raise RunError(f"{path}: the saved weights do not fit {recorded_spec(state)} as its code is now ({misfit})")
    runlog = RunLog(run_dir / "train.log", echo=not quiet, append=True)
    runlog(f"resuming {run_dir} {describe_position(state['train'])} on {device}")
    for w in warned:
        runlog.warn(w)  # shown even when quiet: the run no longer equals an uninterrupted one
    for n in notes:
        runlog(n)
    if config.to_dict() != saved or warned:
        write_run_config(run_dir, cls, dataset, config)  # the new configuration, or the new source hash
    return train_into(run_dir, model, dataset, config, graphs, runlog, device, progress and not quiet, state["train"])


def _resume_dataset(
    run_dir: Path, info: dict[str, Any], data_dir: str | Path | None, dataset: Dataset | None
) -> Dataset:
    """The dataset of a resumed run (``dataset``, else read from ``data_dir`` or the recorded path), checked."""
    if dataset is None:
        dataset = load_recorded_dataset(run_dir, info, data_dir)
    if dataset.fingerprint != info["fingerprint"] or dataset.modalities != info["modalities"]:
        raise RunError(f"{run_dir}: the dataset at {dataset.path} changed since the run started (content hash differs)")
    return dataset


def _resume_config(
    run_dir: Path,
    cls: type[Recommender],
    dataset: Dataset,
    saved: dict[str, Any],
    overrides: dict[str, Any] | None,
    force: bool,
) -> tuple[Config, list[str]]:
    """The configuration a resumed run continues with (the saved one, or with ``overrides`` when ``force``
    accepts the change); the notes to log."""
    config, notes = Config(saved), []
    if overrides:
        wanted = {k: v for k, v in saved.items() if k != "preset"}
        wanted.update(overrides)
        config = resolve_config(cls, dataset.name, wanted, saved.get("preset"))
        changes = _config_changes(saved, config.to_dict())
        if changes and not force:
            differs = f"{run_dir}: the configuration differs from the interrupted run's ({'; '.join(changes)})"
            raise worded_for_cli(
                RunError(f"{differs}; pass force=True to continue under the new values"),
                f"{differs}; pass --force to continue under the new values",
            )
        if changes:
            notes.append(f"warning: --force: continuing with a changed configuration ({'; '.join(changes)})")
    return config, notes


def _resume_device_notes(train: dict[str, Any], path: Path, device: str, force: bool) -> list[str]:
    """Refuse a state written on another device type (one line) unless ``force``; the notes to log about the device
    and the thread count, whose difference from the interrupted run changes the last bits of the result."""
    notes = []
    saved_device = train.get("device", "cpu")
    if saved_device != torch.device(device).type:
        if not force:
            where, differs = f"{path}: written on {saved_device}, resuming on {device}", "will differ slightly from"
            raise worded_for_cli(
                RunError(
                    f"{where}; use device={saved_device!r}, or force=True to continue here "
                    f"(the result {differs} an uninterrupted run)"
                ),
                f"{where}; use --device {saved_device}, or --force to continue here "
                f"(the result {differs} an uninterrupted run)",
            )
        notes.append(f"warning: --force: the state was written on {saved_device}, continuing on {device}")
    threads = train.get("threads")
    if threads is not None and threads != torch.get_num_threads():
        notes.append(
            f"warning: the run used {threads} threads, this process {torch.get_num_threads()}; results may differ "
            f"in the last bits from an uninterrupted run (use --threads {threads})"
        )
    return notes
