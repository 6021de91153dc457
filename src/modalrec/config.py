"""Configuration: YAML defaults per model, per-dataset presets, validated overrides.

Keys follow MMRec's names (``embedding_size``, ``learning_rate``, ``reg_weight``,
``train_batch_size``, ``epochs``, ``stopping_step``, ``valid_metric``, ``topk`` …).
A key that no default defines is an error (with a suggestion), never a silent default;
a value whose type does not match the default's type is an error too.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from modalrec.errors import ConfigError

RESERVED_SECTIONS = ("presets", "search_space", "search_ranges", "description")
NO_PRESET = "none"  # --preset none: no preset, not even the one matching the dataset's name


def _read_yaml(path: Path | Any, what: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: invalid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a mapping of key: value")
    return data


def config_file(name: str) -> Any:
    return resources.files("modalrec.models").joinpath("configs", f"{name}.yaml")


def load_defaults(model_file: str) -> tuple[dict, dict, dict]:
    """(defaults, presets, search_space) of a model: overall.yaml merged with ``<model>.yaml``."""
    overall = _read_yaml(config_file("overall"), "configs/overall.yaml")
    path = config_file(model_file)
    if not path.is_file():
        raise ConfigError(f"no configuration file configs/{model_file}.yaml")
    own = _read_yaml(path, f"configs/{model_file}.yaml")
    presets = own.pop("presets", {}) or {}
    search = own.pop("search_space", {}) or {}
    own.pop("search_ranges", None)  # read by load_search_ranges (tune); the grid sees only search_space
    own.pop("description", None)
    for section in ("compat", "only_with"):
        overall.pop(section, None)
        own.pop(section, None)
    return {**overall, **own}, presets, search


def compat_defaults(model_file: str) -> dict[str, Any]:
    """The ``compat:`` sections of overall.yaml and ``<model>.yaml``: for each key added after runs
    were already made, the value that reproduces what those runs did (they were made without it).

    A stored run whose configuration lacks such a key is taken to have had this value; a key
    that is missing and has no compat entry makes the run incomparable (see
    :func:`config_drift`).
    """
    return _section(model_file, "compat")


def _section(model_file: str, name: str) -> dict[str, Any]:
    overall = _read_yaml(config_file("overall"), "configs/overall.yaml").get(name) or {}
    own = _read_yaml(config_file(model_file), f"configs/{model_file}.yaml").get(name) or {}
    return {**overall, **own}


# Keys that change neither what a run learns nor how it is evaluated (speed and bookkeeping only).
NEUTRAL_KEYS = frozenset({"checkpoint_every", "eval_batch_size", "ranking_block_size", "knn_block_size", "preset"})


def config_drift(
    model_file: str, stored: Mapping[str, Any], current: Mapping[str, Any], epochs_run: int | None = None
) -> list[str]:
    """How a stored run's resolved configuration differs from the one the same command resolves now.

    Returns ``"key old → new"`` lines (empty: the run is what the command would train today).
    Keys the stored configuration lacks take their :func:`compat_defaults` value; a key listed
    in a YAML's ``only_with:`` section is compared only when the keys it depends on have the
    values named there in the current configuration. ``min_epochs`` only holds early stopping
    back: given the stored run's ``epochs_run``, a run that started with a smaller value and
    stopped at or after the current one is exactly the run the current value gives.
    """
    compat = compat_defaults(model_file)
    only_with = _section(model_file, "only_with")  # key → {other key: value it needs to matter}
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


def load_search_ranges(model_file: str) -> dict[str, dict[str, Any]]:
    """A model's ``search_ranges``: continuous or integer ranges that ``modalrec tune`` samples from.

    Each entry is ``key: {low: L, high: H}`` with optional ``log: true`` (log-uniform, for learning
    rates and regularisers; needs L > 0). Integer ``low`` and ``high`` without ``log`` make an
    integer range (layers). The grid (``benchmark --grid``) never reads this section: it searches the
    finite lists of ``search_space``. Returns ``{key: {"low", "high", "log", "int"}}``, validated.
    """
    path = config_file(model_file)
    own = _read_yaml(path, f"configs/{model_file}.yaml") if path.is_file() else {}
    raw = own.get("search_ranges") or {}
    where = f"configs/{model_file}.yaml search_ranges"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of key: {{low, high, log}}")
    defaults = load_defaults(model_file)[0]
    out: dict[str, dict[str, Any]] = {}
    for key, spec in raw.items():
        out[key] = parse_range(key, spec, f"{where}: {key}")
        _validated(defaults, {key: out[key]["low"]}, where)
        _validated(defaults, {key: out[key]["high"]}, where)
    return out


def parse_range(key: str, spec: Any, where: str) -> dict[str, Any]:
    """``{low, high, log?}`` → ``{"low", "high", "log", "int"}`` (see :func:`load_search_ranges`)."""
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


# Range rules for the numeric settings the YAMLs declare, by key name (full match). A value
# (or every number of a list value) must satisfy its rule; None ("not set") is always allowed.
# Values a model checks against its own data (e.g. knn_k ≤ items) stay in the model.
_RANGE_RULES: list[tuple[re.Pattern[str], str, Callable[[float], bool]]] = [
    (re.compile(p), desc, ok)
    for p, desc, ok in (
        (r"(.*_)?dropout|drop_rate|G_drop\d+", "in [0, 1)", lambda v: 0 <= v < 1),
        (r"keep_rate", "in (0, 1]", lambda v: 0 < v <= 1),
        (r"lambda_coeff|mm_image_weight", "in [0, 1]", lambda v: 0 <= v <= 1),
        (r"learning_rate|D_lr", "> 0", lambda v: v > 0),
        (r"(.*_)?(tau|temp)", "> 0", lambda v: v > 0),
        (
            r"embedding_size|(.*_)?dim(_.*)?|latent_embedding|.*batch_size|.*_block_size|ranking_pair_block"
            r"|epochs|eval_step|(.*_)?k|head_num|hyper_num|num_neg|weight_size|topk",
            "a positive integer",
            lambda v: v >= 1,
        ),
        (r"n_.*layers?|layer_num|layers|content_layers|stopping_step", ">= 0", lambda v: v >= 0),
        (r"reg_weight|weight_decay|regs|.*_weight|.*_reg|.*_decay|mu|margin|clip_norm", ">= 0", lambda v: v >= 0),
    )
]


def _range_error(key: str, value: Any) -> str | None:
    """Why ``value`` is out of range for ``key`` (None when it is fine or no rule applies)."""
    rule = next(((desc, ok) for pat, desc, ok in _RANGE_RULES if pat.fullmatch(key)), None)
    if rule is None or value is None:
        return None
    desc, ok = rule
    numbers = list(value) if isinstance(value, list | tuple) else [value]
    for v in numbers:
        if isinstance(v, bool) or not isinstance(v, int | float):
            if isinstance(value, list | tuple) and desc == "a positive integer":
                return f"every entry must be {desc}; got {v!r}"
            continue
        if not math.isfinite(v) or not ok(v):
            return f"must be {desc}" if v is value else f"every entry must be {desc}; got {v!r}"
    return None


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
        self, values: dict[str, Any], preset_overrides: Mapping[str, Any] | None = None, preset_auto: bool = False
    ) -> None:
        self._values = dict(values)
        # What the preset named in values["preset"] changed, and whether it was picked by the dataset's name.
        self.__dict__["preset_overrides"] = dict(preset_overrides or {})
        self.__dict__["preset_auto"] = preset_auto

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
        return Config({**self._values, **changes}, self.preset_overrides, self.preset_auto)

    def __repr__(self) -> str:
        return f"Config({self._values})"


def resolve_config(
    model_file: str,
    dataset_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
    source: str = "override",
) -> Config:
    """Merge defaults ← preset ← overrides and validate every key, type and range.

    ``preset`` picks an entry of the model's ``presets:`` section; when it is None and a
    preset's name equals the dataset name (case-insensitive), that preset applies
    (``Config.preset_auto``); ``"none"`` applies no preset at all. The keys the preset set
    are kept in ``Config.preset_overrides`` (see :func:`describe_preset`).
    """
    defaults, presets, _ = load_defaults(model_file)
    values = dict(defaults)
    chosen, auto = preset, False
    if chosen is not None and chosen.lower() == NO_PRESET:
        chosen = None
    elif chosen is None and dataset_name is not None:
        chosen = next((p for p in presets if p.lower() == dataset_name.lower()), None)
        auto = chosen is not None
    elif chosen is not None and chosen not in presets:
        raise ConfigError(
            f"{model_file}: no preset {chosen!r} (available: {', '.join(presets) or 'none'}; {NO_PRESET!r} for none)"
        )
    preset_values = presets[chosen] if chosen is not None else {}
    if chosen is not None:
        values.update(_validated(defaults, preset_values, f"configs/{model_file}.yaml preset {chosen!r}"))
    values.update(_validated(defaults, dict(overrides or {}), source))
    _check_valid_metric(values, source)
    values["preset"] = chosen
    return Config(values, preset_values, auto)


def describe_preset(config: Config) -> str:
    """One line saying which preset applied, why, and what it set (printed at the start of a run)."""
    name = config.get("preset")
    if name is None:
        return "preset: none (the model's defaults and your overrides)"
    why = "chosen automatically: it matches the dataset's name" if config.preset_auto else "asked for"
    sets = ", ".join(f"{k}={v}" for k, v in config.preset_overrides.items()) or "nothing"
    hint = f"; --preset {NO_PRESET} turns it off" if config.preset_auto else ""
    return f"preset {name!r} ({why}) sets {sets}{hint}"


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


def _validated(defaults: dict, updates: Mapping[str, Any], source: str) -> dict:
    for key, value in updates.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown configuration key {key!r}{hint}")
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
        problem = _range_error(key, value)
        if problem is not None:
            raise ConfigError(f"{source}: {key} = {value!r} {problem}")
    return dict(updates)


def load_override_file(path: str | Path) -> dict[str, Any]:
    return _read_yaml(Path(path), str(path))
