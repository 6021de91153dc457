"""The trainer's standard hooks: progress lines and ETA, resume states on a schedule, interrupts, pruning."""

from __future__ import annotations

import time
from collections.abc import Callable

from modalrec.training.progress import EpochClock, ProgressReporter, format_duration
from modalrec.training.trainer import Callback, Trainer


class ProgressCallback(Callback):
    """Each epoch's line with elapsed time and an upper bound on the time left, one ETA line after the first
    epoch timed in this process, and a rich progress bar per epoch when ``rich_bar`` (a terminal, not quiet)."""

    def __init__(self, log: Callable[[str], None], rich_bar: bool) -> None:
        self.reporter = ProgressReporter(log, rich_bar)
        self.clock: EpochClock | None = None
        self.task = None
        self.epoch_started = 0.0

    def on_train_start(self, trainer: Trainer) -> None:
        self.clock = EpochClock(trainer.max_epochs)
        self.reporter.__enter__()

    def on_train_end(self, trainer: Trainer) -> None:
        self.reporter.__exit__(None, None, None)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.epoch_started = time.perf_counter()
        done = trainer.state.batch or 0  # batches a mid-epoch resume has already run
        self.task = self.reporter.start_epoch(epoch, trainer.n_batches, self.clock.describe(epoch), completed=done)

    def on_batch_end(self, trainer: Trainer, epoch: int, batch: int, loss: float) -> None:
        self.reporter.advance(self.task, loss)

    def on_epoch_abort(self, trainer: Trainer, epoch: int, line: str) -> None:
        self.reporter.end_epoch(self.task, line)

    def on_epoch_end(self, trainer: Trainer, epoch: int, line: str) -> None:
        clock, max_epochs = self.clock, trainer.max_epochs
        first_timed = not clock.timed
        clock.add(time.perf_counter() - self.epoch_started)
        self.reporter.end_epoch(self.task, f"{line}  [{clock.describe(epoch + 1)}]")
        if first_timed and epoch + 1 < max_epochs:
            self.reporter.end_epoch(
                None,
                f"ETA: ≤ {format_duration(clock.left(epoch + 1) or 0.0)} for the remaining "
                f"{max_epochs - epoch - 1} of {max_epochs} epochs at {format_duration(clock.timed[0])} per "
                "epoch — an upper bound: early stopping usually ends sooner",
            )


class CheckpointSchedule(Callback):
    """Writes the resume state every ``checkpoint_every`` epochs (:func:`modalrec.training.checkpoint_interval`).

    With ``checkpoint_every: 0`` (at every evaluation) a state is written only once ``checkpoint_seconds``
    have passed since the last one (or since training started): on small data an epoch takes milliseconds
    and writing a state at each would cost more than the training. An interrupt still saves the state
    where it stops, so at most ``checkpoint_seconds`` of work are lost only when the process is killed.
    """

    def __init__(self) -> None:
        self.last_write = time.monotonic()

    def on_train_start(self, trainer: Trainer) -> None:
        self.last_write = time.monotonic()

    def on_epoch_boundary(self, trainer: Trainer, epoch: int) -> None:
        if (epoch + 1) % trainer.checkpoint_every != 0:
            return
        if trainer.checkpoint_seconds and time.monotonic() - self.last_write < trainer.checkpoint_seconds:
            return
        trainer.checkpoint()
        self.last_write = time.monotonic()


class InterruptPoll(Callback):
    """Polls ``interrupt()`` after every batch and epoch; a signal number it returns stops training there."""

    def __init__(self, interrupt: Callable[[], int | None]) -> None:
        self.interrupt = interrupt

    def _poll(self, trainer: Trainer) -> None:
        signum = self.interrupt()
        if signum is not None:
            trainer.request_stop(signum)

    def on_batch_end(self, trainer: Trainer, epoch: int, batch: int, loss: float) -> None:
        self._poll(trainer)

    def on_epoch_boundary(self, trainer: Trainer, epoch: int) -> None:
        self._poll(trainer)


class TrialPruned(Exception):
    """A tuner's pruner stopped the trial after ``epoch`` (0-based) with validation ``score``, its
    ``evaluations``-th validation; raised from a pruning hook, it ends training and propagates."""

    def __init__(self, epoch: int, score: float, evaluations: int) -> None:
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch, self.score, self.evaluations = epoch, score, evaluations


class PruningCallback(Callback):
    """Calls ``on_epoch(epoch, score)`` after every validation: a tuner reports the score and may stop the trial
    by raising (the exception ends training and propagates)."""

    def __init__(self, on_epoch: Callable[[int, float], None]) -> None:
        self.on_epoch = on_epoch

    def on_validation_end(self, trainer: Trainer, epoch: int, score: float) -> None:
        self.on_epoch(epoch, score)


class SharedPruning(Callback):
    """The pruning hook of a data-parallel run: ``should_prune(epoch, score)`` (a tuner's report, on worker 0
    only — ``None`` elsewhere) decides, the decision is broadcast from worker 0, and every worker raises
    :class:`TrialPruned` at the same validation, so none is left waiting in a collective."""

    def __init__(self, should_prune: Callable[[int, float], bool] | None, broadcast: Callable[[bool], bool]) -> None:
        self.should_prune, self.broadcast = should_prune, broadcast
        self.evaluations = 0

    def on_validation_end(self, trainer: Trainer, epoch: int, score: float) -> None:
        self.evaluations += 1
        decided = self.should_prune(epoch, score) if self.should_prune is not None else False
        if self.broadcast(decided):
            raise TrialPruned(epoch, score, self.evaluations)
