"""Run directories: train a model into a new directory, load it back, evaluate, recommend.

A run directory (``runs/<model>-<dataset>-<timestamp>`` by default) holds
``config.yaml`` (resolved configuration and data source), ``metrics.json`` (best epoch,
valid and test metrics at it, per-epoch history, timings), ``test_per_user.npz`` and
``valid_per_user.npz`` (per-user metric vectors), ``model.pt`` (checkpoint) and
``train.log``. While training, ``resume.pt`` holds the latest resume state (see
:func:`resume_run`); it is removed when the run finishes. An existing directory is never
overwritten; every file is written atomically.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import pickle
import pickletools
import shutil
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalrec.config import Config, describe_preset, resolve_config, topk_list
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.errors import Interrupted, ModalrecError, RunError
from modalrec.evaluate import EvalResult, Evaluator, resolve_eval_mode
from modalrec.graphs import GraphStore
from modalrec.interrupt import SIGNAL_EXIT_CODES, graceful_interrupts
from modalrec.io import atomic_write, write_json, write_npz, write_text, write_yaml
from modalrec.models import Recommender, build_model, get_model_class
from modalrec.models.base import COLD_UNABLE
from modalrec.recommend import recommend_user
from modalrec.train import TrainingStopped, TrainResult, checkpoint_interval, fit, seed_everything

CHECKPOINT_VERSION = 1
RESUME_FILE = "resume.pt"
RESUME_FORMAT = "modalrec-resume"
RESUME_VERSION = 1
# configuration keys that do not change what training computes: changing them needs no --force
RESUME_NEUTRAL_KEYS = frozenset({"checkpoint_every"})
log = logging.getLogger("modalrec")


class RunLog:
    """Collects log lines, echoes them, and rewrites ``train.log`` atomically."""

    def __init__(self, path: Path | None, echo: bool = True, append: bool = False) -> None:
        self.path, self.echo, self.lines = path, echo, []
        if append and path is not None and path.is_file():  # a resumed run continues its log
            self.lines = path.read_text().splitlines()

    def __call__(self, line: str) -> None:
        self._add(line)
        if self.echo:
            print(line, flush=True)

    def warn(self, line: str) -> None:
        """A warning: logged, and printed on stderr even when quiet (quiet hides progress, not problems)."""
        self._add(line)
        print(line, file=sys.stderr, flush=True)

    def _add(self, line: str) -> None:
        self.lines.append(f"{time.strftime('%H:%M:%S')} {line}")
        if self.path is not None:
            write_text(self.path, "\n".join(self.lines) + "\n")


def new_run_dir(model: str, dataset: str, out: str | Path | None, root: str | Path = "runs") -> Path:
    """Claim a fresh run directory; never reuses an existing path."""
    if out is not None:
        path = Path(out)
        if path.exists():
            raise RunError(f"{path}: already exists; runs are never overwritten (choose another --out)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
        return path
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1000):
        path = root / (base if n == 0 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"{root}: could not create a new run directory")


def prepare_model(
    model_name: str,
    dataset: Dataset,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
    device: str = "cpu",
    cache_dir: str | Path | bool | None = None,
    config: Config | None = None,
) -> tuple[Recommender, Config, GraphStore]:
    """Resolve the config (or take ``config`` as resolved), seed every RNG, build graphs and the model."""
    cls = get_model_class(model_name)
    if config is None:
        config = resolve_config(cls.config_name, dataset.name, overrides, preset)
    seed_everything(int(config.seed))
    graphs = GraphStore(dataset, cache_dir=cache_dir, device=device)
    model = build_model(cls.name, dataset, config, graphs).to(device)
    return model, config, graphs


def check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModalrecError(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModalrecError(f"--device {device!r}: use cpu or cuda")
    return device


def train_run(
    model_name: str,
    data_dir: str | Path,
    modalities: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
    out: str | Path | None = None,
    runs_root: str | Path = "runs",
    device: str = "cpu",
    quiet: bool = False,
    progress: bool = False,
    cache_dir: str | Path | bool | None = None,
    dataset: Dataset | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    evaluate_test: bool = True,
) -> tuple[Path, TrainResult]:
    """Train one model on one dataset into a new run directory; returns (run dir, result).

    ``on_epoch`` and ``evaluate_test`` go to :func:`modalrec.train.fit` (a tuning trial's pruning
    hook; no test pass, so ``metrics.json`` has ``test: null`` and there is no ``test_per_user.npz``).

    The whole configuration is checked and the model built (its constructor checks its
    settings against the data) before the directory is claimed; should anything still fail
    with a user-facing error before the checkpoint is written, the directory claimed here is
    removed, so the same ``out`` can be used again.
    """
    check_device(device)
    if dataset is None:
        dataset = load_dataset(data_dir, modalities)
    cls = get_model_class(model_name)
    config = resolve_config(cls.config_name, dataset.name, overrides, preset)  # the run's one resolution
    notes, cold_note = _preflight(cls, dataset, config)
    model, config, graphs = prepare_model(cls.name, dataset, device=device, cache_dir=cache_dir, config=config)
    run_dir = new_run_dir(cls.name, dataset.name, out, runs_root)
    try:
        runlog = RunLog(run_dir / "train.log", echo=not quiet)
        _log_run_start(runlog, model, dataset, config, device, notes, cold_note)
        _write_run_config(run_dir, cls.name, dataset, config)
        return _train_into(
            run_dir,
            model,
            dataset,
            config,
            graphs,
            runlog,
            device,
            progress and not quiet,
            None,
            on_epoch=on_epoch,
            evaluate_test=evaluate_test,
        )
    except ModalrecError:
        # A directory that holds no checkpoint and no resume state was claimed by this call and holds only
        # our log and config: remove it so the same ``out`` can be used again.
        if not (run_dir / "model.pt").exists() and not (run_dir / RESUME_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _preflight(cls: type[Recommender], dataset: Dataset, config: Config) -> tuple[list[str], str | None]:
    """Check a resolved configuration against the data before any work; (warnings to show, cold-item note).

    A checkpoint interval or an eval mode the data cannot support fails here, before a directory is claimed.
    """
    checkpoint_interval(config)
    notes: list[str] = []
    over = [k for k in config.topk if k > dataset.n_items]
    if over:  # kept (valid_metric may name it), but said: a ranked list cannot be longer than the items
        notes.append(
            f"topk: {', '.join(map(str, over))} exceed{'s' if len(over) == 1 else ''} the {dataset.n_items:,} items; "
            f"a list has at most {dataset.n_items} items, so @K counts hits in all of them"
        )
    resolve_eval_mode(dataset, config.get("eval_mode"))
    return notes, cold_start_note(cls, dataset)


def _log_run_start(
    runlog: RunLog,
    model: Recommender,
    dataset: Dataset,
    config: Config,
    device: str,
    notes: list[str],
    cold_note: str | None,
) -> None:
    """The head of ``train.log``: warnings, the preset, how cold items are scored, the data and model sizes."""
    # An ID-only model's cold note is a warning (its cold items are ranked at random); a content model's is
    # information. Warnings are echoed even when quiet: quiet hides progress, not problems with the data.
    unable = model.cold_start == COLD_UNABLE
    for w in [*dataset.warnings, *notes, *([cold_note] if cold_note and unable else [])]:
        runlog.warn(f"warning: {w}")
    runlog(describe_preset(config))
    if cold_note and not unable:
        runlog(cold_note)
    n_params = sum(p.numel() for p in model.parameters())
    used = model.used_modalities()
    runlog(
        f"{model.name} on {dataset.name}: {dataset.n_users} users, {dataset.n_items} items, "
        f"modalities {', '.join(used) if used else 'none (ID only)'}, {n_params} parameters, device {device}"
    )


def cold_start_note(cls: type[Recommender], dataset: Dataset) -> str | None:
    """One line on how ``cls`` scores the dataset's cold items (None when it has none)."""
    if not dataset.has_cold_items:
        return None
    n = dataset.cold_items.size
    if cls.cold_start == COLD_UNABLE:
        return (
            f"{cls.name} is ID only and cannot score the {n:,} cold items: they are ranked at random "
            "(reported as unable)"
        )
    return f"{cls.name} scores the {n:,} cold items from their features: {cls.cold_rule}"


