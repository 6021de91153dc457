"""Progress display for training: durations, elapsed time with an upper-bound ETA, a rich bar or plain lines."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


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
        """Record one epoch's wall time."""
        self.timed.append(seconds)

    def elapsed(self) -> float:
        """Seconds since the clock was made."""
        return time.perf_counter() - self.start

    def left(self, epochs_done: int) -> float | None:
        """Upper bound on the seconds left after ``epochs_done`` epochs; None before any epoch was timed."""
        if not self.timed:
            return None
        return float(np.mean(self.timed)) * max(0, self.max_epochs - epochs_done)

    def describe(self, epochs_done: int) -> str:
        """``elapsed 1m05s, ≤ 3m10s left`` (no bound before the first timed epoch)."""
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
        """A bar for the epoch (None without a rich bar); ``completed`` batches already done."""
        if self._progress is None:
            return None
        return self._progress.add_task("train", total=n_batches, completed=completed, epoch=epoch, loss=0.0, run=run)

    def advance(self, task, loss: float) -> None:
        """One batch done with loss ``loss``."""
        if task is not None and self._progress is not None:
            self._progress.update(task, advance=1, loss=loss)

    def end_epoch(self, task, line: str) -> None:
        """Close the epoch's bar and print ``line`` above the bars (or log it)."""
        if task is not None and self._progress is not None:
            self._progress.remove_task(task)
            self._progress.console.print(line)
            return
        self.log(line)
