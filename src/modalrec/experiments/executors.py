"""Where a campaign's trials run: in this process (``local``) or as Ray core tasks (``ray``).

Every command that trains many runs (``benchmark``, ``sweep``, ``ablate``, ``tune``) describes
each trial as a plain, picklable dict (a *trial spec*: model, overrides with the seed, setting
id, data path, report folder…) and hands it to an :class:`Executor`. Both executors call the
same single-trial function, :func:`modalrec.experiments.trials.run_trial`, and only return
its record: the DRIVER (the process that runs the command) writes every record into the
results store, so workers never write the store and an interrupted campaign resumes with
either executor. A trial that raises, whose worker process dies (killed, out of memory) or that
Ray cannot run comes back as a failed :class:`TrialOutcome` with its reason; the campaign goes
on. See docs/scale.md.
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modalrec.errors import ConfigError, Interrupted, ModalrecError
from modalrec.experiments.trials import run_trial

EXECUTORS = ("local", "ray")
SCALE_EXTRA = "pip install -e '.[scale]'"


def require_extra(module: str, feature: str) -> Any:
    """Import ``module`` (ray, optuna…) or raise a one-line error naming the ``scale`` extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModalrecError(f"{feature} needs the '{module}' package from the 'scale' extra: {SCALE_EXTRA}") from None


