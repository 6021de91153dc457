"""The one trainer: sampling, optimisation, early stopping, best-weight restore, one test pass."""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import math
import os
import random
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modalrec.errors import ConfigError, ModalrecError
from modalrec.evaluate import EvalResult, Evaluator
from modalrec.models.base import Batch

if TYPE_CHECKING:
    from modalrec.config import Config
    from modalrec.data.dataset import Dataset
    from modalrec.models.base import Recommender


_ALLOCATOR_TUNED = False


def keep_freed_memory_in_process() -> bool:
    """Stop glibc from returning large freed blocks to the kernel after every training step.

    By default glibc serves each allocation above 128 KiB-32 MiB with its own ``mmap`` and
    unmaps it on free, so every step re-faults the pages of its (batch × d) and sparse
    temporaries: on the Baby shape this page-fault traffic was up to half of an epoch of
    BM3/FREEDOM on 2 cores. With ``M_MMAP_MAX = 0`` and a high trim threshold the freed
    memory stays in the heap and is reused; peak RSS grows by ~10-15%. Linux/glibc only (a
    no-op elsewhere); set ``MODALREC_DEFAULT_MALLOC=1`` to keep the system's behaviour.
    Returns whether the setting was applied.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if os.environ.get("MODALREC_DEFAULT_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    ok = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
    _ALLOCATOR_TUNED = ok
    return ok


def seed_everything(seed: int) -> None:
    """Reset Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def deterministic_cpu_kernels(device: torch.device) -> None:
    """Make torch's CPU kernels bit-reproducible across runs, whatever the thread timing.

    With several intra-op threads, the CPU kernel of ``index_put_(..., accumulate=True)``
    (the backward of every ``table[index]`` gather) adds rows with atomic float adds, so the
    summation order, hence the last bits of a gradient, follow the thread timing: two runs
    of one seed drifted apart after a few epochs. torch's deterministic mode switches such
    kernels to their serial versions; filling new uninitialised memory with NaN (part of
    that mode) is turned off as it costs time and changes no result. CPU only: on CUDA the
    mode would demand a cuBLAS workspace setting and is not promised there. Process-wide.
    """
    if device.type != "cpu":
        return
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False


