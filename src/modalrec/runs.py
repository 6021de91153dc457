"""Run directories: train a model into a new directory, load it back, evaluate, recommend.

A run directory (``runs/<model>-<dataset>-<timestamp>`` by default) holds
``config.yaml`` (resolved configuration and data source), ``metrics.json`` (best epoch,
valid and test metrics at it, per-epoch history, timings), ``test_per_user.npz`` and
``valid_per_user.npz`` (per-user metric vectors), ``model.pt`` (checkpoint) and
``train.log``. An existing directory is never overwritten; every file is written
atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalrec.config import Config, describe_preset, resolve_config, topk_list
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.errors import ModalrecError, RunError
from modalrec.evaluate import EvalResult, Evaluator, resolve_eval_mode, top_k_items
from modalrec.graphs import GraphStore
from modalrec.io import atomic_write, write_json, write_npz, write_text, write_yaml
from modalrec.models import Recommender, build_model, get_model_class
from modalrec.models.base import COLD_UNABLE
from modalrec.train import TrainResult, fit, seed_everything

CHECKPOINT_VERSION = 1
log = logging.getLogger("modalrec")


class RunLog:
    """Collects log lines, echoes them, and rewrites ``train.log`` atomically."""

    def __init__(self, path: Path | None, echo: bool = True) -> None:
        self.path, self.echo, self.lines = path, echo, []

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
) -> tuple[Recommender, Config, GraphStore]:
    """Resolve the config, seed every RNG, build graphs and the model on ``device``."""
    cls = get_model_class(model_name)
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
) -> tuple[Path, TrainResult]:
    """Train one model on one dataset into a new run directory; returns (run dir, result).

    The whole configuration is checked and the model built (its constructor checks its
    settings against the data) before the directory is claimed; should anything still fail
    with a user-facing error before the checkpoint is written, the directory claimed here is
    removed, so the same ``out`` can be used again.
    """
    check_device(device)
    if dataset is None:
        dataset = load_dataset(data_dir, modalities)
    cls = get_model_class(model_name)
    notes: list[str] = []
    config = resolve_config(cls.config_name, dataset.name, overrides, preset)
    over = [k for k in config.topk if k > dataset.n_items]
    if over:  # kept (valid_metric may name it), but said: a ranked list cannot be longer than the items
        notes.append(
            f"topk: {', '.join(map(str, over))} exceed{'s' if len(over) == 1 else ''} the {dataset.n_items:,} items; "
            f"a list has at most {dataset.n_items} items, so @K counts hits in all of them"
        )
    resolve_eval_mode(dataset, config.get("eval_mode"))  # a mode the data cannot support fails before any work
    cold_note = cold_start_note(cls, dataset)
    if cold_note and cls.cold_start == COLD_UNABLE:
        notes.append(cold_note)
    model, config, graphs = prepare_model(cls.name, dataset, overrides, preset, device, cache_dir)
    run_dir = new_run_dir(cls.name, dataset.name, out, runs_root)
    try:
        return _train_into(run_dir, cls.name, model, config, graphs, dataset, notes, device, quiet, progress)
    except ModalrecError:
        if not (run_dir / "model.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # claimed by this call: it holds only our log and config
        raise


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


def _train_into(
    run_dir: Path,
    name: str,
    model: Recommender,
    config: Config,
    graphs: GraphStore,
    dataset: Dataset,
    notes: list[str],
    device: str,
    quiet: bool,
    progress: bool,
) -> tuple[Path, TrainResult]:
    # Warnings and notes are echoed even when quiet: quiet hides progress, not problems with the data.
    runlog = RunLog(run_dir / "train.log", echo=not quiet)
    for w in [*dataset.warnings, *notes]:
        runlog.warn(f"warning: {w}")
    runlog(describe_preset(config))
    cold_note = cold_start_note(type(model), dataset)
    if cold_note and model.cold_start != COLD_UNABLE:
        runlog(cold_note)
    n_params = sum(p.numel() for p in model.parameters())
    used = model.used_modalities()
    runlog(
        f"{name} on {dataset.name}: {dataset.n_users} users, {dataset.n_items} items, "
        f"modalities {', '.join(used) if used else 'none (ID only)'}, {n_params} parameters, device {device}"
    )
    write_yaml(
        run_dir / "config.yaml",
        {
            "model": name,
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
    result = fit(model, dataset, config, log=runlog, progress=progress and not quiet, device=device)
    save_checkpoint(run_dir / "model.pt", model, config, dataset)
    write_npz(run_dir / "test_per_user.npz", users=result.test.users, **result.test.per_user)
    write_npz(run_dir / "valid_per_user.npz", users=result.valid.users, **result.valid.per_user)
    write_json(
        run_dir / "metrics.json",
        {
            "model": name,
            "dataset": dataset.name,
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
            "eval_mode": result.test.mode,
            "cold_start": cold_start_info(model, dataset),
            "valid": result.valid.metrics,
            "test": result.test.metrics,
            "timings": result.timings,
            "graph_cache": {"hits": graphs.cache_hits, "builds": graphs.builds},
            "history": result.history,
        },
    )
    return run_dir, result


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
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise RunError(f"{ckpt_path}: cannot read checkpoint ({exc.__class__.__name__}: {exc})") from None
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
    """Top-k items of one user as a JSON-ready dict, with per-modality explanations if asked."""
    ds, model = run.dataset, run.model
    if not 0 <= user < ds.n_users:
        raise ModalrecError(f"user {user} is out of range 0..{ds.n_users - 1}")
    if not 1 <= k <= ds.n_items:
        raise ModalrecError(f"k must be between 1 and {ds.n_items}")
    if not has_training_interactions(ds, user):
        out = popularity_fallback(ds, user, k, explain)
        log.warning(out["fallback"]["reason"])
        return {"model": model.name, "dataset": ds.name, "user": user, "k": k, "exclude_seen": exclude_seen, **out}
    users = torch.tensor([user], device=model.device)
    # an ID-only model cannot score cold items (it would rank them at random): they are left out, and said so
    unscorable = model.cold_items if model.cold_start == COLD_UNABLE and ds.has_cold_items else None
    items, scores = top_k_items(model, users, k, ds.train_matrix if exclude_seen else None, unscorable)
    items, scores = items[0], scores[0]
    if unscorable is not None:  # only cold items would fill the list beyond this: they are not answers
        keep = torch.isfinite(scores)
        items, scores = items[keep], scores[keep]
    out: dict[str, Any] = {
        "model": model.name,
        "dataset": ds.name,
        "user": user,
        "k": k,
        "exclude_seen": exclude_seen,
        "items": [],
    }
    if unscorable is not None:
        out["note"] = f"{model.name} is ID only: its {unscorable.numel():,} cold items cannot be scored, left out"
    expl = None
    if explain:
        with torch.no_grad():
            expl = model.explain(users.expand(len(items)), items)
        out["explanation"] = (
            {"kind": expl.kind, "parts": expl.parts}
            if expl is not None
            else {"kind": None, "note": f"{model.name} has no per-modality explanation"}
        )
    for rank, (item, score) in enumerate(zip(items.tolist(), scores.tolist(), strict=True), start=1):
        entry: dict[str, Any] = {"rank": rank, "item": item, "score": round(float(score), 6)}
        title = ds.title(item)
        if title is not None:
            entry["title"] = title
        if expl is not None:
            w = expl.weights[rank - 1].detach().cpu().numpy()
            entry["weights"] = {p: round(float(x), 4) for p, x in zip(expl.parts, w, strict=True)}
            nested = (expl.extra or {}).get("item_weights")
            if nested is not None:  # e.g. MeAIM's stage-1 weights: user representation → item representation
                item_parts = expl.extra.get("item_parts", expl.parts)
                rows = nested[rank - 1].detach().cpu().numpy()
                entry["pair_weights"] = {
                    a: {b: round(float(x), 4) for b, x in zip(item_parts, row, strict=True)}
                    for a, row in zip(expl.parts, rows, strict=True)
                }
        out["items"].append(entry)
    return out


def has_training_interactions(dataset: Dataset, user: int) -> bool:
    """Whether ``user`` has at least one training interaction (else the model never learned them)."""
    indptr = dataset.train_matrix.indptr
    return bool(indptr[user + 1] > indptr[user])


def popularity_fallback(dataset: Dataset, user: int, k: int, explain: bool = False) -> dict[str, Any]:
    """The answer for a user without training interactions: the k items with the most training
    interactions (ties: lower item id), marked as a fallback, never as the model's ranking.

    Such a user's embedding is still at its random initialisation, so the model's scores for
    them mean nothing; popularity is the honest non-personalised answer.
    """
    degree = np.asarray(dataset.train_matrix.sum(axis=0)).ravel().astype(np.int64)
    order = np.argsort(-degree, kind="stable")[:k]
    out: dict[str, Any] = {
        "fallback": {
            "method": "popularity",
            "reason": (
                f"user {user} has no training interaction, so the model never learned them; "
                "these are the most popular items instead (serve's POST /recommendations folds a new user in "
                "from their items)"
            ),
        },
        "items": [],
    }
    if explain:
        out["explanation"] = {"kind": None, "parts": [], "note": "popularity fallback: no per-modality explanation"}
    for rank, item in enumerate(order.tolist(), start=1):
        entry: dict[str, Any] = {"rank": rank, "item": item, "score": float(degree[item])}
        title = dataset.title(item)
        if title is not None:
            entry["title"] = title
        out["items"].append(entry)
    return out


def per_user_metrics(run_dir: str | Path, split: str = "test") -> dict[str, np.ndarray]:
    with np.load(Path(run_dir) / f"{split}_per_user.npz") as z:
        return {k: z[k] for k in z.files}
