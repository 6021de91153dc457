"""Graceful Ctrl-C / SIGTERM: the first signal asks training to stop at the next safe point, a second quits.

The trainer polls the flag after every batch, writes its resume state and stops; a second
signal raises :class:`KeyboardInterrupt` at once. Every file is written through a temporary
sibling that is removed when a write is cut short (:func:`modalrec.io.atomic_write`), so
neither way leaves a half-written file.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, the shell's convention


class InterruptFlag:
    """Set by the first SIGINT/SIGTERM; calling it returns the signal number or None."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> int | None:
        return self.signum


_active: InterruptFlag | None = None


@contextmanager
def graceful_interrupts() -> Iterator[InterruptFlag]:
    """Install the two-stage SIGINT/SIGTERM handlers for the duration of the block, then restore the previous ones.

    A signal that is ignored (SIG_IGN) when the block starts stays ignored. Nested blocks share the outer flag.
    Outside the main thread (where Python cannot install signal handlers) the flag is never set and signals
    keep their usual behaviour.
    """
    global _active
    if _active is not None:
        yield _active
        return
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame) -> None:
        if flag.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        flag.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        sys.stderr.write(
            f"\n{name}: stopping after the current batch and saving the resume state "
            "(press Ctrl-C again to quit at once)\n"
        )
        sys.stderr.flush()

    # An ignored signal stays ignored: a non-interactive shell starts a background job (``nohup cmd &`` in a
    # script) with SIGINT set to SIG_IGN so that a Ctrl-C meant for the foreground does not reach it, and
    # a parent may ignore SIGTERM likewise; installing our handler would undo that choice.
    watched = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, handler) for s in watched}
    _active = flag
    try:
        yield flag
    finally:
        _active = None
        for s, h in previous.items():
            signal.signal(s, h)
