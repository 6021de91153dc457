"""Allowed values of configuration keys: a YAML's ``bounds:`` entries, and tune's ``search_ranges``.

A ``bounds:`` entry is a numeric range ``{low, high, low_open, high_open}`` (``{finite: true}``: any
finite number) or a list of choices ``{choices: [..]}``, either with an optional ``note``; the package
docstring of :mod:`modalrec.config` says how they read and where they are checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modalrec.errors import ConfigError

BOUND_FIELDS = frozenset({"low", "high", "low_open", "high_open", "finite", "choices", "note"})


@dataclass(frozen=True)
class Bound:
    """The allowed values of one key: a numeric range or a list of choices (a ``bounds:`` entry)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    note: str | None = None

    def describe(self) -> str:
        """What is allowed, in words: ``in [0, 1)``, ``> 0``, ``a positive integer``, ``one of a, b``."""
        if self.choices is not None:
            return f"one of {', '.join('null' if c is None else str(c) for c in self.choices)}"
        low, high = self.low, self.high
        if low is not None and high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if low is not None:
            if low == 1 and isinstance(low, int) and not self.low_open:
                return "a positive integer"
            return f"{'>' if self.low_open else '>='} {low}"
        if high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return "a finite number"

    def _admits(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, worded to follow the key (None when it is allowed)."""
        note = f" ({self.note})" if self.note else ""
        if self.choices is not None:
            return None if value in self.choices else f"must be {self.describe()}; got {value!r}{note}"
        if value is None:
            return None
        for v in value if isinstance(value, list | tuple) else [value]:
            if not self._admits(v):
                if v is value:
                    return f"= {value!r} must be {self.describe()}{note}"
                return f"= {value!r} every entry must be {self.describe()}; got {v!r}{note}"
        return None


def parse_bound(spec: Any, where: str) -> Bound:
    """One ``bounds:`` entry → :class:`Bound` (a malformed entry is a :class:`ConfigError` naming it)."""
    if not isinstance(spec, dict) or not spec or set(spec) - BOUND_FIELDS:
        raise ConfigError(f"{where}: give {{low, high, low_open, high_open}}, {{finite: true}} or {{choices: [..]}}")
    ends = [spec.get(k) for k in ("low", "high") if spec.get(k) is not None]
    if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in ends):
        raise ConfigError(f"{where}: low and high must be finite numbers")
    if "choices" in spec:
        if set(spec) - {"choices", "note"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"{where}: choices must be a non-empty list, without a range")
        return Bound(choices=tuple(spec["choices"]), note=spec.get("note"))
    if not ends and spec.get("finite") is not True:
        raise ConfigError(f"{where}: give low and/or high, or finite: true")
    if len(ends) == 2 and not spec["low"] < spec["high"]:
        raise ConfigError(f"{where}: low {spec['low']!r} must be below high {spec['high']!r}")
    low, high, note = spec.get("low"), spec.get("high"), spec.get("note")
    return Bound(low, high, low_open=bool(spec.get("low_open")), high_open=bool(spec.get("high_open")), note=note)


def parse_range(key: str, spec: Any, where: str) -> dict[str, Any]:
    """``{low, high, log?}`` → ``{"low", "high", "log", "int"}`` (see :func:`modalrec.config.load_search_ranges`)."""
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log"}:
        raise ConfigError(f"{where}: give {{low: L, high: H}} and optionally log: true")
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise ConfigError(f"{where}: low and high must be numbers")
    if not low < high:
        raise ConfigError(f"{where}: low {low!r} must be below high {high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0 (got {low!r})")
    is_int = isinstance(low, int) and isinstance(high, int) and not log
    return {"low": low, "high": high, "log": log, "int": is_int}
