"""Test helper: training that sends its own process a signal at a chosen point — deterministic kills and interrupts.

``SignalAt("NAME:EPOCH[:BATCH]")`` is a trainer callback that sends signal NAME after batch BATCH (0-based) of
epoch EPOCH, or, without BATCH, after epoch EPOCH once its resume state was handed over; :func:`install` makes
every training run of the process use it. Run as a script it is ``modalrec`` with that callback installed::

    python tests/signal_runner.py KILL:1 train --model BPR --data DIR --out RUN
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from modalrec.training import Callback, Trainer


class SignalAt(Callback):
    """Sends a signal to this process at one point of training (see the module docstring for the spec).

    It runs after the resume-state schedule and before the interrupt poll (``fit``'s order for callbacks), so
    an INT/TERM is seen at that very batch or epoch boundary, and a KILL after an epoch leaves that epoch's state.
    """

    def __init__(self, spec: str) -> None:
        name, _, rest = spec.partition(":")
        epoch, _, batch = rest.partition(":")
        self.signum = getattr(signal, f"SIG{name.upper()}")
        self.epoch = int(epoch)
        self.batch = int(batch) if batch else None

    def _send(self) -> None:
        os.kill(os.getpid(), self.signum)

    def on_batch_end(self, trainer: Trainer, epoch: int, batch: int, loss: float) -> None:
        if self.batch is not None and (epoch, batch) == (self.epoch, self.batch):
            self._send()

    def on_epoch_boundary(self, trainer: Trainer, epoch: int) -> None:
        if self.batch is None and epoch == self.epoch:
            self._send()


def install(spec: str, patch: Callable[[Any, str, Any], None] = setattr) -> None:
    """Make the runs of this process (``modalrec.runs``, hence the CLI and the experiments) train with
    :class:`SignalAt` ``spec``; ``patch`` is ``setattr`` or a pytest monkeypatch's ``setattr``."""
    import modalrec.runs
    from modalrec.training import fit

    patch(modalrec.runs, "fit", functools.partial(fit, callbacks=[SignalAt(spec)]))


if __name__ == "__main__":
    # A test run in the background (``pytest ... &`` from a script, nohup) starts its children with SIGINT
    # ignored, and modalrec rightly keeps an ignored signal ignored: give this child the handler a foreground
    # ``modalrec`` has, so that the INT it sends itself arrives as a Ctrl-C would.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install(sys.argv[1])
    sys.argv = ["modalrec", *sys.argv[2:]]
    from modalrec.cli import main

    main()
