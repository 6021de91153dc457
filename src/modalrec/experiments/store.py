"""The results store of a report folder: one JSON record per finished (or failed) trial.

A report folder holds ``results/<model>/<setting id>/seed-<seed>.json`` — one JSON per
finished run, keyed by (model, seed, setting) where the setting is the canonical JSON of
the overrides, the modality subset and the dataset fingerprint (its SHA-1 prefix is the
setting id) — and the run directories under ``runs/``. A failed trial leaves
``seed-<seed>.failed.json`` with its reason instead; it is not finished and runs again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from modalrec.io import write_json


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def setting_id(model: str, setting: dict) -> str:
    """Short stable id of a (model, setting) pair."""
    return hashlib.sha1(_canonical({"model": model.lower(), **setting}).encode()).hexdigest()[:10]


def trial_key(spec_or_record: dict[str, Any]) -> tuple[str, str, int]:
    """(model, setting id, seed): what identifies a trial in the results store."""
    sid = spec_or_record.get("sid", spec_or_record.get("setting_id"))
    return spec_or_record["model"], str(sid), int(spec_or_record["seed"])


def describe_key(key: tuple) -> str:
    """``BPR seed 1 [3f2a…]``: a trial key as the logs name it."""
    return f"{key[0]} seed {key[2]} [{key[1]}]"


def missing_record(key: tuple) -> dict[str, Any]:
    """What a ``reuse_only`` campaign knows of a trial that has not finished: its key, marked missing."""
    return {"missing": True, "model": key[0], "setting_id": key[1], "seed": key[2]}


def default_report_dir(kind: str, dataset_name: str, extra: str = "") -> Path:
    """``reports/<kind>-<dataset>[-extra]`` — stable, so re-running the same command resumes."""
    name = f"{kind}-{dataset_name}" + (f"-{extra}" if extra else "")
    return Path("reports") / "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


class ResultsStore:
    """One JSON file per finished run under ``<folder>/results``, keyed by (model, seed, setting)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, model: str, sid: str, seed: int) -> Path:
        """Where the record of (model, setting id, seed) lives."""
        return self.folder / "results" / model / sid / f"seed-{seed}.json"

    def get(self, model: str, sid: str, seed: int) -> dict | None:
        """The record of a finished run, or None."""
        p = self.path(model, sid, seed)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError:
            return None  # a damaged record counts as not finished

    def retire(self, model: str, sid: str, seed: int) -> Path:
        """Move a record aside (``seed-N.superseded-K.json``) so a new run can take its place; returns where."""
        p = self.path(model, sid, seed)
        k = 1
        while (dest := p.with_name(f"{p.stem}.superseded-{k}.json")).exists():
            k += 1
        p.rename(dest)
        return dest

    def put(self, record: dict) -> Path:
        """Store a finished run's record (atomically); returns its path. An earlier failure record goes."""
        p = self.path(record["model"], record["setting_id"], record["seed"])
        write_json(p, record)
        self.failure_path(record["model"], record["setting_id"], record["seed"]).unlink(missing_ok=True)
        return p

    def failure_path(self, model: str, sid: str, seed: int) -> Path:
        """Where the failure record of (model, setting id, seed) lives (beside the record it did not get)."""
        return self.folder / "results" / model / sid / f"seed-{seed}.failed.json"

    def put_failure(self, spec: dict, reason: str) -> dict:
        """Record that a trial failed and why (a failed trial is not finished: it runs again on resume)."""
        record = {
            "model": spec["model"],
            "seed": spec["seed"],
            "setting_id": spec["sid"],
            "setting": spec["setting"],
            "failed": reason,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(self.failure_path(spec["model"], spec["sid"], spec["seed"]), record)
        return record