@dataclass
class TrialOutcome:
    """What came back for one trial spec: its record, or why it failed."""

    spec: dict[str, Any]
    record: dict[str, Any] | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.record is None


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message`` — a failure reason that fits on one table line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Executor(ABC):
    """Runs trial specs; the driver keeps at most :attr:`capacity` of them in flight and collects outcomes."""

    name = "executor"
    capacity = 1
    # Data-parallel workers each trial trains on (``--workers-per-trial``; 1 = one process, the default).
    workers_per_trial = 1

    def __init__(self, trial_fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        # The single-trial function; tests may pass their own (e.g. one that kills its worker).
        self.trial_fn = trial_fn

    def _fn(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return self.trial_fn if self.trial_fn is not None else run_trial

    @abstractmethod
    def submit(self, spec: dict[str, Any]) -> None:
        """Start (or queue) one trial."""

    @abstractmethod
    def next_done(self, poll: Callable[[], bool] | None = None) -> TrialOutcome:
        """Block until one submitted trial has finished or failed; ``poll()`` True means: stop waiting (interrupt)."""

    @abstractmethod
    def in_flight(self) -> int:
        """Trials submitted and not yet returned by :meth:`next_done`."""

    def cancel(self) -> int:
        """Stop every trial in flight (their run folders keep their resume state); returns how many."""
        return 0

    def close(self) -> None:  # noqa: B027 — most executors hold nothing to release
        """Release what the executor started (a local Ray instance)."""

    def describe(self) -> str:
        return self.name


class LocalExecutor(Executor):
    """Today's behaviour: one trial at a time, in this process, in submission order.

    Ctrl-C/SIGTERM reach the trainer, which saves its resume state and raises :class:`Interrupted`;
    that stops the campaign (it is not a trial failure).
    """

    name = "local"
    capacity = 1

    def __init__(self, trial_fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        super().__init__(trial_fn)
        self._queue: deque[dict[str, Any]] = deque()

    def submit(self, spec: dict[str, Any]) -> None:
        self._queue.append(spec)

    def next_done(self, poll: Callable[[], bool] | None = None) -> TrialOutcome:
        spec = self._queue.popleft()
        try:
            return TrialOutcome(spec, record=self._fn()(spec))
        except Interrupted as exc:  # Ctrl-C reached the trainer: the campaign stops, the trial resumes next time
            where = str(exc).split(" — ")[0]
            raise Interrupted(
                f"{spec['model']} seed {spec['seed']} [{spec['sid']}]: {where} — run the same command again to resume",
                exc.exit_code,
            ) from None
        except KeyboardInterrupt:
            raise
        except MemoryError:
            return TrialOutcome(spec, error="out of memory (MemoryError)")
        except Exception as exc:  # any other failure of this one trial: recorded, the campaign goes on
            return TrialOutcome(spec, error=describe_exception(exc))

    def in_flight(self) -> int:
        return len(self._queue)

    def cancel(self) -> int:
        self._queue.clear()  # queued, not started: nothing was running
        return 0


def _ray_trial(trial_fn: Callable[[dict[str, Any]], dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """The body of a Ray task: torch gets as many threads as CPUs the task holds, then the shared trial runs."""
    from modalrec.threads import configure_threads

    configure_threads(max(1, int(spec.get("threads") or 1)))
    return trial_fn(spec)


class RayExecutor(Executor):
    """Ray core tasks, one per trial, each holding ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs.

    ``address``: None starts a local Ray on this machine (``num_cpus`` CPUs, default all); ``auto``
    finds a running cluster; ``ray://host:10001`` or ``host:6379`` joins that one. Tasks are not
    retried by Ray (``max_retries=0``): a trial whose worker dies is reported failed, and re-run
    when the same command runs again. The driver keeps as many trials in flight as the cluster
    has slots (``CPUs // cpus_per_trial``, and ``GPUs // gpus_per_trial`` when GPUs are asked for),
    so "running" in the progress means running, and the order of the queue is kept.

    The workers import ``modalrec`` themselves: on a cluster it must be installed (same version)
    on every node, and the data and report folders must be on a file system every node sees. So
    must a model of the user's own file: a trial names it by its absolute ``path/file.py:Class``
    spec and each worker imports it from there (a worker that finds other code there than the
    driver hashed refuses the trial); a model from an installed package must be installed on every node.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        cpus_per_trial: float = 1,
        gpus_per_trial: float = 0,
        num_cpus: int | None = None,
        trial_fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(trial_fn)
        if cpus_per_trial <= 0 or gpus_per_trial < 0:
            raise ConfigError(
                f"--cpus-per-trial {cpus_per_trial:g} must be > 0 and --gpus-per-trial {gpus_per_trial:g} ≥ 0"
            )
        ray = require_extra("ray", "--executor ray")
        self.ray = ray
        self.cpus, self.gpus = float(cpus_per_trial), float(gpus_per_trial)
        self.started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
            if address is None:
                kwargs["num_cpus"] = num_cpus
                # A local Ray's workers see this process's environment; put this modalrec first on their path
                # so they run the same code as the driver (the installed package on a cluster).
                src = str(Path(__file__).resolve().parents[2])
                path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": str(self._threads())}}
            else:
                kwargs["address"] = address
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = "a local Ray" if address is None else f"the Ray cluster at {address!r}"
                raise ModalrecError(
                    f"--executor ray: cannot start or join {where} ({describe_exception(exc)})"
                ) from None
            self.started = True
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 0) // self.cpus)
        if self.gpus > 0:
            slots = min(slots, int(resources.get("GPU", 0) // self.gpus))
        if slots < 1:
            raise ModalrecError(
                f"--executor ray: the cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} "
                f"GPUs; a trial asks for {self.cpus:g} CPUs and {self.gpus:g} GPUs"
            )
        self.capacity = slots
        self.resources = resources
        self._remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)(_ray_trial)
        self._refs: dict[Any, dict[str, Any]] = {}
        self._fn_ref = None

    def _threads(self) -> int:
        return max(1, int(math.floor(self.cpus)))

    def submit(self, spec: dict[str, Any]) -> None:
        spec = {**spec, "threads": self._threads()}
        if self.gpus > 0 and spec.get("device", "cpu") == "cpu":
            spec["device"] = "cuda"
        self._refs[self._remote.remote(self._fn(), spec)] = spec

    def next_done(self, poll: Callable[[], bool] | None = None) -> TrialOutcome:
        ray = self.ray
        while True:
            done, _ = ray.wait(list(self._refs), num_returns=1, timeout=0.5)
            if done:
                break
            if poll is not None and poll():
                raise StopWaiting
        ref = done[0]
        spec = self._refs.pop(ref)
        try:
            return TrialOutcome(spec, record=ray.get(ref))
        except ray.exceptions.RayTaskError as exc:  # the trial raised: its own exception, without Ray's wrapping
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            return TrialOutcome(spec, error=describe_exception(cause))
        except ray.exceptions.OutOfMemoryError:
            return TrialOutcome(spec, error="out of memory: Ray's memory monitor killed the worker")
        except ray.exceptions.WorkerCrashedError:
            return TrialOutcome(spec, error="worker died (killed, crashed or out of memory)")
        except ray.exceptions.RayError as exc:
            return TrialOutcome(spec, error=f"Ray: {describe_exception(exc)}")

    def in_flight(self) -> int:
        return len(self._refs)

    def cancel(self) -> int:
        n = len(self._refs)
        for ref in list(self._refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 — already finished or gone: nothing to stop
                pass
        self._refs.clear()
        return n

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False

    def describe(self) -> str:
        return (
            f"ray ({self.resources.get('CPU', 0):g} CPUs, {self.resources.get('GPU', 0):g} GPUs; "
            f"{self.cpus:g} CPU{'s' if self.cpus != 1 else ''}"
            + (f" + {self.gpus:g} GPU" if self.gpus else "")
            + f" per trial → {self.capacity} at a time)"
        )


class StopWaiting(Exception):
    """Raised by :meth:`Executor.next_done` when ``poll()`` asked it to stop waiting."""


def make_executor(
    kind: str = "local",
    ray_address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    workers_per_trial: int = 1,
) -> Executor:
    """The executor a command's ``--executor`` names (see the module docstring).

    ``workers_per_trial`` > 1 trains each trial on that many data-parallel workers (a Ray Train group of its
    own, :mod:`modalrec.run_distributed`), one trial after another: the local executor only — a Ray task holding
    its CPUs cannot yet start a worker group on the same cluster without waiting for itself.
    """
    if workers_per_trial < 1:
        raise ConfigError(f"--workers-per-trial {workers_per_trial}: must be at least 1")
    if workers_per_trial > 1 and kind != "local":
        raise ConfigError(
            "--workers-per-trial trains each trial on a Ray Train group of its own: use it with --executor local "
            "(trials one after another, each on N workers)"
        )
    if kind == "local":
        if ray_address is not None:
            raise ConfigError("--ray-address only applies to --executor ray")
        executor = LocalExecutor()
        executor.workers_per_trial = workers_per_trial
        return executor
    if kind == "ray":
        return RayExecutor(ray_address, cpus_per_trial, gpus_per_trial)
    raise ConfigError(f"--executor {kind!r}: choose from {', '.join(EXECUTORS)}")


class TrialProgress:
    """Counts trials done / running / failed; a Rich bar on a terminal, else the counts in the log lines."""

    def __init__(self, total: int, log: Callable[[str], None], bar: bool = False) -> None:
        self.total, self.log = total, log
        self.done = self.running = self.failed = 0
        self.start = time.perf_counter()
        self._bar = None
        if bar:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]trials"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} done · {task.fields[running]} running · "),
                TextColumn("{task.fields[failed]} failed"),
                TimeElapsedColumn(),
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("trials", total=total, running=0, failed=0)

    def counts(self) -> str:
        return f"{self.done}/{self.total} done, {self.running} running, {self.failed} failed"

    def update(self, done: int = 0, failed: int = 0, running: int | None = None) -> None:
        self.done += done + failed
        self.failed += failed
        if running is not None:
            self.running = running
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, running=self.running, failed=self.failed)

    def add_total(self, n: int) -> None:
        self.total += n
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
