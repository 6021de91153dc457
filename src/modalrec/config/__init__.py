"""Configuration: YAML defaults per model, per-dataset presets, validated overrides.

Keys follow MMRec's names (``embedding_size``, ``learning_rate``, ``reg_weight``,
``train_batch_size``, ``epochs``, ``stopping_step``, ``valid_metric``, ``topk`` …).
A key that no default defines is an error (with a suggestion), never a silent default;
a value whose type does not match the default's type is an error too.

Bounds. A YAML's ``bounds:`` section declares the allowed values of its keys next to their
defaults; overall.yaml's bound the shared keys, and a model's entry replaces overall.yaml's for
the same key. :func:`resolve_config` checks the defaults, the preset, ``--set`` and ``--config``
values against them alike, so a model never sees a value outside its bounds. An entry is either

* a numeric range ``key: {low: L, high: H, low_open: true, high_open: true}`` — ``low`` and
  ``high`` are optional (at least one is given), the ends are closed unless ``*_open`` says
  otherwise; ``{finite: true}`` asks only for a finite number. The value, or every entry of a
  list value, must be a finite number in the range; null ("not set") always passes. An integer
  ``low: 1`` without ``high`` reads "a positive integer" (the counts: sizes, layers' widths, k);
* or a list of choices ``key: {choices: [a, b]}`` — the value must be one of them (list ``null``
  to allow "not set").

Either form may add ``note: why`` (printed after the range). An error is one line naming the
source, the key, the value and what is allowed, e.g. ``override: dropout = 1.0 must be in [0, 1)``.
Checks that need the data (``knn_k`` against the items, modality counts) or relate two keys stay
in the models (:meth:`modalrec.models.base.Recommender.setting_error`).

Whose settings. Every function here takes the *model*: its class, a model spec string (resolved by
:func:`modalrec.models.spec.resolve_model`), or None for overall.yaml's keys alone. A model class
states its own keys and sections in ``config_name`` (a YAML of this package), ``config_file`` (a YAML
beside its module) or ``settings`` (the same sections as a dict); :func:`model_settings`
(:mod:`modalrec.config.settings`) reads them, a subclass's merged over its bases'. A model's own keys
are checked like the shared ones: known, of their default's type, within their bounds.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modalrec.config.bounds import Bound, parse_bound, parse_range
from modalrec.config.settings import (
    OVERALL,
    ModelRef,
    OwnSettings,
    config_keys,
    model_class,
    model_settings,
    read_overall,
    read_yaml,
    settings_of,
)
from modalrec.errors import ConfigError

__all__ = [
    "NEUTRAL_KEYS",
    "NO_PRESET",
    "Bound",
    "Config",
    "ModelRef",
    "SettingInfo",
    "compat_defaults",
    "config_drift",
    "describe_preset",
    "large_data_settings_of",
    "describe_settings",
    "load_bounds",
    "load_defaults",
    "load_override_file",
    "load_search_ranges",
    "model_settings",
    "parse_overrides",
    "parse_range",
    "resolve_config",
    "topk_list",
]

NO_PRESET = "none"  # --preset none: no preset (the same as naming none)


def load_defaults(model: ModelRef) -> tuple[dict, dict, dict]:
    """(defaults, presets, search_space) of a model: overall.yaml's keys merged with the model's own settings."""
    own = settings_of(model_class(model)).data
    # the grid; search_ranges (tune) is read by load_search_ranges
    return (
        {**config_keys(read_overall()), **config_keys(own)},
        dict(own.get("presets") or {}),
        dict(own.get("search_space") or {}),
    )


def compat_defaults(model: ModelRef) -> dict[str, Any]:
    """The ``compat:`` sections of overall.yaml and the model's settings: for each key added after runs
    were already made, the value that reproduces what those runs did (they were made without it).

    A stored run whose configuration lacks such a key is taken to have had this value; a key
    that is missing and has no compat entry makes the run incomparable (see
    :func:`config_drift`).
    """
    return _section(model, "compat")


def _section(model: ModelRef, name: str) -> dict[str, Any]:
    return {**(read_overall().get(name) or {}), **(settings_of(model_class(model)).data.get(name) or {})}


# Keys that change neither what a run learns nor how it is evaluated (speed and bookkeeping only).
NEUTRAL_KEYS = frozenset(
    {"checkpoint_every", "checkpoint_seconds", "eval_batch_size", "ranking_block_size", "knn_block_size", "preset"}
)


def config_drift(
    model: ModelRef, stored: Mapping[str, Any], current: Mapping[str, Any], epochs_run: int | None = None
) -> list[str]:
    """How a stored run's resolved configuration differs from the one the same command resolves now.

    Returns ``"key old → new"`` lines (empty: the run is what the command would train today).
    Keys the stored configuration lacks take their :func:`compat_defaults` value; a key listed
    in a YAML's ``only_with:`` section is compared only when the keys it depends on have the
    values named there in the current configuration. ``min_epochs`` only holds early stopping
    back: given the stored run's ``epochs_run``, a run that started with a smaller value and
    stopped at or after the current one is exactly the run the current value gives.
    """
    compat = compat_defaults(model)
    only_with = _section(model, "only_with")  # key → {other key: value it needs to matter}
    missing = object()
    changes = []
    for key, new in current.items():
        if key in NEUTRAL_KEYS:
            continue
        needs = only_with.get(key) or {}
        if any(current.get(k) != v for k, v in needs.items()):
            continue  # the key has no effect in this configuration (e.g. a gate's start with no gate)
        old = stored.get(key, compat.get(key, missing))
        if key == "min_epochs" and old is not missing and epochs_run is not None and old <= new <= epochs_run:
            continue
        if old is missing:
            changes.append(f"{key} (not set) → {new!r}")
        elif old != new:
            changes.append(f"{key} {old!r} → {new!r}")
    return changes


def load_search_ranges(model: ModelRef) -> dict[str, dict[str, Any]]:
    """A model's ``search_ranges``: continuous or integer ranges that ``modalrec tune`` samples from.

    Each entry is ``key: {low: L, high: H}`` with optional ``log: true`` (log-uniform, for learning
    rates and regularisers; needs L > 0). Integer ``low`` and ``high`` without ``log`` make an
    integer range (layers). The grid (``benchmark --grid``) never reads this section: it searches the
    finite lists of ``search_space``. Returns ``{key: {"low", "high", "log", "int"}}``, validated.
    """
    cls = model_class(model)
    settings = settings_of(cls)
    raw = settings.data.get("search_ranges") or {}
    where = f"{settings.source} search_ranges"
    defaults = load_defaults(cls)[0]
    bounds = _bounds(settings, defaults)
    out: dict[str, dict[str, Any]] = {}
    for key, spec in raw.items():
        out[key] = parse_range(key, spec, f"{where}: {key}")
        _validated(defaults, bounds, {key: out[key]["low"]}, where, settings)
        _validated(defaults, bounds, {key: out[key]["high"]}, where, settings)
    return out


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list | tuple):
        return isinstance(value, list | tuple)
    return isinstance(value, type(default))


def load_bounds(model: ModelRef) -> dict[str, Bound]:
    """The allowed values of a model's keys: the ``bounds:`` of overall.yaml and the model's settings, merged.

    A model's entry replaces overall.yaml's for the same key; a bound on a key that the model's
    settings (or, for overall.yaml, the shared defaults) do not define is an error.
    """
    cls = model_class(model)
    return _bounds(settings_of(cls), load_defaults(cls)[0])


def _bounds(settings: OwnSettings, defaults: Mapping[str, Any]) -> dict[str, Bound]:
    out: dict[str, Bound] = {}
    overall = read_overall()
    # overall.yaml first: a model's entry replaces its
    for where, data, known in ((OVERALL, overall, config_keys(overall)), (settings.source, settings.data, defaults)):
        raw = data.get("bounds") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} bounds: expected a mapping of key: {{low, high}} or {{choices}}")
        for key, spec in raw.items():
            if key not in known:
                raise ConfigError(f"{where} bounds: {key!r} is not a configuration key")
            out[key] = parse_bound(spec, f"{where} bounds: {key}")
    return out


def topk_list(
    values: Any,
    what: str = "topk",
    n_items: int | None = None,
    note: Callable[[str], None] | None = None,
) -> list[int]:
    """Validated ranking cut-offs: positive integers, sorted, without repeats.

    ``values`` is a list (or a comma-separated string, as typed on the command line). With
    ``n_items``, cut-offs above the number of items are capped at it (a list cannot be longer)
    and ``note`` is told so in one line. Raises :class:`ConfigError` naming ``what``.
    """
    items = [v.strip() for v in values.split(",")] if isinstance(values, str) else values
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(f"{what}: give at least one cut-off, e.g. 10,20")
    ks: list[int] = []
    for v in items:
        k = v
        if isinstance(v, str):
            k = int(v) if re.fullmatch(r"[+-]?\d+", v) else None
        if isinstance(k, bool) or not isinstance(k, int):
            raise ConfigError(f"{what}: {v!r} is not an integer (give positive integers like 10,20)")
        if k < 1:
            raise ConfigError(f"{what}: {k} is not a positive integer (a cut-off K is at least 1)")
        ks.append(k)
    if n_items is not None and max(ks) > n_items:
        over = sorted({k for k in ks if k > n_items})
        if note is not None:
            note(
                f"{what}: {', '.join(map(str, over))} exceed{'s' if len(over) == 1 else ''} the {n_items:,} items; "
                f"using {n_items} instead"
            )
        ks = [min(k, n_items) for k in ks]
    return sorted(set(ks))


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values are YAML: ``0.01``, ``[10, 20]``, ``true``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from None
    return out


class Config(Mapping):
    """A resolved, validated, read-only configuration with attribute access."""

    def __init__(
        self, values: dict[str, Any], preset_overrides: Mapping[str, Any] | None = None, preset_hint: str | None = None
    ) -> None:
        self._values = dict(values)
        # What the preset named in values["preset"] changed; and, when none was named, the model's preset
        # named like the dataset (not applied: describe_preset mentions it).
        self.__dict__["preset_overrides"] = dict(preset_overrides or {})
        self.__dict__["preset_hint"] = preset_hint

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["_values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def replace(self, **changes: Any) -> Config:
        unknown = [k for k in changes if k not in self._values]
        if unknown:
            raise ConfigError(f"unknown configuration key {unknown[0]!r}")
        return Config({**self._values, **changes}, self.preset_overrides, self.preset_hint)

    def __repr__(self) -> str:
        return f"Config({self._values})"


def resolve_config(
    model: ModelRef,
    dataset_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
    source: str = "override",
) -> Config:
    """Merge defaults ← preset ← overrides and validate every key, type and range.

    ``model`` is the model's class, a model spec, or None for overall.yaml's keys alone.
    ``preset`` picks an entry of the model's ``presets:`` section; None or ``"none"`` applies
    no preset. A preset never applies by itself, not even one named like the dataset: a preset
    would apply by itself only once it is the best setting measured here on that dataset's
    validation split, and none is (they are settings copied from published runs). When none is
    named and a preset's name equals ``dataset_name`` (case-insensitive), its name is kept in
    ``Config.preset_hint`` so that :func:`describe_preset` can mention it. The keys the preset
    set are kept in ``Config.preset_overrides``.
    """
    cls = model_class(model)
    settings = settings_of(cls)
    defaults, presets, _ = load_defaults(cls)
    bounds = _bounds(settings, defaults)
    _validated(defaults, bounds, defaults, settings.source, settings)
    values = dict(defaults)
    chosen, hint = preset, None
    if chosen is not None and chosen.lower() == NO_PRESET:
        chosen = None
    elif chosen is None and dataset_name is not None:  # not applied: only mentioned (describe_preset)
        hint = next((p for p in presets if p.lower() == dataset_name.lower()), None)
    elif chosen is not None and chosen not in presets:
        available = ", ".join(presets) or "none"
        raise ConfigError(
            f"{settings.owner or OVERALL}: no preset {chosen!r} (available: {available}; {NO_PRESET!r} for none)"
        )
    preset_values = presets[chosen] if chosen is not None else {}
    if chosen is not None:
        where = f"{settings.source} preset {chosen!r}"
        values.update(_validated(defaults, bounds, preset_values, where, settings))
    values.update(_validated(defaults, bounds, dict(overrides or {}), source, settings))
    _check_valid_metric(values, source)
    values["preset"] = chosen
    return Config(values, preset_values, hint)


def large_data_settings_of(model: ModelRef) -> dict[str, Any]:
    """The model's ``large_data_settings:`` section, validated like a preset: the values its keys take in the
    large-data mode (:mod:`modalrec.training.large_data`) where the run keeps the default."""
    cls = model_class(model)
    settings = settings_of(cls)
    section = dict(settings.data.get("large_data_settings") or {})
    if not section:
        return {}
    defaults = load_defaults(cls)[0]
    return _validated(
        defaults, _bounds(settings, defaults), section, f"{settings.source} large_data_settings", settings
    )


def describe_preset(config: Config) -> str:
    """One line saying which preset applied and what it set (printed at the start of a run); with none
    named, the model's preset named like the dataset, if it has one, as a hint (it is not applied)."""
    name = config.get("preset")
    if name is None:
        line = "preset: none (model defaults and your overrides)"
        hint = config.preset_hint
        if hint is not None:
            line += (
                f"; this model has a preset {hint!r} (settings copied from published runs, not validated here)"
                f" — name it with --preset {hint} to use it"
            )
        return line
    sets = ", ".join(f"{k}={v}" for k, v in config.preset_overrides.items()) or "nothing"
    return f"preset {name!r} (asked for) sets {sets}"


