"""A finished run in use: its model rebuilt from the run directory, evaluated again, asked for recommendations.

What the CLI's ``evaluate`` and ``recommend``, the server, the analyses and the Python API
(:func:`modalrec.api.load_run`) share. The run's files are read through :mod:`modalrec.run_files`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from modalrec.config import Config, topk_list
from modalrec.data.dataset import Dataset
from modalrec.errors import RunError
from modalrec.evaluation import EvalResult, Evaluator
from modalrec.graphs import GraphStore
from modalrec.models import Recommender
from modalrec.recommendation import Retriever, recommend_user
from modalrec.run_files import load_recorded_dataset, read_checkpoint
from modalrec.run_model import load_weights, recorded_spec, run_model_class, source_change
from modalrec.runs import check_device

log = logging.getLogger("modalrec")


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
    model: str | type[Recommender] | None = None,
) -> LoadedRun:
    """Rebuild a trained model from its run directory (the dataset is re-read and checked).

    The model class is the run's recorded spec resolved again (``model``, a spec or a class, replaces
    it: e.g. the file moved). A model whose source changed since training is loaded with a one-line
    warning when its saved weights still fit, else refused with one line; a spec that no longer
    resolves (file gone) is a one-line error naming it.
    """
    run_dir = Path(run_dir)
    ckpt = read_checkpoint(run_dir)
    cls = run_model_class(ckpt, run_dir, model, run_dir=run_dir)
    changed = source_change(cls, ckpt)
    info = ckpt["dataset"]
    dataset = load_recorded_dataset(run_dir, info, data_dir)
    if dataset.fingerprint != info["fingerprint"]:
        source = data_dir or info["path"]
        raise RunError(f"{run_dir}: the dataset at {source} changed since training (content hash differs)")
    check_device(device)
    config = Config(ckpt["config"])
    graphs = GraphStore(dataset, cache_dir=cache_dir, device=device)
    net = cls(dataset, config, graphs).to(device)
    misfit = load_weights(net, {k: v.to(device) for k, v in ckpt["state_dict"].items()})
    if misfit is not None:
        why = "; the model's code changed since training" if changed is not None else ""
        raise RunError(f"{run_dir}: the saved weights do not fit {recorded_spec(ckpt)} ({misfit}){why}")
    if changed is not None:  # the weights fit: said, and loaded
        log.warning(f"{run_dir}: {changed} changed since the run was trained; its saved weights fit and are loaded")
    net.eval()
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return LoadedRun(run_dir, net, dataset, config, metrics)


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


def recommend(
    run: LoadedRun,
    user: int,
    k: int = 10,
    explain: bool = False,
    exclude_seen: bool = True,
    retrieve: Retriever | None = None,
) -> dict:
    """Top-k items of one user as a JSON-ready dict, with per-modality explanations if asked.

    :func:`modalrec.recommendation.recommend_user` on the run's model: ``k`` above the number of items is
    capped with a ``note``; a user without training interactions gets the most popular items, marked by
    ``fallback`` (also logged as a warning). ``retrieve``: candidates from the run's item index instead
    of ranking every item (``--ann``; :meth:`modalrec.run_index.ItemIndex.retrieve`).
    """
    out = recommend_user(run.model, run.dataset, user, k, exclude_seen, explain, retrieve=retrieve)
    if "fallback" in out:
        log.warning(out["fallback"]["reason"])
    return out
