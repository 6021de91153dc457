"""Report folders: atomic writes that never overwrite a file the user wrote.

Every file a command writes into a report folder is recorded, with its SHA-256, in
``.modalrec-report.json``. A later command may replace a file only when its current
content still matches that record (i.e. the file is ours and nobody edited it); any other
existing file is left alone and the new content goes to ``name-2.ext``, ``name-3.ext`` …

Several processes may write into one folder at once (a benchmark resumed or re-tabulated
beside a running one): each write re-reads the manifest under an advisory lock and keeps
the other writers' latest entries, so no process's stale view makes another's file look
foreign.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # POSIX advisory locks; elsewhere writes go unlocked (a single writer per folder is then assumed)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from modalrec.io import atomic_write, write_json

MANIFEST = ".modalrec-report.json"
LOCK = ".modalrec-report.lock"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ReportWriter:
    """Writes files into ``folder`` atomically and keeps a list of what was written."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: list[Path] = []
        self._manifest: dict[str, str] = self._read_manifest()

    def _read_manifest(self) -> dict[str, str]:
        path = self.folder / MANIFEST
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            return {}

    def _ours(self, path: Path) -> bool:
        """Written by modalrec: by this writer, or by another process writing into the same folder
        (a benchmark continued beside a running one), whose entry is in the manifest on disk."""
        rel = str(path.relative_to(self.folder))
        try:
            digest = _sha(path.read_bytes())
        except OSError:
            return False
        return digest in (self._manifest.get(rel), self._read_manifest().get(rel))

    def target(self, name: str) -> Path:
        """Where ``name`` will be written: itself, unless a foreign file sits there."""
        path = self.folder / name
        if not path.exists() or self._ours(path):
            return path
        for n in range(2, 10_000):
            alt = path.with_name(f"{path.stem}-{n}{path.suffix}")
            if not alt.exists() or self._ours(alt):
                return alt
        raise RuntimeError(f"{path}: no free file name")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the folder's lock: one writer at a time decides a target, writes it and records it."""
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        with open(self.folder / LOCK, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write ``data`` as ``name`` (atomically); returns the path actually written."""
        with self._locked():
            path = self.target(name)
            atomic_write(path, lambda fh: fh.write(data), mode="wb")
            # the manifest on disk is the latest record of every writer: its entries win over this
            # writer's memory (which may predate another process's rewrite of the same file)
            self._manifest = {**self._manifest, **self._read_manifest(), str(path.relative_to(self.folder)): _sha(data)}
            write_json(self.folder / MANIFEST, self._manifest)
        if path not in self.written:  # a report rewritten as rows finish lists each file once
            self.written.append(path)
        return path

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file; returns the path actually written."""
        return self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> Path:
        """Write a JSON file; returns the path actually written."""
        from modalrec.io import _json_default

        return self.write_text(name, json.dumps(obj, indent=2, default=_json_default) + "\n")

    def save_figure(self, name: str, fig: Any, dpi: int = 130) -> Path:
        """Save a matplotlib figure as PNG and close it; returns the path actually written."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return self.write_bytes(name, buf.getvalue())

    def figures(self) -> list[Path]:
        """The PNG files written so far."""
        return [p for p in self.written if p.suffix == ".png"]