class NegativeSampler:
    """Uniform negatives, one per positive, redrawn every epoch, never a training positive.

    Candidates are the items that occur in training (MMRec). Rejection sampling is
    vectorised: all negatives are drawn at once and only the collisions — found by a
    binary search in the sorted (user, item) keys of R — are redrawn.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int, rng: np.random.Generator) -> None:
        self.users = np.ascontiguousarray(users, dtype=np.int64)
        self.items = np.ascontiguousarray(items, dtype=np.int64)
        self.n_items = n_items
        self.rng = rng
        self.pool = np.unique(self.items)
        self.keys = np.unique(self.users * n_items + self.items)
        per_user = np.bincount(self.keys // n_items)  # distinct items per user (repeated pairs count once)
        if per_user.max(initial=0) >= self.pool.size:
            u = int(np.argmax(per_user))
            raise ModalrecError(f"user {u} has interacted with every training item; no negative can be sampled")

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, self.keys.size - 1)
        return self.keys[pos] == keys

    def sample(self, users: np.ndarray) -> np.ndarray:
        neg = self.pool[self.rng.integers(0, self.pool.size, size=users.size)]
        todo = np.flatnonzero(self.is_positive(users, neg))
        while todo.size:
            neg[todo] = self.pool[self.rng.integers(0, self.pool.size, size=todo.size)]
            todo = todo[self.is_positive(users[todo], neg[todo])]
        return neg

    def draw_epoch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One epoch's shuffled (users, pos, neg) arrays: the permutation, then the negatives."""
        order = self.rng.permutation(self.users.size)
        users, pos = self.users[order], self.items[order]
        return users, pos, self.sample(users)

    def epoch(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Shuffle the training pairs and yield (users, pos, neg) batches of ``batch_size``."""
        users, pos, neg = self.draw_epoch()
        for lo in range(0, users.size, batch_size):
            hi = lo + batch_size
            yield users[lo:hi], pos[lo:hi], neg[lo:hi]


@dataclass
class TrainResult:
    best_epoch: int
    valid: EvalResult
    test: EvalResult | None  # None when fit(..., evaluate_test=False): a tuning trial never sees test
    history: list[dict] = field(default_factory=list)
    stop_reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of the process (CPU) or peak allocated GPU memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m`` — a duration for progress lines."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class EpochClock:
    """Elapsed time and an upper bound on the time left, from the epochs timed in this process.

    Time left ≤ (mean seconds per epoch, training + ranking) × (max epochs − epochs done): early
    stopping can only end a run sooner, never later, so the estimate is an upper bound.
    """

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        self.start = time.perf_counter()
        self.timed: list[float] = []

    def add(self, seconds: float) -> None:
        self.timed.append(seconds)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, epochs_done: int) -> float | None:
        if not self.timed:
            return None
        return float(np.mean(self.timed)) * max(0, self.max_epochs - epochs_done)

    def describe(self, epochs_done: int) -> str:
        left = self.left(epochs_done)
        text = f"elapsed {format_duration(self.elapsed())}"
        return text if left is None else f"{text}, ≤ {format_duration(left)} left"


class ProgressReporter:
    """Rich progress bar per epoch on a terminal; plain log lines otherwise or when quiet."""

    def __init__(self, log: Callable[[str], None], rich_bar: bool) -> None:
        self.log = log
        self.rich_bar = rich_bar
        self._progress = None

    def __enter__(self) -> ProgressReporter:
        if self.rich_bar:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TimeElapsedColumn(),
                TextColumn("epoch left"),
                TimeRemainingColumn(),
                TextColumn("· run {task.fields[run]}"),
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int, n_batches: int, run: str = "", completed: int = 0):
        if self._progress is None:
            return None
        return self._progress.add_task("train", total=n_batches, completed=completed, epoch=epoch, loss=0.0, run=run)

    def advance(self, task, loss: float) -> None:
        if task is not None and self._progress is not None:
            self._progress.update(task, advance=1, loss=loss)

    def end_epoch(self, task, line: str) -> None:
        if task is not None and self._progress is not None:
            self._progress.remove_task(task)
            self._progress.console.print(line)
            return
        self.log(line)


# ---------------------------------------------------------------------- resumable training state
def capture_rng_state(sampler_rng: np.random.Generator, device: torch.device) -> dict[str, Any]:
    """Every random state training draws from: Python, NumPy (global and the sampler's), torch (CPU, CUDA).

    Per-epoch graph samplers and models' dropout/noise draw from torch's global generator, so
    restoring it restores them too.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "sampler": copy.deepcopy(sampler_rng.bit_generator.state),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], sampler_rng: np.random.Generator, device: torch.device) -> None:
    """Inverse of :func:`capture_rng_state` (the CUDA state only when training on CUDA and it was saved)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    sampler_rng.bit_generator.state = state["sampler"]
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingStopped(Exception):
    """Raised by :func:`fit` when an interrupt was requested, after the resume state was handed over.

    ``epoch`` is the epoch to run next, or the one in progress when ``batch`` (the next batch) is set;
    ``saved`` whether a state was written (False when no checkpoint callback was given).
    """

    def __init__(self, signum: int, epoch: int, batch: int | None, n_batches: int, saved: bool) -> None:
        where = f"after epoch {epoch - 1}" if batch is None else f"in epoch {epoch}, after batch {batch} of {n_batches}"
        super().__init__(f"stopped {where}")
        self.signum, self.epoch, self.batch, self.n_batches, self.saved = signum, epoch, batch, n_batches, saved
        self.where = where


def _test_signal_hook(epoch: int, batch: int | None) -> None:
    """Test-only: ``MODALREC_TEST_SIGNAL=NAME:EPOCH[:BATCH]`` sends signal NAME to this process after that
    epoch's resume state is handed over (or after that batch of it) — a deterministic way for the tests to
    kill (``KILL``) or interrupt (``INT``/``TERM``) a training subprocess at a chosen point."""
    spec = os.environ.get("MODALREC_TEST_SIGNAL")
    if not spec:
        return
    name, _, rest = spec.partition(":")
    e, _, b = rest.partition(":")
    if int(e) == epoch and ((b == "" and batch is None) or (b != "" and batch is not None and int(b) == batch)):
        os.kill(os.getpid(), getattr(signal, f"SIG{name.upper()}"))


OPTIMIZERS = ("adam", "sgd")


def make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """The trainer's optimizer: ``adam`` (MMRec's, the default) or plain ``sgd`` (Rendle's BPR, Cornac).

    Both take ``learning_rate`` and ``weight_decay``. With ``sgd`` the step is taken on the batch
    MEAN loss, so per-sample SGD with step η corresponds to ``learning_rate`` = η · batch size.
    """
    kind = str(config.get("optimizer", "adam")).lower()
    if kind not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {config.get('optimizer')!r}")
    cls = torch.optim.Adam if kind == "adam" else torch.optim.SGD
    return cls(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


def checkpoint_interval(config: Config) -> int:
    """Epochs between resume states: ``checkpoint_every``, where 0 means at every evaluation (``eval_step``)."""
    every = int(config.get("checkpoint_every", 0))
    if every < 0:
        raise ConfigError(f"checkpoint_every = {every}: must be ≥ 0 (0 = at every evaluation)")
    return every or int(config.eval_step)


def fit(
    model: Recommender,
    dataset: Dataset,
    config: Config,
    log: Callable[[str], None] = print,
    progress: bool = False,
    device: str | torch.device = "cpu",
    rng: np.random.Generator | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    interrupt: Callable[[], int | None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    evaluate_test: bool = True,
) -> TrainResult:
    """Train ``model`` with early stopping on ``config.valid_metric``; test once on the best weights.

    The validation metric must improve strictly to count; after ``stopping_step``
    evaluations without improvement training stops, but never before ``min_epochs`` epochs
    (a model started near zero can sit on a plateau for more than the patience first). A NaN/inf loss stops training and
    keeps the best result so far. The test split is evaluated exactly once, on the
    restored best weights, and is never used for any decision.

    Resumable: every ``checkpoint_every`` epochs (0 = at every evaluation) ``checkpoint`` is
    called with the complete trainer state (weights, optimiser, LR schedule, early-stopping state,
    best weights, history, every RNG state, the model's :meth:`extra_state`); ``fit(...,
    resume=that state)`` continues bit-for-bit as if never stopped (same device and thread count).
    ``interrupt()`` is polled after every batch and every epoch; when it returns a signal number
    the state at that point (mid-epoch if need be) goes to ``checkpoint`` and
    :class:`TrainingStopped` is raised.

    ``on_epoch(epoch, score)`` is called after every validation evaluation with the epoch and its
    ``valid_metric``; an exception it raises ends training there and propagates (a tuner's pruning:
    ``modalrec tune`` reports the score to Optuna and stops a trial the pruner gives up on).
    ``evaluate_test=False`` skips the test pass (the result's ``test`` is None): a tuning trial is
    selected on validation and never evaluates test.
    """
    device = torch.device(device)
    keep_freed_memory_in_process()
    deterministic_cpu_kernels(device)
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    train_u, train_i = dataset.split("train")
    sampler = NegativeSampler(train_u, train_i, dataset.n_items, rng)
    ks = list(config.topk)
    metric = config.valid_metric.lower()
    eval_mode = config.get("eval_mode")
    valid_eval = Evaluator(
        dataset, "valid", ks, tuple(config.metrics), block_size=config.eval_batch_size, device=device, mode=eval_mode
    )
    if metric not in {f"{m}@{k}" for m in config.metrics for k in ks}:
        raise ModalrecError(f"valid_metric {config.valid_metric!r} is not among the computed metrics/topk")
    optimizer = make_optimizer(model, config)
    gamma, period = config.learning_rate_scheduler
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: gamma ** (e / period))
    batch_size = int(config.train_batch_size)
    n_batches = math.ceil(train_u.size / batch_size)
    max_epochs = int(config.epochs)
    every = checkpoint_interval(config)

    st: dict[str, Any] = {
        "epoch": 0,  # the epoch to run next (or the one in progress when ``batch`` is set)
        "batch": None,  # mid-epoch: index of the next batch to run
        "epoch_loss": 0.0,
        "epoch_train_seconds": 0.0,
        "best_score": -math.inf,
        "best_epoch": -1,
        "best_state": None,
        "best_valid": None,
        "bad_evals": 0,
        "history": [],
        "epoch_seconds": [],
        "eval_seconds": [],
    }
    rng_epoch_start = None
    if resume is not None:
        st.update(copy.copy(resume["trainer"]))
        model.load_state_dict({k: v.to(device) for k, v in resume["model_state"].items()})
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if st["best_valid"] is not None:
            st["best_valid"] = EvalResult(**st["best_valid"])
        rng_epoch_start = resume["rng_epoch_start"]
        restore_rng_state(resume["rng"], rng, device)
        if st["batch"] is None:  # at an epoch boundary the model's extra state precedes the next pre_epoch
            model.load_extra_state(resume["model_extra"])

    def state(rng_now: dict[str, Any]) -> dict[str, Any]:
        trainer = {k: v for k, v in st.items() if k != "best_valid"}
        bv = st["best_valid"]
        trainer["best_valid"] = None if bv is None else dataclasses.asdict(bv)
        return {
            "trainer": trainer,
            "model_state": model.state_dict(),
            "model_extra": model.extra_state(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_now,
            "rng_epoch_start": rng_epoch_start if st["batch"] is not None else None,
            "device": device.type,
            "threads": torch.get_num_threads(),
        }

    def stop_here(signum: int) -> None:
        saved = checkpoint is not None
        if saved:
            checkpoint(state(capture_rng_state(rng, device)))
        raise TrainingStopped(signum, st["epoch"], st["batch"], n_batches, saved)

    clock = EpochClock(max_epochs)
    stop_reason = "max epochs reached"
    history, epoch_seconds, eval_seconds = st["history"], st["epoch_seconds"], st["eval_seconds"]
    with ProgressReporter(log, progress) as reporter:
        while st["epoch"] < max_epochs:
            epoch = st["epoch"]
            t_wall = time.perf_counter()
            model.train()
            if st["batch"] is None:  # a fresh epoch
                rng_epoch_start = capture_rng_state(rng, device)
                model.pre_epoch(epoch)
                users, pos, neg = sampler.draw_epoch()
                st["batch"], st["epoch_loss"], st["epoch_train_seconds"] = 0, 0.0, 0.0
            else:  # resuming mid-epoch: replay the epoch's draws, then return to where it stopped
                rng_now = capture_rng_state(rng, device)
                restore_rng_state(rng_epoch_start, rng, device)
                model.pre_epoch(epoch)
                users, pos, neg = sampler.draw_epoch()
                restore_rng_state(rng_now, rng, device)
                model.load_extra_state(resume["model_extra"])  # after the replayed pre_epoch: mid-epoch state
            task = reporter.start_epoch(epoch, n_batches, clock.describe(epoch), completed=st["batch"])
            finite = True
            t0 = time.perf_counter()
            for b in range(st["batch"], n_batches):
                lo = b * batch_size
                batch = Batch(*(torch.from_numpy(a[lo : lo + batch_size]).to(device) for a in (users, pos, neg)))
                optimizer.zero_grad(set_to_none=True)
                loss = model.loss(batch)
                if not torch.isfinite(loss):
                    finite = False
                    break
                loss.backward()
                optimizer.step()
                value = float(loss.detach())
                st["epoch_loss"] += value
                st["batch"] = b + 1
                reporter.advance(task, value)
                _test_signal_hook(epoch, b)
                signum = interrupt() if interrupt is not None else None
                if signum is not None:
                    st["epoch_train_seconds"] += time.perf_counter() - t0
                    reporter.end_epoch(task, f"epoch {epoch:4d}  interrupted after batch {b + 1} of {n_batches}")
                    stop_here(signum)
            train_seconds = st["epoch_train_seconds"] + time.perf_counter() - t0
            epoch_seconds.append(train_seconds)
            record = {"epoch": epoch, "loss": st["epoch_loss"] / n_batches, "train_seconds": round(train_seconds, 4)}
            st["batch"], st["epoch"] = None, epoch + 1
            if not finite:
                history.append({**record, "loss": None})  # None, not NaN: metrics.json stays strict JSON
                reporter.end_epoch(task, f"epoch {epoch}: loss is NaN/inf — stopping, keeping the best epoch")
                stop_reason = f"non-finite loss at epoch {epoch}"
                break
            scheduler.step()
            line = f"epoch {epoch:4d}  loss {record['loss']:.5f}  {train_seconds:.2f}s"
            if (epoch + 1) % int(config.eval_step) == 0:
                result = valid_eval.evaluate(model)
                eval_seconds.append(result.seconds)
                record["valid"] = result.rounded()
                score = result.metrics[metric]
                line += f"  valid {metric} {score:.4f}"
                if score > st["best_score"]:
                    st["best_score"], st["best_epoch"], st["best_valid"], st["bad_evals"] = score, epoch, result, 0
                    st["best_state"] = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                    line += "  *"
                else:
                    st["bad_evals"] += 1
                if on_epoch is not None:
                    on_epoch(epoch, score)
            history.append(record)
            first_timed = not clock.timed
            clock.add(time.perf_counter() - t_wall)
            reporter.end_epoch(task, f"{line}  [{clock.describe(epoch + 1)}]")
            if first_timed and epoch + 1 < max_epochs:
                reporter.end_epoch(
                    None,
                    f"ETA: ≤ {format_duration(clock.left(epoch + 1) or 0.0)} for the remaining "
                    f"{max_epochs - epoch - 1} of {max_epochs} epochs at {format_duration(clock.timed[0])} per "
                    "epoch — an upper bound: early stopping usually ends sooner",
                )
            if st["bad_evals"] > int(config.stopping_step) and epoch + 1 >= int(config.get("min_epochs", 0)):
                stop_reason = f"no improvement of valid {metric} for {st['bad_evals']} evaluations"
                break
            if st["epoch"] >= max_epochs:
                break
            wrote = checkpoint is not None and (epoch + 1) % every == 0
            if wrote:
                checkpoint(state(capture_rng_state(rng, device)))
            _test_signal_hook(epoch, None)
            signum = interrupt() if interrupt is not None else None
            if signum is not None:
                if wrote:  # nothing changed since that state was written
                    raise TrainingStopped(signum, st["epoch"], None, n_batches, True)
                stop_here(signum)
    best_state, best_valid, best_epoch = st["best_state"], st["best_valid"], st["best_epoch"]
    if best_state is None:  # never evaluated (NaN in the first epoch or eval_step > epochs)
        best_valid = valid_eval.evaluate(model)
        best_epoch = -1
    else:
        model.load_state_dict(best_state)
    model.eval()
    test = None
    if evaluate_test:
        test = Evaluator(
            dataset,
            "test",
            ks,
            tuple(config.metrics),
            mask_valid=config.mask_valid_at_test,
            block_size=config.eval_batch_size,
            device=device,
            mode=eval_mode,
        ).evaluate(model)
    log(
        f"best epoch {best_epoch}: valid {metric} {best_valid.metrics[metric]:.4f}; "
        + (
            "test " + "  ".join(f"{k} {v:.4f}" for k, v in test.metrics.items() if k.startswith(("recall", "ndcg")))
            if test is not None
            else "test not evaluated (selection run)"
        )
    )
    timings = {
        "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else 0.0,
        "ranking_seconds": float(np.mean(eval_seconds)) if eval_seconds else best_valid.seconds,
        "test_ranking_seconds": test.seconds if test is not None else 0.0,
        "total_train_seconds": float(np.sum(epoch_seconds)),
        "epochs_run": len(epoch_seconds),
        "peak_memory_mb": peak_memory_mb(device),
    }
    return TrainResult(best_epoch, best_valid, test, history, stop_reason, timings)
