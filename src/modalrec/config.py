"""Configuration: YAML defaults per model, per-dataset presets, validated overrides.

Keys follow MMRec's names (``embedding_size``, ``learning_rate``, ``reg_weight``,
``train_batch_size``, ``epochs``, ``stopping_step``, ``valid_metric``, ``topk`` …).
A key that no default defines is an error (with a suggestion), never a silent default;
a value whose type does not match the default's type is an error too.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from modalrec.errors import ConfigError

RESERVED_SECTIONS = ("presets", "search_space", "description")


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
    own.pop("description", None)
    return {**overall, **own}, presets, search


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

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = dict(values)

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
        return Config({**self._values, **changes})

    def __repr__(self) -> str:
        return f"Config({self._values})"


def resolve_config(
    model_file: str,
    dataset_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
    source: str = "override",
) -> Config:
    """Merge defaults ← preset ← overrides and validate every key and type.

    ``preset`` picks an entry of the model's ``presets:`` section; when it is None and a
    preset's name equals the dataset name (case-insensitive), that preset applies.
    """
    defaults, presets, _ = load_defaults(model_file)
    values = dict(defaults)
    chosen = preset
    if chosen is None and dataset_name is not None:
        chosen = next((p for p in presets if p.lower() == dataset_name.lower()), None)
    elif chosen is not None and chosen not in presets:
        raise ConfigError(f"{model_file}: no preset {chosen!r} (available: {', '.join(presets) or 'none'})")
    if chosen is not None:
        values.update(_validated(defaults, presets[chosen], f"configs/{model_file}.yaml preset {chosen!r}"))
    values.update(_validated(defaults, dict(overrides or {}), source))
    values["preset"] = chosen
    return Config(values)


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
    return dict(updates)


def load_override_file(path: str | Path) -> dict[str, Any]:
    return _read_yaml(Path(path), str(path))