def cold_start_info(model: Recommender, dataset: Dataset) -> dict[str, Any] | None:
    """What metrics.json records about cold items (None when the dataset has none)."""
    if not dataset.has_cold_items:
        return None
    return {
        "items": int(dataset.cold_items.size),
        "scoring": model.cold_start,
        "rule": model.cold_rule,
    }


def _write_run_config(run_dir: Path, model_name: str, dataset: Dataset, config: Config) -> None:
    write_yaml(
        run_dir / "config.yaml",
        {
            "model": model_name,
            "data": {
                "path": str(dataset.path) if dataset.path else None,
                "name": dataset.name,
                "modalities": dataset.modalities,
                "fingerprint": dataset.fingerprint,
            },
            "preset": {
                "name": config.get("preset"),
                "automatic": config.preset_auto,
                "overrides": config.preset_overrides,
            },
            "config": config.to_dict(),
        },
    )


def _dataset_info(dataset: Dataset) -> dict[str, Any]:
    return {
        "path": str(dataset.path) if dataset.path else None,
        "name": dataset.name,
        "fingerprint": dataset.fingerprint,
        "modalities": dataset.modalities,
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
    }


def _train_into(
    run_dir: Path,
    model: Recommender,
    dataset: Dataset,
    config: Config,
    graphs: GraphStore,
    runlog: RunLog,
    device: str,
    progress: bool,
    resume: dict[str, Any] | None,
    on_epoch: Callable[[int, float], None] | None = None,
    evaluate_test: bool = True,
) -> tuple[Path, TrainResult]:
    """Train (or continue training) into ``run_dir``, writing ``resume.pt`` as it goes; the finished run's files.

    Ctrl-C/SIGTERM stop training at the next batch with its state saved (:class:`Interrupted`);
    a resume state that cannot be written stops the run with the previous state intact.
    """
    resume_path = run_dir / RESUME_FILE
    meta = {
        "format": RESUME_FORMAT,
        "version": RESUME_VERSION,
        "code": code_version(),
        "model": model.name,
        "config": config.to_dict(),
        "dataset": _dataset_info(dataset),
    }
    saved: dict[str, str | None] = {"where": None if resume is None else describe_position(resume)}
    hint = f"resume with: modalrec train --resume {run_dir}"

    def checkpoint(state: dict[str, Any]) -> None:
        try:
            atomic_write(resume_path, lambda fh: torch.save({**meta, "train": state}, fh), mode="wb")
        except OSError as exc:
            kept = (
                f"the previous resume state ({saved['where']}) is intact — fix that, then {hint}"
                if saved["where"]
                else "no earlier resume state exists"
            )
            raise RunError(f"{resume_path}: cannot write the resume state ({exc.strerror or exc}); {kept}") from None
        saved["where"] = describe_position(state)

    try:
        with graceful_interrupts() as flag:
            result = fit(
                model,
                dataset,
                config,
                log=runlog,
                progress=progress,
                device=device,
                checkpoint=checkpoint,
                resume=resume,
                interrupt=flag,
                on_epoch=on_epoch,
                evaluate_test=evaluate_test,
            )
    except OSError as exc:  # e.g. train.log on a full disk; the resume state has its own message above
        kept = f"the last resume state ({saved['where']}) is intact — {hint}" if saved["where"] else "nothing to resume"
        raise RunError(f"{run_dir}: writing failed ({exc}); {kept}") from None
    except TrainingStopped as stop:
        runlog(f"interrupted: training stopped {stop.where}; state saved in {resume_path}")
        raise Interrupted(
            f"training stopped {stop.where}; state saved — {hint}", SIGNAL_EXIT_CODES.get(stop.signum, 130)
        ) from None
    save_checkpoint(run_dir / "model.pt", model, config, dataset)
    if result.test is not None:
        write_npz(run_dir / "test_per_user.npz", users=result.test.users, **result.test.per_user)
    write_npz(run_dir / "valid_per_user.npz", users=result.valid.users, **result.valid.per_user)
    write_json(
        run_dir / "metrics.json",
        {
            "model": model.name,
            "dataset": dataset.name,
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
            "eval_mode": result.valid.mode,
            "cold_start": cold_start_info(model, dataset),
            "valid": result.valid.metrics,
            "test": result.test.metrics if result.test is not None else None,
            "timings": result.timings,
            "graph_cache": {"hits": graphs.cache_hits, "builds": graphs.builds},
            "history": result.history,
        },
    )
    resume_path.unlink(missing_ok=True)  # finished: model.pt supersedes the resume state
    return run_dir, result


