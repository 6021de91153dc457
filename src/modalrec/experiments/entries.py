"""The rows of a campaign's table: what each row runs (:class:`Entry`) and what it got (:class:`EntryResult`)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modalrec.errors import ModalrecError


class NotFinished(ModalrecError):
    """A run that a ``reuse_only`` experiment would have had to train."""


@dataclass
class Entry:
    """One table row: a model with fixed overrides, optionally a grid to search."""

    label: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    modalities: list[str] | None = None
    grid: dict[str, list] | None = None
    seeds: list[int] | None = None  # this row's seeds instead of the benchmark's


@dataclass
class EntryResult:
    """The chosen setting of an entry, its finished runs (one per seed) and the grid it searched."""

    entry: Entry
    overrides: dict[str, Any]
    records: list[dict]
    grid_records: list[dict] = field(default_factory=list)
    select_metric: str = "recall@20"
    failures: list[dict] = field(default_factory=list)  # failure records of this entry's trials (grid and seeds)

    def failure_note(self) -> str | None:
        """``seed 2: RuntimeError: …`` — why trials of this row failed (None when none did)."""
        if not self.failures:
            return None
        first = self.failures[0]
        more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        n = len(self.failures)
        return f"{n} trial{'s' if n > 1 else ''}: seed {first['seed']} [{first['setting_id']}]: {first['failed']}{more}"

    def test_values(self, metric: str) -> np.ndarray:
        """The test ``metric`` of each seed's run."""
        return np.array([r["test"].get(metric, math.nan) for r in self.records], dtype=float)

    def test_mean(self, metric: str) -> float:
        """Mean test ``metric`` over the seeds (NaN when every trial of the row failed)."""
        v = self.test_values(metric)
        return float(np.nanmean(v)) if v.size and not np.isnan(v).all() else math.nan


def grid_settings(grid: dict[str, list]) -> list[dict[str, Any]]:
    """All combinations of a search space, in YAML order (the first key varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
