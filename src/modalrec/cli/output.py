"""What every ``modalrec`` command prints through: the consoles, the one-line errors, the lists of files."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from modalrec.errors import Interrupted, ModalrecError

# Output goes through Rich with markup OFF: paths, values and messages can contain brackets
# (``pip install 'modalrec[prepare]'``) that markup would eat. Styled text escapes what it embeds.
err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def console() -> Console:
    """A console on stdout with markup off, like ``err_console``."""
    return Console(markup=False, highlight=False, soft_wrap=True)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user-facing errors into one line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:
            err_console.print(f"interrupted: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:  # the second Ctrl-C: quit now (atomic writes leave no partial file)
            err_console.print("interrupted: stopped at once; no file was left half-written", highlight=False)
            raise typer.Exit(130) from None
        except ModalrecError as exc:
            # a library error worded for Python callers carries its command-line wording (the options' names)
            message = getattr(exc, "cli_message", None) or str(exc)
            err_console.print(f"[red]error:[/red] {escape(message)}", markup=True)
            _show_cause(exc)
            raise typer.Exit(1) from None

    return wrapper


def _show_cause(exc: BaseException) -> None:
    """Under ``-v``, the traceback of what caused a one-line error (e.g. the user's model file failing to import)."""
    if _verbose["on"] and exc.__cause__ is not None:
        import traceback

        err_console.print("caused by:")
        err_console.print("".join(traceback.format_exception(exc.__cause__)).rstrip())


_verbose = {"on": False}  # set by the global -v/--verbose option (modalrec.cli)


def set_verbose(on: bool) -> None:
    """Whether a one-line error also shows the traceback of its cause (the global ``-v``)."""
    _verbose["on"] = on


def echo(line: str) -> None:
    """One line of progress on stdout, flushed at once (a campaign's log)."""
    print(line, flush=True)


def list_files(files: list[Path]) -> None:
    """The files a command wrote, figures apart."""
    figures = [f for f in files if f.suffix == ".png"]
    others = [f for f in files if f.suffix != ".png"]
    c = console()
    c.print("files:\n" + "\n".join(f"  {f}" for f in others), markup=False)
    if figures:
        c.print("figures:\n" + "\n".join(f"  {f}" for f in figures), markup=False)
