"""The files of a run directory as data: their formats, the code version they record, safe reading and writing.

``model.pt`` (a finished run's checkpoint) is written by :func:`save_checkpoint` and read back by
:func:`read_checkpoint`; ``resume.pt`` (:data:`RESUME_FILE`, an unfinished run's latest state) is written while
training (:mod:`modalrec.runs`) and read by :mod:`modalrec.run_resume`. Both are read through
:func:`load_run_file`, which builds plain data only: opening a run someone else wrote runs none of their code.
``<split>_per_user.npz`` holds the per-user metric vectors (:func:`per_user_metrics`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import pickle
import pickletools
import threading
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalrec.config import Config
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.errors import RunError
from modalrec.io import atomic_write
from modalrec.models import Recommender
from modalrec.run_model import model_record

CHECKPOINT_VERSION = 1
RESUME_FILE = "resume.pt"
RESUME_FORMAT = "modalrec-resume"
RESUME_VERSION = 1


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<version>+<hash of the package's sources>``: any code change changes it (a resume then refuses)."""
    from modalrec import __version__

    root = Path(__file__).resolve().parent
    h = hashlib.sha1()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".yaml") and path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"


# What a run file may hold besides tensors and plain containers: NumPy arrays of numbers (the NumPy random
# state and per-user metric vectors inside a resume state). numpy pickles an array as ``_reconstruct`` (whose
# module is numpy.core in numpy 1, numpy._core in numpy 2, hence both names) + ``ndarray`` + its ``dtype``;
# an object array is refused (its dtype class is not listed), as is every other callable or class.
_numpy_reconstruct = np.zeros(0).__reduce__()[0]  # found through an array: its module moved in numpy 2
_NUMERIC_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
RUN_FILE_SAFE_GLOBALS: list[Any] = [
    (_numpy_reconstruct, "numpy.core.multiarray._reconstruct"),
    (_numpy_reconstruct, "numpy._core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    *(type(np.dtype(t)) for t in (*_NUMERIC_DTYPES, np.float16, np.float32, np.float64)),
]
# torch's allowlist is process-wide: it is extended by one load at a time (see _run_file_globals)
_safe_load_lock = threading.Lock()
# pickle opcodes that look up a callable or class, call it or set an object's state: never in plain data
_OBJECT_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"})


@contextlib.contextmanager
def _run_file_globals() -> Iterator[None]:
    """Within the block, torch's ``weights_only`` allowlist also holds :data:`RUN_FILE_SAFE_GLOBALS`; afterwards it
    is as the caller had it (entries the caller had added themselves stay)."""
    with _safe_load_lock:
        present = set(torch.serialization.get_safe_globals())
        with torch.serialization.safe_globals([g for g in RUN_FILE_SAFE_GLOBALS if g not in present]):
            yield


def load_run_file(path: Path, mmap: bool = False) -> Any:
    """``torch.load`` of a run's ``model.pt`` or ``resume.pt`` that builds only tensors, plain data and numeric
    NumPy arrays (``weights_only``), on the CPU: opening a run someone else wrote runs none of their code.

    A file holding anything else — e.g. a planted pickle whose unpickling would call ``os.system`` —
    is refused with a one-line :class:`RunError` and nothing in it is executed; any other failure
    (a truncated or foreign file) propagates for the caller to word.
    """
    try:
        with _run_file_globals(), warnings.catch_warnings():
            # a pickle of a newer protocol (only a hand-made file has one) draws a warning before its refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        foreign = _foreign_objects(path, exc)
        if foreign is None:
            raise
        raise RunError(
            f"{path}: holds objects other than tensors and plain data{foreign}; refusing to load it (it could run code)"
        ) from None


def _foreign_objects(path: Path, exc: Exception) -> str | None:
    """Whether ``path`` failed to load because it holds objects other than plain data, read statically (nothing
    in it is unpickled): the names of those objects as ``" (posix.system)"`` (``""`` when unknown), else None
    (a damaged or foreign file)."""
    if zipfile.is_zipfile(path):  # torch's format: an unpickling error is the weights-only unpickler's refusal
        if not isinstance(exc, pickle.UnpicklingError):
            return None
        try:
            with _run_file_globals():
                names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # names unknown; refused all the same
            names = []
        return f" ({', '.join(sorted(names))})" if names else ""
    ops: set[str] = set()
    try:
        with path.open("rb") as fh:  # bare pickles, one after another (torch's legacy format has several)
            while fh.read(1) == pickle.PROTO:  # every pickle of protocol 2 and above starts with PROTO
                fh.seek(-1, 1)
                try:
                    ops |= {op.name for op, _, _ in pickletools.genops(fh)}
                except Exception:  # the end of the pickles (or damage): judge what was read
                    break
    except OSError:
        return None
    return "" if ops & _OBJECT_OPCODES else None


def save_checkpoint(path: Path, model: Recommender, config: Config, dataset: Dataset) -> None:
    """Write a finished run's ``model.pt``: the model's record, configuration, dataset identity and CPU weights."""
    state = {
        "version": CHECKPOINT_VERSION,
        **model_record(type(model)),  # model, model_spec, model_source_hash
        "config": config.to_dict(),
        "dataset": {
            "path": str(dataset.path) if dataset.path else None,
            "fingerprint": dataset.fingerprint,
            "modalities": dataset.modalities,
            "n_users": dataset.n_users,
            "n_items": dataset.n_items,
        },
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_write(path, lambda fh: torch.save(state, fh), mode="wb")


def read_checkpoint(run_dir: Path) -> dict[str, Any]:
    """A finished run's ``model.pt``, loaded safely (:func:`load_run_file`); one-line errors for every bad case."""
    ckpt_path = run_dir / "model.pt"
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    if not ckpt_path.is_file():
        raise RunError(f"{run_dir}: no model.pt — the run did not finish or is not a run directory")
    try:
        ckpt = load_run_file(ckpt_path)
    except RunError:
        raise
    except Exception as exc:
        # only the class: torch's refusal messages span many lines and suggest loading unsafely
        raise RunError(
            f"{ckpt_path}: cannot read checkpoint ({exc.__class__.__name__}); damaged or not a modalrec file"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise RunError(f"{ckpt_path}: not a modalrec checkpoint (version {CHECKPOINT_VERSION})")
    return ckpt


def load_recorded_dataset(run_dir: Path, info: dict[str, Any], data_dir: str | Path | None) -> Dataset:
    """The dataset a run file records (``info``: its path and modalities), read from ``data_dir`` if given, else
    from the recorded path; the caller checks that it is still the same data."""
    source = data_dir or info["path"]
    if source is None or not Path(source).is_dir():
        raise RunError(f"{run_dir}: its dataset {source} is not available (pass the data directory)")
    return load_dataset(source, info["modalities"])


def per_user_metrics(run_dir: str | Path, split: str = "test") -> dict[str, np.ndarray]:
    """A finished run's per-user metrics on ``split``: ``users`` and one vector per metric (``recall@20``, …).

    A split the run has no file for is a one-line :class:`RunError` naming the run, the split and the
    splits it has (a tuning trial's run has no test pass).
    """
    run_dir = Path(run_dir)
    path = run_dir / f"{split}_per_user.npz"
    if not path.is_file():
        if not run_dir.is_dir():
            raise RunError(f"{run_dir}: no such run directory")
        has = sorted(p.name.removesuffix("_per_user.npz") for p in run_dir.glob("*_per_user.npz"))
        raise RunError(f"{run_dir}: no per-user metrics for split {split!r} (this run has: {', '.join(has) or 'none'})")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