def describe_position(state: dict[str, Any]) -> str:
    """Where a trainer state stands, e.g. ``after epoch 4`` or ``in epoch 5, after batch 3``."""
    trainer = state["trainer"]
    if trainer["batch"] is None:
        return f"after epoch {trainer['epoch'] - 1}"
    return f"in epoch {trainer['epoch']}, after batch {trainer['batch']}"


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


def read_resume_state(run_dir: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The resume state of an unfinished run, loaded onto the CPU; one-line errors for every bad case.

    ``mmap``: map the tensors instead of reading them (a cheap look at the metadata)."""
    run_dir = Path(run_dir)
    path = run_dir / RESUME_FILE
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    if (run_dir / "metrics.json").is_file():  # written last, just before resume.pt is removed
        raise RunError(f"{run_dir}: the run has finished (metrics.json is there); nothing to resume")
    if not path.is_file():
        raise RunError(
            f"{run_dir}: no {RESUME_FILE} — the run stopped before its first resume state was written "
            "(or this is not a run directory); start it again"
        )
    try:
        state = load_run_file(path, mmap=mmap)
    except RunError:
        raise
    except Exception as exc:  # a truncated zip, a pickle error, …: all mean the file is damaged
        raise RunError(f"{path}: corrupt or truncated resume state ({exc.__class__.__name__}); cannot resume") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise RunError(f"{path}: not a modalrec resume state")
    if state.get("version") != RESUME_VERSION:
        raise RunError(f"{path}: resume-state format {state.get('version')}, this modalrec reads {RESUME_VERSION}")
    missing = [k for k in ("code", "model", "config", "dataset", "train") if k not in state]
    if missing:
        raise RunError(f"{path}: corrupt resume state (no {missing[0]!r})")
    return state


def _check_resume_code(state: dict[str, Any], path: Path) -> None:
    if state["code"] != code_version():
        raise RunError(
            f"{path}: written by modalrec {state['code']}, this is {code_version()}; the code changed, so the "
            "run cannot continue exactly — start a new run"
        )


def resume_refusal(run_dir: str | Path) -> str | None:
    """Why :func:`resume_run` would refuse ``run_dir`` for its state alone (damaged, other code), else None.

    A cheap look (the tensors are memory-mapped), so a driver can say at once that a trial starts
    over; the dataset and configuration checks are left to :func:`resume_run`.
    """
    try:
        _check_resume_code(read_resume_state(run_dir, mmap=True), Path(run_dir) / RESUME_FILE)
    except RunError as exc:
        return str(exc)
    return None


def _config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = [k for k in {**old, **new} if k not in RESUME_NEUTRAL_KEYS and old.get(k) != new.get(k)]
    return [f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in keys]


def resume_run(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    quiet: bool = False,
    progress: bool = False,
    force: bool = False,
    cache_dir: str | Path | bool | None = None,
    data_dir: str | Path | None = None,
    dataset: Dataset | None = None,
) -> tuple[Path, TrainResult]:
    """Continue an interrupted run from its ``resume.pt``; the finished run equals an uninterrupted one.

    Refuses (one-line :class:`RunError`) when the code version or the dataset changed since the
    state was written, when the file is damaged, when ``overrides`` change the configuration
    (``force`` accepts that: training continues under the new values) and when the state was
    written on another device type (``force`` continues anyway, loaded with ``map_location``;
    the result then differs from an uninterrupted run in the last bits).
    """
    run_dir = Path(run_dir)
    check_device(device)
    state = read_resume_state(run_dir)
    path = run_dir / RESUME_FILE
    _check_resume_code(state, path)
    info = state["dataset"]
    if dataset is None:
        source = data_dir or info["path"]
        if source is None or not Path(source).is_dir():
            raise RunError(f"{run_dir}: its dataset {source} is not available (pass the data directory)")
        dataset = load_dataset(source, info["modalities"])
    if dataset.fingerprint != info["fingerprint"] or dataset.modalities != info["modalities"]:
        raise RunError(f"{run_dir}: the dataset at {dataset.path} changed since the run started (content hash differs)")
    cls = get_model_class(state["model"])
    saved = dict(state["config"])
    config = Config(saved)
    notes = []
    if overrides:
        wanted = {k: v for k, v in saved.items() if k != "preset"}
        wanted.update(overrides)
        config = resolve_config(cls.config_name, dataset.name, wanted, saved.get("preset"))
        changes = _config_changes(saved, config.to_dict())
        if changes and not force:
            raise RunError(
                f"{run_dir}: the configuration differs from the interrupted run's ({'; '.join(changes)}); "
                "pass --force to continue under the new values"
            )
        if changes:
            notes.append(f"warning: --force: continuing with a changed configuration ({'; '.join(changes)})")
    saved_device = state["train"].get("device", "cpu")
    if saved_device != torch.device(device).type:
        if not force:
            raise RunError(
                f"{path}: written on {saved_device}, resuming on {device}; use --device {saved_device}, "
                "or --force to continue here (the result will differ slightly from an uninterrupted run)"
            )
        notes.append(f"warning: --force: the state was written on {saved_device}, continuing on {device}")
    threads = state["train"].get("threads")
    if threads is not None and threads != torch.get_num_threads():
        notes.append(
            f"warning: the run used {threads} threads, this process {torch.get_num_threads()}; results may differ "
            f"in the last bits from an uninterrupted run (use --threads {threads})"
        )
    runlog = RunLog(run_dir / "train.log", echo=not quiet, append=True)
    runlog(f"resuming {run_dir} {describe_position(state['train'])} on {device}")
    for n in notes:
        runlog(n)
    model, config, graphs = prepare_model(cls.name, dataset, device=device, cache_dir=cache_dir, config=config)
    if config.to_dict() != saved:
        _write_run_config(run_dir, cls.name, dataset, config)
    return _train_into(run_dir, model, dataset, config, graphs, runlog, device, progress and not quiet, state["train"])


def save_checkpoint(path: Path, model: Recommender, config: Config, dataset: Dataset) -> None:
    state = {
        "version": CHECKPOINT_VERSION,
        "model": model.name,
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


@dataclass
class LoadedRun:
    path: Path
    model: Recommender
    dataset: Dataset
    config: Config
    metrics: dict


def load_run(
    run_dir: str | Path,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    cache_dir: str | Path | bool | None = None,
) -> LoadedRun:
    """Rebuild a trained model from its run directory (the dataset is re-read and checked)."""
    run_dir = Path(run_dir)
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
    info = ckpt["dataset"]
    source = data_dir or info["path"]
    if source is None or not Path(source).is_dir():
        raise RunError(f"{run_dir}: its dataset {source} is not available (pass the data directory)")
    dataset = load_dataset(source, info["modalities"])
    if dataset.fingerprint != info["fingerprint"]:
        raise RunError(f"{run_dir}: the dataset at {source} changed since training (content hash differs)")
    check_device(device)
    cls = get_model_class(ckpt["model"])
    config = Config(ckpt["config"])
    graphs = GraphStore(dataset, cache_dir=cache_dir, device=device)
    model = cls(dataset, config, graphs).to(device)
    model.load_state_dict({k: v.to(device) for k, v in ckpt["state_dict"].items()})
    model.eval()
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return LoadedRun(run_dir, model, dataset, config, metrics)


def evaluate_run(
    run: LoadedRun,
    split: str = "test",
    ks: list[int] | None = None,
    mask_valid: bool | None = None,
    mode: str | None = None,
) -> EvalResult:
    """Full-ranking metrics of a loaded run on ``split``; cut-offs above the number of items are
    capped at it with a logged warning (``ks`` defaults to the run's ``topk``). ``mode``
    (warm | cold | all) defaults to the run's ``eval_mode``."""
    cfg = run.config
    mask = cfg.mask_valid_at_test if mask_valid is None else mask_valid
    ks = topk_list(list(ks) if ks else list(cfg.topk), "--topk" if ks else "topk", run.dataset.n_items, log.warning)
    ev = Evaluator(
        run.dataset,
        split,
        ks,
        tuple(cfg.metrics),
        mask_valid=mask,
        block_size=cfg.eval_batch_size,
        device=run.model.device,
        mode=mode if mode is not None else cfg.get("eval_mode"),
    )
    return ev.evaluate(run.model)


def recommend(run: LoadedRun, user: int, k: int = 10, explain: bool = False, exclude_seen: bool = True) -> dict:
    """Top-k items of one user as a JSON-ready dict, with per-modality explanations if asked.

    :func:`modalrec.recommend.recommend_user` on the run's model: ``k`` above the number of items is
    capped with a ``note``; a user without training interactions gets the most popular items, marked by
    ``fallback`` (also logged as a warning).
    """
    out = recommend_user(run.model, run.dataset, user, k, exclude_seen, explain)
    if "fallback" in out:
        log.warning(out["fallback"]["reason"])
    return out


def per_user_metrics(run_dir: str | Path, split: str = "test") -> dict[str, np.ndarray]:
    with np.load(Path(run_dir) / f"{split}_per_user.npz") as z:
        return {k: z[k] for k in z.files}
