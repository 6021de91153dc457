"""One training run across several workers: PyTorch DDP launched through Ray Train (docs/scale.md).

``modalrec train … --workers N`` claims and writes the run directory as a single process would (config.yaml,
train.log, resume.pt while it runs; model.pt, metrics.json and the per-user vectors when it ends), then starts
N Ray Train workers (gloo on CPU, NCCL on GPU). Each worker builds the same model from the same seed and data
and trains its part of every batch (:mod:`modalrec.training.distributed`); worker 0 writes the run's files.
When a worker dies, Ray Train restarts the group (``max_failures`` times) and every worker continues from the
last ``resume.pt``, exactly as ``--resume`` would. ``evaluate``, ``serve`` and ``benchmark`` read the run like
any other: nothing in it depends on how many workers trained it, except ``metrics.json``'s
``data_parallel`` entry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from modalrec.config import Config, resolve_config
from modalrec.data.dataset import load_dataset
from modalrec.errors import ConfigError, RunError
from modalrec.evaluation import EvalResult
from modalrec.graphs import default_cache_dir
from modalrec.io import read_yaml, write_json
from modalrec.models import Recommender, model_spec_of, resolve_model
from modalrec.run_files import RESUME_FILE, per_user_metrics
from modalrec.run_resume import read_resume_state
from modalrec.runs import (
    RunLog,
    _log_run_start,
    _preflight,
    _ResumeWriter,
    _write_finished_run,
    check_device,
    describe_position,
    new_run_dir,
    prepare_model,
    write_run_config,
)
from modalrec.training import Callback, Trainer, TrainResult
from modalrec.training.callbacks import CheckpointSchedule, ProgressCallback, SharedPruning, TrialPruned
from modalrec.training.distributed import DataParallel
from modalrec.training.large_data import apply_large_data_mode

# Written by worker 0 when a tuner pruned the run: {"epoch", "score", "evaluations"}.
PRUNED_FILE = "pruned.json"

# Models whose training is not a gradient step over the batch alone, so data-parallel workers would drift apart.
NOT_DATA_PARALLEL = {
    "MMSSL": "it trains an adversarial critic with its own optimiser inside its loss, which each worker "
    "would update differently",
}


def ray_train() -> Any:
    """``ray.train.torch``, or a one-line error naming the extra that installs it."""
    try:
        import ray.train.torch as ray_torch
    except ImportError:
        raise ConfigError("--workers needs Ray Train: pip install 'modalrec[scale]' (or 'ray[train]')") from None
    return ray_torch


def check_data_parallel(cls: type[Recommender], workers: int) -> None:
    """One line when ``cls`` cannot train on ``workers`` data-parallel workers."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    if cls.name in NOT_DATA_PARALLEL:
        raise ConfigError(f"{cls.name} cannot train data-parallel: {NOT_DATA_PARALLEL[cls.name]}")


def train_distributed(
    model_name: str | type[Recommender],
    data_dir: str | Path,
    workers: int,
    *,
    modalities: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
    out: str | Path | None = None,
    runs_root: str | Path = "runs",
    device: str = "cpu",
    quiet: bool = False,
    cache_dir: str | Path | None = None,
    ray_address: str | None = None,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
    max_failures: int = 1,
    evaluate_test: bool = True,
    pruning: Callable[[], Callable[[int, float], bool]] | None = None,
    _fault: dict[str, int] | None = None,
) -> Path:
    """Train one run on ``workers`` data-parallel workers into a new run directory; returns it.

    ``evaluate_test=False`` skips the test pass (a tuning trial). ``pruning``: a picklable zero-argument factory
    of a tuner's ``should_prune(epoch, score)`` (``modalrec tune`` passes one that reports to the trial's Optuna
    study), built and called on worker 0 only; when it says so every worker stops at that validation, the run
    keeps ``pruned.json`` and :class:`~modalrec.training.callbacks.TrialPruned` is raised here.
    ``_fault`` (tests only): ``{"rank": r, "epoch": e}`` makes worker r exit abruptly after epoch e, once.
    """
    check_device(device)
    dataset = load_dataset(data_dir, modalities)
    cls = resolve_model(model_name)
    check_data_parallel(cls, workers)
    config = apply_large_data_mode(resolve_config(cls, dataset.name, overrides, preset), dataset, cls)
    notes, cold_note = _preflight(cls, dataset, config)
    model, config, graphs = prepare_model(cls, dataset, device="cpu", cache_dir=cache_dir, config=config)
    run_dir = new_run_dir(cls.name, dataset.name, out, runs_root)
    runlog = RunLog(run_dir / "train.log", echo=not quiet)
    _log_run_start(runlog, model, dataset, config, device, notes, cold_note)
    for line in graphs.notes:  # built here first, so the workers read them from the graph cache
        runlog(line)
    del model
    write_run_config(run_dir, cls, dataset, config)
    job = {  # absolute paths: a Ray worker runs in a working directory of its own
        "run_dir": str(run_dir.resolve()),
        "data_dir": str(Path(dataset.path).resolve()),
        "modalities": modalities,
        "model_spec": model_spec_of(cls),
        "config": config.to_dict(),
        "preset_overrides": dict(config.preset_overrides),
        "device": device,
        "cache_dir": str(Path(cache_dir or default_cache_dir()).resolve()),
        "threads": cpus_per_worker,
        "echo": not quiet,
        "fault": _fault,
        "evaluate_test": evaluate_test,
        "pruning": pruning,
    }
    _launch(job, workers, runlog, ray_address, cpus_per_worker, gpus_per_worker, max_failures)
    pruned = run_dir / PRUNED_FILE
    if pruned.is_file():
        at = json.loads(pruned.read_text())
        raise TrialPruned(at["epoch"], at["score"], at["evaluations"])
    return run_dir