def _check_valid_metric(values: dict[str, Any], source: str) -> None:
    """valid_metric must be one of the computed ``<metric>@<k>`` (else training could not select)."""
    metric = values.get("valid_metric")
    if metric is None or "topk" not in values or "metrics" not in values:
        return
    computed = [f"{m}@{k}" for m in values["metrics"] for k in values["topk"]]
    if str(metric).lower() not in computed:
        raise ConfigError(
            f"{source}: valid_metric {metric!r} is not among the computed metrics "
            f"({', '.join(computed[:6])}{', …' if len(computed) > 6 else ''}); change valid_metric or topk"
        )


def _validated(
    defaults: dict, bounds: Mapping[str, Bound], updates: Mapping[str, Any], source: str, settings: OwnSettings
) -> dict:
    """``updates`` after checking each key is known, has the default's type and lies in its bounds."""
    for key, value in updates.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            whose = f"{settings.owner}'s keys" if settings.owner else "the shared keys"
            raise ConfigError(
                f"{source}: unknown configuration key {key!r} ({hint}{whose} are those of {settings.keys_from()})"
            )
        if not _type_ok(defaults[key], value):
            raise ConfigError(
                f"{source}: {key} = {value!r} has type {type(value).__name__}, expected "
                f"{type(defaults[key]).__name__} like the default {defaults[key]!r}"
            )
        if key == "topk":
            topk_list(value, f"{source}: topk")
        if key == "learning_rate_scheduler" and not (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value
            )
        ):
            raise ConfigError(f"{source}: learning_rate_scheduler = {value!r} must be [gamma, T] with gamma, T > 0")
        problem = bounds[key].problem(value) if key in bounds else None
        if problem is not None:
            raise ConfigError(f"{source}: {key} {problem}")
    return dict(updates)


