"""The options several ``modalrec`` commands share, and the helpers that turn them into library arguments."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from modalrec.cli.output import echo
from modalrec.errors import ModalrecError
from modalrec.threads import THREADS_ENV

ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help=f"CPU threads for torch (default: ${THREADS_ENV}, else $OMP_NUM_THREADS, else the usable cores).",
        show_default=False,
    ),
]
DeviceOption = Annotated[str, typer.Option(help="cpu | cuda")]
# evaluate and recommend have always shown --device without a help line
RunDeviceOption = Annotated[str, typer.Option()]
RunModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model code to load the run with (name, path/file.py:Class or module:Class) instead of the spec the run "
        "recorded, e.g. when its file moved.",
        show_default=False,
    ),
]


def set_option(help: str) -> Any:
    """The repeatable ``--set key=value`` config override, with the command's own help line."""
    return typer.Option("--set", help=help)


SetOverrides = list[str] | None
# what every option naming a model accepts (modalrec.models.spec)
MODEL_SPEC_HELP = "a name (see `modalrec models`), path/to/file.py:Class or package.module:Class"
EpochsOption = Annotated[int | None, typer.Option(help="Maximum epochs.")]
# where the trials of benchmark, ablate, sweep and tune run (see start_campaign)
ExecutorOption = Annotated[
    str, typer.Option("--executor", help="Where trials run: local (one after another, here) | ray (Ray tasks).")
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(help="--executor ray: join this cluster (host:port, ray://host:10001, auto); default: a local Ray."),
]
CpusPerTrialOption = Annotated[
    float, typer.Option(help="--executor ray: CPUs each trial holds (torch gets as many threads).")
]
GpusPerTrialOption = Annotated[float, typer.Option(help="--executor ray: GPUs each trial holds (0: CPU only).")]
WorkersPerTrialOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Train each trial on N data-parallel workers (Ray Train, --executor local only; needs the scale extra).",
    ),
]


def split_list(value: str | None) -> list[str] | None:
    """A comma-separated option as a list (None: not given); an empty list is an error."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ModalrecError("empty list")
    return items


def parse_seeds(value: str) -> list[int]:
    """``--seeds 1,2,3`` as integers."""
    try:
        return [int(s) for s in split_list(value) or []]
    except ValueError:
        raise ModalrecError(f"--seeds {value!r}: give integers like 1,2,3") from None


def config_overrides(set_: list[str] | None, config_file: Path | None = None, **options: Any) -> dict[str, Any]:
    """Config overrides: the YAML file's, then ``--set``'s, then every named option that was given (not None)."""
    from modalrec.config import load_override_file, parse_overrides

    overrides = load_override_file(config_file) if config_file else {}
    overrides.update(parse_overrides(set_))
    overrides.update({key: value for key, value in options.items() if value is not None})
    return overrides


@contextlib.contextmanager
def start_campaign(
    device: str, kind: str, address: str | None, cpus: float, gpus: float, threads: int | None, workers: int = 1
) -> Iterator[dict[str, Any]]:
    """Start the --executor of a campaign command, released at the end (a local Ray it started is shut down).

    Yields the keyword arguments every campaign function (benchmark, ablation, sweep, tune) takes:
    the device, the executor, where to log and whether to draw progress bars.
    """
    from modalrec.experiments.executors import make_executor

    if kind == "local" and (cpus != 1 or gpus != 0):
        raise ModalrecError("--cpus-per-trial and --gpus-per-trial apply to --executor ray")
    if kind == "ray" and threads is not None:
        raise ModalrecError(
            "--threads applies to --executor local; with ray, --cpus-per-trial sets each trial's threads"
        )
    executor = make_executor(kind, address, cpus, gpus, workers)
    if kind != "local":
        echo(f"executor: {executor.describe()}")
    try:
        yield {"device": device, "executor": executor, "log": echo, "progress": sys.stdout.isatty()}
    finally:
        executor.close()