def resume_distributed(
    run_dir: str | Path,
    workers: int,
    *,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    quiet: bool = False,
    ray_address: str | None = None,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
    max_failures: int = 1,
) -> Path:
    """Continue an interrupted data-parallel (or single-process) run from its ``resume.pt`` on ``workers``
    workers. The same number of workers as before gives the run an uninterrupted one would have given."""
    run_dir = Path(run_dir)
    if not (run_dir / RESUME_FILE).is_file():
        raise RunError(f"{run_dir}: no {RESUME_FILE} to continue from")
    recorded = read_yaml(run_dir / "config.yaml")
    cls = resolve_model(recorded["model_spec"])
    check_data_parallel(cls, workers)
    data = data_dir or recorded["data"]["path"]
    job = {
        "run_dir": str(run_dir.resolve()),
        "data_dir": str(Path(data).resolve()),
        "modalities": recorded["data"].get("modalities"),
        "model_spec": recorded["model_spec"],
        "config": recorded["config"],
        "preset_overrides": (recorded.get("preset") or {}).get("overrides") or {},
        "device": device,
        "cache_dir": str(default_cache_dir().resolve()),
        "threads": cpus_per_worker,
        "echo": not quiet,
        "fault": None,
        "evaluate_test": True,
        "pruning": None,
    }
    runlog = RunLog(run_dir / "train.log", echo=not quiet, append=True)
    _launch(job, workers, runlog, ray_address, cpus_per_worker, gpus_per_worker, max_failures)
    return run_dir


