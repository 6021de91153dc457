"""Adopting a finished ``modalrec train`` run as a campaign's trial (``benchmarks/adopt_run.py``).

A run trained by hand becomes the record of exactly one (model, setting, seed) trial of a
report folder — only when it is that trial: same model, same data (content hash and
modalities) and the same resolved configuration. A campaign run afterwards reuses it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from modalrec.errors import ModalrecError
from modalrec.experiments.campaign import Experiment, run_files
from modalrec.experiments.store import setting_id
from modalrec.models import get_model_class


def adopt_run(
    exp: Experiment,
    model: str,
    overrides: dict[str, Any],
    modalities: list[str] | None,
    seed: int,
    run_dir: str | Path,
) -> dict:
    """Record a finished ``modalrec train`` run as ``exp``'s (model, overrides, seed) trial; returns the record.

    Refused (one line) unless the run is exactly the trial :meth:`Experiment.trial` describes: same
    model, same data (content hash and modalities), and a resolved configuration without
    :func:`~modalrec.config.config_drift`. The record says ``"adopted": true``; the run folder stays
    where it is. A record already stored for that trial is kept aside, never overwritten.
    """
    cls = get_model_class(model)
    run_dir = Path(run_dir).resolve()
    dataset = exp.dataset.select_modalities(modalities)
    overrides = {**exp.base, **overrides}
    try:
        stored, metrics = run_files(run_dir)
    except (OSError, ValueError) as exc:
        raise ModalrecError(f"{run_dir}: not a finished run ({exc.__class__.__name__}: {exc})") from None
    if stored.get("model") != cls.name:
        raise ModalrecError(f"{run_dir}: a {stored.get('model')} run, not {cls.name}")
    data = stored.get("data") or {}
    if data.get("fingerprint") != dataset.fingerprint or list(data.get("modalities") or []) != dataset.modalities:
        raise ModalrecError(f"{run_dir}: trained on other data or modalities than {exp.data_dir}")
    if metrics.get("test") is None:
        raise ModalrecError(f"{run_dir}: has no test metrics (a tune trial); train it with `modalrec train`")
    drift = exp.drift(cls.name, stored["config"], {**overrides, "seed": seed}, metrics)
    if drift:
        raise ModalrecError(f"{run_dir}: its configuration differs ({'; '.join(drift)})")
    setting = exp.setting(overrides, modalities, dataset)
    sid = setting_id(cls.name, setting)
    record = {
        "model": cls.name,
        "seed": seed,
        "setting_id": sid,
        "setting": setting,
        "run_dir": str(run_dir),
        "best_epoch": metrics["best_epoch"],
        "valid": metrics["valid"],
        "test": metrics["test"],
        "seconds": round(float(metrics["timings"]["total_train_seconds"]), 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime((run_dir / "metrics.json").stat().st_mtime)),
        "adopted": True,
    }
    if exp.store.get(cls.name, sid, seed) is not None:
        exp.store.retire(cls.name, sid, seed)
    exp.store.put(record)
    return record
