"""What a ``data prepare`` run records as it goes (for ``prepare.json``) and shows (on stderr):
stage timings, warnings, log lines, progress bars, and the fingerprints of its inputs."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES = 10  # how many ids a report lists for each kind of missing feature


@dataclass
class RunLog:
    """Shared by every step of a run: ``say`` a log line, ``warn``, time a ``stage``; ``progress``
    says whether encoders show progress bars. ``timings`` and ``warnings`` go into the report."""

    say: Callable[[str], None]
    progress: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def stage(self, key: str) -> Iterator[None]:
        """Record the seconds the block took as ``timings[key]`` (not when it raises: the run fails)."""
        t0 = time.perf_counter()
        yield
        self.timings[key] = round(time.perf_counter() - t0, 3)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def record_total(self) -> None:
        """``timings["total"]``: the seconds since the run started."""
        self.timings["total"] = round(time.perf_counter() - self.started, 3)


def progress_bar(enabled: bool):
    """A rich progress bar on stderr (count, elapsed, left); a silent one when not ``enabled``."""
    import rich.progress as rp
    from rich.console import Console

    return rp.Progress(
        rp.TextColumn("{task.description}"),
        rp.BarColumn(),
        rp.MofNCompleteColumn(),
        rp.TimeElapsedColumn(),
        rp.TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (inputs may be several GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_info(path: Path, fmt: str | None = None) -> dict:
    """An input file as the report records it: absolute path, size, sha256 (and format)."""
    info = {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if fmt is not None:
        info["format"] = fmt
    return info


def folder_info(directory: Path, files: dict[str, Path]) -> dict:
    """An image folder as the report records it: sha256 over the sorted lines 'name<TAB>sha256'
    of the image files found."""
    h = hashlib.sha256()
    for p in sorted(files.values()):
        h.update(f"{p.name}\t{sha256_file(p)}\n".encode())
    return {"path": str(directory.resolve()), "files": len(files), "sha256": h.hexdigest()}
