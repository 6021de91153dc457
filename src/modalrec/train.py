"""The one trainer: sampling, optimisation, early stopping, best-weight restore, one test pass."""

from __future__ import annotations

import copy
import ctypes
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from modalrec.errors import ModalrecError
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

    def epoch(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Shuffle the training pairs and yield (users, pos, neg) batches of ``batch_size``."""
        order = self.rng.permutation(self.users.size)
        users, pos = self.users[order], self.items[order]
        neg = self.sample(users)
        for lo in range(0, users.size, batch_size):
            hi = lo + batch_size
            yield users[lo:hi], pos[lo:hi], neg[lo:hi]


@dataclass
class TrainResult:
    best_epoch: int
    valid: EvalResult
    test: EvalResult
    history: list[dict] = field(default_factory=list)
    stop_reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of the process (CPU) or peak allocated GPU memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


class ProgressReporter:
    """Rich progress bar per epoch on a terminal; plain log lines otherwise or when quiet."""

    def __init__(self, log: Callable[[str], None], rich_bar: bool) -> None:
        self.log = log
        self.rich_bar = rich_bar
        self._progress = None

    def __enter__(self) -> ProgressReporter:
        if self.rich_bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TimeElapsedColumn(),
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int, n_batches: int):
        if self._progress is None:
            return None
        return self._progress.add_task("train", total=n_batches, epoch=epoch, loss=0.0)

    def advance(self, task, loss: float) -> None:
        if task is not None and self._progress is not None:
            self._progress.update(task, advance=1, loss=loss)

    def end_epoch(self, task, line: str) -> None:
        if task is not None and self._progress is not None:
            self._progress.remove_task(task)
            self._progress.console.print(line)
            return
        self.log(line)


def fit(
    model: Recommender,
    dataset: Dataset,
    config: Config,
    log: Callable[[str], None] = print,
    progress: bool = False,
    device: str | torch.device = "cpu",
    rng: np.random.Generator | None = None,
) -> TrainResult:
    """Train ``model`` with early stopping on ``config.valid_metric``; test once on the best weights.

    The validation metric must improve strictly to count; after ``stopping_step``
    evaluations without improvement training stops. A NaN/inf loss stops training and
    keeps the best result so far. The test split is evaluated exactly once, on the
    restored best weights, and is never used for any decision.
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
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    gamma, period = config.learning_rate_scheduler
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: gamma ** (e / period))
    batch_size = int(config.train_batch_size)
    n_batches = math.ceil(train_u.size / batch_size)

    best_score, best_epoch, best_state, best_valid = -math.inf, -1, None, None
    bad_evals, history, stop_reason = 0, [], "max epochs reached"
    epoch_seconds, eval_seconds = [], []
    with ProgressReporter(log, progress) as reporter:
        for epoch in range(int(config.epochs)):
            t0 = time.perf_counter()
            model.train()
            model.pre_epoch(epoch)
            task = reporter.start_epoch(epoch, n_batches)
            total, finite = 0.0, True
            for u, p, n in sampler.epoch(batch_size):
                batch = Batch(*(torch.from_numpy(a).to(device) for a in (u, p, n)))
                optimizer.zero_grad(set_to_none=True)
                loss = model.loss(batch)
                if not torch.isfinite(loss):
                    finite = False
                    break
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                reporter.advance(task, float(loss.detach()))
            epoch_seconds.append(time.perf_counter() - t0)
            record = {"epoch": epoch, "loss": total / n_batches, "train_seconds": round(epoch_seconds[-1], 4)}
            if not finite:
                history.append({**record, "loss": None})  # None, not NaN: metrics.json stays strict JSON
                reporter.end_epoch(task, f"epoch {epoch}: loss is NaN/inf — stopping, keeping the best epoch")
                stop_reason = f"non-finite loss at epoch {epoch}"
                break
            scheduler.step()
            line = f"epoch {epoch:4d}  loss {record['loss']:.5f}  {epoch_seconds[-1]:.2f}s"
            if (epoch + 1) % int(config.eval_step) == 0:
                result = valid_eval.evaluate(model)
                eval_seconds.append(result.seconds)
                record["valid"] = result.rounded()
                score = result.metrics[metric]
                line += f"  valid {metric} {score:.4f}"
                if score > best_score:
                    best_score, best_epoch, best_valid, bad_evals = score, epoch, result, 0
                    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                    line += "  *"
                else:
                    bad_evals += 1
            history.append(record)
            reporter.end_epoch(task, line)
            if bad_evals > int(config.stopping_step):
                stop_reason = f"no improvement of valid {metric} for {bad_evals} evaluations"
                break
    if best_state is None:  # never evaluated (NaN in the first epoch or eval_step > epochs)
        best_valid = valid_eval.evaluate(model)
        best_epoch = -1
    else:
        model.load_state_dict(best_state)
    model.eval()
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
        f"test " + "  ".join(f"{k} {v:.4f}" for k, v in test.metrics.items() if k.startswith(("recall", "ndcg")))
    )
    timings = {
        "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else 0.0,
        "ranking_seconds": float(np.mean(eval_seconds)) if eval_seconds else best_valid.seconds,
        "test_ranking_seconds": test.seconds,
        "total_train_seconds": float(np.sum(epoch_seconds)),
        "epochs_run": len(epoch_seconds),
        "peak_memory_mb": peak_memory_mb(device),
    }
    return TrainResult(best_epoch, best_valid, test, history, stop_reason, timings)