def finished_result(run_dir: str | Path) -> TrainResult:
    """The :class:`TrainResult` of a finished run, read back from its files (what a data-parallel trial returns:
    the workers trained in other processes)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    mode = metrics.get("eval_mode") or "warm"

    def split_result(split: str) -> EvalResult | None:
        if metrics.get(split) is None:
            return None
        per_user = per_user_metrics(run_dir, split)
        users = per_user.pop("users")
        return EvalResult(split, metrics[split], per_user, users, 0.0, mode)

    valid = split_result("valid")
    assert valid is not None, f"{run_dir}: metrics.json has no valid metrics"
    return TrainResult(
        metrics["best_epoch"],
        valid,
        split_result("test"),
        metrics.get("history", []),
        metrics.get("stop_reason", ""),
        metrics.get("timings", {}),
        metrics.get("validation", {}),
    )


def _launch(
    job: dict[str, Any],
    workers: int,
    runlog: RunLog,
    ray_address: str | None,
    cpus_per_worker: int,
    gpus_per_worker: float,
    max_failures: int,
) -> None:
    """Run :func:`_worker_loop` on ``workers`` Ray Train workers; a failure the restarts could not cure is one line."""
    ray_torch = ray_train()
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    backend = "NCCL" if gpus_per_worker > 0 else "gloo"
    runlog(
        f"data-parallel: {workers} workers through Ray Train ({backend}), {cpus_per_worker} CPU thread(s)"
        + (f" and {gpus_per_worker:g} GPU" if gpus_per_worker else "")
        + f" each; a failed worker restarts the group from the last resume state (up to {max_failures} times)"
    )
    started = not ray.is_initialized()
    if started:  # a fresh local Ray unless an address is given: never a cluster that merely happens to run here
        ray.init(address=ray_address or "local", include_dashboard=False, log_to_driver=job["echo"])
    storage = tempfile.mkdtemp(prefix="modalrec-ray-train-")
    try:
        resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
        trainer = ray_torch.TorchTrainer(
            _worker_loop,
            train_loop_config=job,
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
            ),
            run_config=RunConfig(
                name="modalrec", storage_path=storage, failure_config=FailureConfig(max_failures=max_failures)
            ),
        )
        result = trainer.fit()
    except Exception as exc:  # Ray raises its own error types for a group that failed beyond its restarts
        raise RunError(_failure_line(job["run_dir"], exc)) from None
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()
    if getattr(result, "error", None) is not None:
        raise RunError(_failure_line(job["run_dir"], result.error))
    ended = ("metrics.json", PRUNED_FILE)
    if not any((Path(job["run_dir"]) / name).is_file() for name in ended):
        raise RunError(f"{job['run_dir']}: the workers ended without writing metrics.json")


def _failure_line(run_dir: str, exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
    saved = (Path(run_dir) / RESUME_FILE).is_file()
    how = f"continue it with: modalrec train --resume {run_dir} --workers N" if saved else "no resume state was written"
    return f"{run_dir}: data-parallel training failed ({first}); {how}"


class _ExitOnce(Callback):
    """Fault injection for tests: worker ``rank`` exits abruptly at the end of ``epoch``, the first time only."""

    def __init__(self, rank: int, fault: dict[str, int], marker: Path) -> None:
        self.armed = rank == fault["rank"] and not marker.exists()
        self.epoch, self.marker = fault["epoch"], marker

    def on_epoch_boundary(self, trainer: Trainer, epoch: int) -> None:
        if self.armed and epoch == self.epoch:
            self.marker.touch()
            os._exit(1)


def _worker_loop(job: dict[str, Any]) -> None:
    """What every Ray Train worker runs: build the run's model, train its share, worker 0 writes the files."""
    import ray.train
    import ray.train.torch as ray_torch

    ctx = ray.train.get_context()
    parallel = DataParallel(ctx.get_world_rank(), ctx.get_world_size())
    lead = parallel.rank == 0
    torch.set_num_threads(int(job["threads"]))
    device = "cpu" if job["device"] == "cpu" else str(ray_torch.get_device())
    run_dir = Path(job["run_dir"])
    dataset = load_dataset(job["data_dir"], job["modalities"])
    cls = resolve_model(job["model_spec"])
    config = Config(job["config"], job["preset_overrides"])
    model, config, graphs = prepare_model(cls, dataset, device=device, cache_dir=job["cache_dir"], config=config)
    resume = read_resume_state(run_dir)["train"] if (run_dir / RESUME_FILE).is_file() else None
    runlog = RunLog(run_dir / "train.log", echo=job["echo"], append=True) if lead else None
    log = runlog if runlog is not None else (lambda line: None)
    if resume is not None:
        log(f"worker group (re)started: continuing {describe_position(resume)} on {parallel.world} workers")
    writer = _ResumeWriter(run_dir, model, config, dataset, resume) if lead else None
    hooks: list[Callback] = [ProgressCallback(log, False), CheckpointSchedule()]
    if job.get("fault"):
        hooks.append(_ExitOnce(parallel.rank, job["fault"], run_dir.parent / f".{run_dir.name}.fault-injected"))
    if job["pruning"] is not None:  # the tuner's decision is taken on worker 0 and broadcast
        hooks.append(SharedPruning(job["pruning"]() if lead else None, parallel.broadcast_flag))
    trainer = Trainer(
        model, dataset, config, log=log, device=device, write_state=writer, callbacks=hooks, parallel=parallel
    )
    try:
        result = trainer.fit(resume, job["evaluate_test"])
    except TrialPruned as pruned:  # every worker stopped at the same validation; the driver raises it again
        log(f"pruned by the tuner after epoch {pruned.epoch} (valid score {pruned.score:.4f})")
        if lead:
            at = {"epoch": pruned.epoch, "score": pruned.score, "evaluations": pruned.evaluations}
            write_json(run_dir / PRUNED_FILE, at)
        parallel.barrier()
        return
    if lead:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        extra = {"data_parallel": {"workers": parallel.world, "backend": backend, "threads_per_worker": job["threads"]}}
        _write_finished_run(run_dir, model, dataset, config, graphs, result, extra)
        writer.path.unlink(missing_ok=True)
    parallel.barrier()