def load_override_file(path: str | Path) -> dict[str, Any]:
    return read_yaml(Path(path), str(path))


@dataclass(frozen=True)
class SettingInfo:
    """One key of a model's configuration, as ``modalrec models --details`` lists it."""

    key: str
    default: Any
    type: str  # what a value must be: int, float, bool, str, list, any (a null default takes any value)
    bound: str  # what is allowed, in words ("" when the key has no bound)
    grid: list | None  # the values the grid (--grid, sweep) searches; None when it does not search the key
    tune: str  # the range tune samples ("" when only the grid's list, or nothing, is searched)
    source: str  # where the default is defined: overall.yaml or the model's own settings
    own: bool  # a key of the model's own settings (not only overall.yaml's)


def describe_settings(model: ModelRef) -> tuple[list[SettingInfo], dict[str, dict[str, Any]]]:
    """Every key of a model's configuration (the model's own first) and its presets, checked as a run would."""
    cls = model_class(model)
    settings = settings_of(cls)
    defaults, presets, grid = load_defaults(cls)
    bounds = _bounds(settings, defaults)
    ranges = load_search_ranges(cls)
    own = config_keys(settings.data)
    rows = []
    for key in sorted(defaults, key=lambda k: (k not in own, k)):
        value = defaults[key]
        kind = "any" if value is None else "list" if isinstance(value, list | tuple) else type(value).__name__
        span = ranges.get(key)
        tune = f"{span['low']}..{span['high']}{' (log)' if span['log'] else ''}" if span else ""
        bound = bounds[key].describe() if key in bounds else ""
        where = settings.source if key in own else OVERALL
        rows.append(SettingInfo(key, value, kind, bound, grid.get(key), tune, where, key in own))
    return rows, presets
