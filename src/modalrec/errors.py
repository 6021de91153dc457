"""Errors a user can act on.

Every error raised for bad input is a :class:`ModalrecError`; the CLI prints its message
on one line and exits with a non-zero code instead of showing a traceback. An error worded for a Python
caller can carry its command-line wording as well (:func:`worded_for_cli`).
"""

from __future__ import annotations

from typing import TypeVar


class ModalrecError(Exception):
    """Base class of all user-facing errors."""


class DataError(ModalrecError):
    """A dataset file is missing, malformed or inconsistent.

    The message always names the file and, where it applies, the line or field.
    """

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        where = f"{path}" if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.message = message


class ConfigError(ModalrecError):
    """A configuration key or value is invalid."""


class RunError(ModalrecError):
    """A run directory is missing, incomplete, or would be overwritten."""


class Interrupted(ModalrecError):
    """Training stopped on Ctrl-C/SIGTERM after saving its resume state; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


E = TypeVar("E", bound=ModalrecError)


def worded_for_cli(exc: E, cli_message: str) -> E:
    """``exc``, worded for a Python caller (it names parameters, e.g. ``out``), carrying ``cli_message``: the same
    error worded for the command line, naming its options (``--out``); the CLI prints that one instead."""
    exc.cli_message = cli_message  # type: ignore[attr-defined]
    return exc
