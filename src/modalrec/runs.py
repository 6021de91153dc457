"""Run directories: train a model into a new directory; the steps a resumed run shares.

A run directory (``runs/<model>-<dataset>-<timestamp>`` by default) holds
``config.yaml`` (resolved configuration and data source), ``metrics.json`` (best epoch,
valid and test metrics at it, per-epoch history, timings), ``test_per_user.npz`` and
``valid_per_user.npz`` (per-user metric vectors), ``model.pt`` (checkpoint) and
``train.log``. While training, ``resume.pt`` holds the latest resume state (see
:func:`modalrec.run_resume.resume_run`); it is removed when the run finishes. An existing directory is never
overwritten; every file is written atomically. The files' formats and safe reading are :mod:`modalrec.run_files`;
a finished run is loaded, evaluated and asked for recommendations through :mod:`modalrec.run_load`.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from modalrec.config import Config, describe_preset, resolve_config
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.errors import Interrupted, ModalrecError, RunError, worded_for_cli
from modalrec.evaluation import resolve_eval_mode
from modalrec.graphs import GraphStore
from modalrec.interrupt import SIGNAL_EXIT_CODES, graceful_interrupts
from modalrec.io import atomic_write, write_json, write_npz, write_yaml
from modalrec.models import Recommender, resolve_model
from modalrec.models.base import COLD_UNABLE
from modalrec.run_files import RESUME_FILE, RESUME_FORMAT, RESUME_VERSION, code_version, save_checkpoint
from modalrec.run_model import model_record
from modalrec.training import TrainingStopped, TrainResult, checkpoint_interval, fit, seed_everything
from modalrec.training.large_data import apply_large_data_mode, large_data_active


class RunLog:
    """Collects log lines, echoes them, and appends each to ``train.log`` as it comes.

    Appending (no rewrite, no fsync per line) keeps a short run's log from costing more than its epochs: the
    whole file was rewritten atomically for every line, ~5 % of a 5-second BPR run. A crash loses at most
    the line being written; the run's results (``metrics.json``, weights) are still written atomically.
    """

    def __init__(self, path: Path | None, echo: bool = True, append: bool = False) -> None:
        self.path, self.echo = path, echo
        # a new run's log starts empty; a resumed run (append) continues its log
        self._mode = "a" if append and path is not None and path.is_file() else "w"

    def __call__(self, line: str) -> None:
        self._add(line)
        if self.echo:
            print(line, flush=True)

    def warn(self, line: str) -> None:
        """A warning: logged, and printed on stderr even when quiet (quiet hides progress, not problems)."""
        self._add(line)
        print(line, file=sys.stderr, flush=True)

    def _add(self, line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        if self.path is not None:
            with self.path.open(self._mode, encoding="utf-8") as log:
                log.write(stamped + "\n")
            self._mode = "a"


def new_run_dir(model: str, dataset: str, out: str | Path | None, root: str | Path = "runs") -> Path:
    """Claim a fresh run directory; never reuses an existing path."""
    if out is not None:
        path = Path(out)
        if path.exists():
            message = f"{path}: already exists; runs are never overwritten"
            raise worded_for_cli(
                RunError(f"{message} (choose another out folder)"), f"{message} (choose another --out)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
        return path
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1000):
        path = root / (base if n == 0 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"{root}: could not create a new run directory")


def prepare_model(
    model_name: str | type[Recommender],
    dataset: Dataset,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
    device: str = "cpu",
    cache_dir: str | Path | bool | None = None,
    config: Config | None = None,
) -> tuple[Recommender, Config, GraphStore]:
    """Resolve the config (or take ``config`` as resolved), seed every RNG, build graphs and the model.

    The large-data mode (:mod:`modalrec.training.large_data`) is resolved into the returned config here.

    ``model_name`` is any model spec or the class itself (:func:`~modalrec.models.spec.resolve_model`)."""
    cls = resolve_model(model_name)
    if config is None:
        config = resolve_config(cls, dataset.name, overrides, preset)
    config = apply_large_data_mode(config, dataset, cls)  # before the model sees train_batch_size
    seed_everything(int(config.seed))
    graphs = GraphStore(dataset, cache_dir=cache_dir, device=device, knn_method=str(config.get("knn_method", "auto")))
    model = cls(dataset, config, graphs).to(device)
    return model, config, graphs


def check_device(device: str) -> str:
    """``device`` when this machine can train on it; else a one-line error (worded for Python and for the CLI)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise worded_for_cli(
            ModalrecError(f"device {device!r}: CUDA is not available on this machine"),
            f"--device {device}: CUDA is not available on this machine",
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise worded_for_cli(
            ModalrecError(f"device {device!r}: use 'cpu' or 'cuda'"), f"--device {device!r}: use cpu or cuda"
        )
    return device


def train_run(
    model_name: str | type[Recommender],
    data_dir: str | Path,
    modalities: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
    out: str | Path | None = None,
    runs_root: str | Path = "runs",
    device: str = "cpu",
    quiet: bool = False,
    progress: bool = False,
    cache_dir: str | Path | bool | None = None,
    dataset: Dataset | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    evaluate_test: bool = True,
) -> tuple[Path, TrainResult]:
    """Train one model on one dataset into a new run directory; returns (run dir, result).

    ``model_name`` is any model spec — a registered name, ``path/file.py:Class``, ``package.module:Class``,
    an entry point — or the class itself; the run records its spec and source hash (:mod:`modalrec.run_model`).

    ``on_epoch`` and ``evaluate_test`` go to :func:`modalrec.training.fit` (a tuning trial's pruning
    hook; no test pass, so ``metrics.json`` has ``test: null`` and there is no ``test_per_user.npz``).

    The whole configuration is checked and the model built (its constructor checks its
    settings against the data) before the directory is claimed; should anything still fail
    with a user-facing error before the checkpoint is written, the directory claimed here is
    removed, so the same ``out`` can be used again.
    """
    check_device(device)
    if dataset is None:
        dataset = load_dataset(data_dir, modalities)
    cls = resolve_model(model_name)
    config = resolve_config(cls, dataset.name, overrides, preset)  # the run's one resolution
    notes, cold_note = _preflight(cls, dataset, config)
    model, config, graphs = prepare_model(cls, dataset, device=device, cache_dir=cache_dir, config=config)
    run_dir = new_run_dir(cls.name, dataset.name, out, runs_root)
    try:
        runlog = RunLog(run_dir / "train.log", echo=not quiet)
        _log_run_start(runlog, model, dataset, config, device, notes, cold_note)
        for line in graphs.notes:
            runlog(line)
        write_run_config(run_dir, cls, dataset, config)
        return train_into(
            run_dir,
            model,
            dataset,
            config,
            graphs,
            runlog,
            device,
            progress and not quiet,
            None,
            on_epoch=on_epoch,
            evaluate_test=evaluate_test,
        )
    except ModalrecError:
        # A directory that holds no checkpoint and no resume state was claimed by this call and holds only
        # our log and config: remove it so the same ``out`` can be used again.
        if not (run_dir / "model.pt").exists() and not (run_dir / RESUME_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _preflight(cls: type[Recommender], dataset: Dataset, config: Config) -> tuple[list[str], str | None]:
    """Check a resolved configuration against the data before any work; (warnings to show, cold-item note).

    A checkpoint interval or an eval mode the data cannot support fails here, before a directory is claimed.
    """
    checkpoint_interval(config)
    notes: list[str] = []
    over = [k for k in config.topk if k > dataset.n_items]
    if over:  # kept (valid_metric may name it), but said: a ranked list cannot be longer than the items
        notes.append(
            f"topk: {', '.join(map(str, over))} exceed{'s' if len(over) == 1 else ''} the {dataset.n_items:,} items; "
            f"a list has at most {dataset.n_items} items, so @K counts hits in all of them"
        )
    resolve_eval_mode(dataset, config.get("eval_mode"))
    return notes, cold_start_note(cls, dataset)


def _log_run_start(
    runlog: RunLog,
    model: Recommender,
    dataset: Dataset,
    config: Config,
    device: str,
    notes: list[str],
    cold_note: str | None,
) -> None:
    """The head of ``train.log``: warnings, the preset, how cold items are scored, the data and model sizes."""
    # An ID-only model's cold note is a warning (its cold items are ranked at random); a content model's is
    # information. Warnings are echoed even when quiet: quiet hides progress, not problems with the data.
    unable = model.cold_start == COLD_UNABLE
    for w in [*dataset.warnings, *notes, *([cold_note] if cold_note and unable else [])]:
        runlog.warn(f"warning: {w}")
    runlog(describe_preset(config))
    if cold_note and not unable:
        runlog(cold_note)
    n_params = sum(p.numel() for p in model.parameters())
    used = model.used_modalities()
    runlog(
        f"{model.name} on {dataset.name}: {dataset.n_users} users, {dataset.n_items} items, "
        f"modalities {', '.join(used) if used else 'none (ID only)'}, {n_params} parameters, device {device}"
    )


def cold_start_note(cls: type[Recommender], dataset: Dataset) -> str | None:
    """One line on how ``cls`` scores the dataset's cold items (None when it has none)."""
    if not dataset.has_cold_items:
        return None
    n = dataset.cold_items.size
    if cls.cold_start == COLD_UNABLE:
        return (
            f"{cls.name} is ID only and cannot score the {n:,} cold items: they are ranked at random "
            "(reported as unable)"
        )
    return f"{cls.name} scores the {n:,} cold items from their features: {cls.cold_rule}"


def cold_start_info(model: Recommender, dataset: Dataset) -> dict[str, Any] | None:
    """What metrics.json records about cold items (None when the dataset has none)."""
    if not dataset.has_cold_items:
        return None
    return {
        "items": int(dataset.cold_items.size),
        "scoring": model.cold_start,
        "rule": model.cold_rule,
    }


def write_run_config(run_dir: Path, cls: type[Recommender], dataset: Dataset, config: Config) -> None:
    """Write ``config.yaml``: the model's record, the data source, the preset and the resolved configuration."""
    write_yaml(
        run_dir / "config.yaml",
        {
            **model_record(cls),  # model, model_spec, model_source_hash
            "data": {
                "path": str(dataset.path) if dataset.path else None,
                "name": dataset.name,
                "modalities": dataset.modalities,
                "fingerprint": dataset.fingerprint,
            },
            "preset": {
                "name": config.get("preset"),
                "overrides": config.preset_overrides,
            },
            "config": config.to_dict(),
        },
    )


def _dataset_info(dataset: Dataset) -> dict[str, Any]:
    """The dataset's identity as a resume state records it (checked again when the run continues)."""
    return {
        "path": str(dataset.path) if dataset.path else None,
        "name": dataset.name,
        "fingerprint": dataset.fingerprint,
        "modalities": dataset.modalities,
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
    }


class _ResumeWriter:
    """Writes ``resume.pt`` (the run's metadata and the trainer's state), atomically; remembers where the last
    state written stands, so a failure can say which state is intact."""

    def __init__(
        self, run_dir: Path, model: Recommender, config: Config, dataset: Dataset, resume: dict[str, Any] | None
    ) -> None:
        self.path = run_dir / RESUME_FILE
        self.hint = f"resume with: modalrec train --resume {run_dir}"
        self.where = None if resume is None else describe_position(resume)
        self.meta = {
            "format": RESUME_FORMAT,
            "version": RESUME_VERSION,
            "code": code_version(),
            **model_record(type(model)),  # model, model_spec, model_source_hash
            "config": config.to_dict(),
            "dataset": _dataset_info(dataset),
        }

    def __call__(self, state: dict[str, Any]) -> None:
        try:
            atomic_write(self.path, lambda fh: torch.save({**self.meta, "train": state}, fh), mode="wb")
        except OSError as exc:
            kept = (
                f"the previous resume state ({self.where}) is intact — fix that, then {self.hint}"
                if self.where
                else "no earlier resume state exists"
            )
            raise RunError(f"{self.path}: cannot write the resume state ({exc.strerror or exc}); {kept}") from None
        self.where = describe_position(state)


def train_into(
    run_dir: Path,
    model: Recommender,
    dataset: Dataset,
    config: Config,
    graphs: GraphStore,
    runlog: RunLog,
    device: str,
    progress: bool,
    resume: dict[str, Any] | None,
    on_epoch: Callable[[int, float], None] | None = None,
    evaluate_test: bool = True,
) -> tuple[Path, TrainResult]:
    """Train (or continue training) into ``run_dir``, writing ``resume.pt`` as it goes; the finished run's files.

    Ctrl-C/SIGTERM stop training at the next batch with its state saved (:class:`Interrupted`);
    a resume state that cannot be written stops the run with the previous state intact.
    """
    writer = _ResumeWriter(run_dir, model, config, dataset, resume)
    try:
        with graceful_interrupts() as flag:
            result = fit(
                model,
                dataset,
                config,
                log=runlog,
                progress=progress,
                device=device,
                checkpoint=writer,
                resume=resume,
                interrupt=flag,
                on_epoch=on_epoch,
                evaluate_test=evaluate_test,
            )
    except OSError as exc:  # e.g. train.log on a full disk; the resume state has its own message above
        kept = (
            f"the last resume state ({writer.where}) is intact — {writer.hint}" if writer.where else "nothing to resume"
        )
        raise RunError(f"{run_dir}: writing failed ({exc}); {kept}") from None
    except TrainingStopped as stop:
        runlog(f"interrupted: training stopped {stop.where}; state saved in {writer.path}")
        raise Interrupted(
            f"training stopped {stop.where}; state saved — {writer.hint}", SIGNAL_EXIT_CODES.get(stop.signum, 130)
        ) from None
    _write_finished_run(run_dir, model, dataset, config, graphs, result)
    writer.path.unlink(missing_ok=True)  # finished: model.pt supersedes the resume state
    return run_dir, result


def _write_finished_run(
    run_dir: Path,
    model: Recommender,
    dataset: Dataset,
    config: Config,
    graphs: GraphStore,
    result: TrainResult,
    extra: dict[str, Any] | None = None,
) -> None:
    """A finished run's files: ``model.pt``, the per-user metric vectors and, last, ``metrics.json`` (with
    ``extra`` entries, e.g. how many data-parallel workers trained it)."""
    save_checkpoint(run_dir / "model.pt", model, config, dataset)
    if result.test is not None:
        write_npz(run_dir / "test_per_user.npz", users=result.test.users, **result.test.per_user)
    write_npz(run_dir / "valid_per_user.npz", users=result.valid.users, **result.valid.per_user)
    write_json(
        run_dir / "metrics.json",
        {
            "model": model.name,
            "dataset": dataset.name,
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
            "eval_mode": result.valid.mode,
            "cold_start": cold_start_info(model, dataset),
            "valid": result.valid.metrics,
            "test": result.test.metrics if result.test is not None else None,
            "timings": result.timings,
            "validation": result.validation,
            "large_data": large_data_active(config, int(dataset.split("train")[0].size)),
            "graph_cache": {"hits": graphs.cache_hits, "builds": graphs.builds, "knn_method": graphs.knn_method},
            "graph_notes": graphs.notes,
            "environment": run_environment(model.device),
            "history": result.history,
            **(extra or {}),
        },
    )


def run_environment(device: torch.device) -> dict[str, Any]:
    """What a run's numbers depend on besides its configuration and data: the code, library versions,
    the torch thread count and the device. The same seed, code, versions and threads give the same
    numbers on CPU; a different thread count may change float sums and so the last digits."""
    import platform

    import numpy

    return {
        "modalrec": code_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": device.type,
        "machine": platform.machine(),
    }


def describe_position(state: dict[str, Any]) -> str:
    """Where a trainer state stands, e.g. ``after epoch 4`` or ``in epoch 5, after batch 3``."""
    trainer = state["trainer"]
    if trainer["batch"] is None:
        return f"after epoch {trainer['epoch'] - 1}"
    return f"in epoch {trainer['epoch']}, after batch {trainer['batch']}"
