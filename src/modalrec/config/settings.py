"""A model's own settings: read from its class's ``config_name``, ``config_file`` or ``settings``.

A model class states its settings — its keys' defaults and the sections ``search_space`` (the grid),
``search_ranges`` (tune), ``presets``, ``bounds``, ``compat``, ``only_with``, ``large_data_settings`` and
``description`` — in
one of three ways (see :class:`modalrec.models.base.Recommender`):

* ``config_name = "lightgcn"``: ``configs/lightgcn.yaml`` inside modalrec (the built-in models);
* ``config_file = "imglightgcn.yaml"``: a YAML path relative to the file of the module defining the class;
* ``settings = {"proj_scale": 0.5, "search_space": {...}}``: the same sections as a dict.

A class that states none has no settings of its own beyond its bases'; one that subclasses another
model merges its own over the base's (see :func:`model_settings`). overall.yaml's shared keys are
added by :mod:`modalrec.config`.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from modalrec.errors import ConfigError

# Top-level YAML sections that are not configuration keys (each is read by its own function).
RESERVED_SECTIONS = (
    "presets",
    "search_space",
    "search_ranges",
    "description",
    "compat",
    "only_with",
    "bounds",
    "large_data_settings",
)
OVERALL = "configs/overall.yaml"
# The class attributes a model states its settings in (one of them per class).
SETTINGS_ATTRIBUTES = ("config_name", "config_file", "settings")
# Sections a subclass's own settings extend key by key (a preset: setting by setting); the other
# sections, the grid (search_space) and tune's ranges among them, are replaced when it states them.
MERGED_SECTIONS = ("presets", "bounds", "compat", "only_with", "large_data_settings")

# A model is its class, a model spec string or None (overall.yaml alone). Specs are resolved by the
# models layer, which sits above this one and installs its resolver (use_model_resolver).
ModelRef = type | str | None
_model_resolver: Callable[[str], type] | None = None


def use_model_resolver(resolve: Callable[[str], type]) -> None:
    """Set how a model spec string becomes its class (:mod:`modalrec.models.spec` installs ``resolve_model``)."""
    global _model_resolver
    _model_resolver = resolve


def model_class(model: ModelRef) -> type | None:
    """The class ``model`` names: a class stays itself, a spec is resolved, None (overall.yaml alone) stays None."""
    if model is None or isinstance(model, type):
        return model
    if isinstance(model, str):
        if _model_resolver is None:
            raise ConfigError(f"model {model!r}: import modalrec.models to resolve model specs (or pass the class)")
        return _model_resolver(model)
    raise ConfigError(f"{model!r} is not a model: give its class, a model spec or a registered name")


def read_yaml(path: Path | Any, what: str) -> dict:
    """The mapping a YAML file holds; a one-line :class:`ConfigError` naming ``what`` if it cannot be read."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: invalid YAML ({' '.join(str(exc).split())})") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a mapping of key: value")
    return data


def config_file(name: str) -> Any:
    """The YAML ``configs/<name>.yaml`` of this package (a built-in model's ``config_name``, or overall)."""
    return resources.files("modalrec.models").joinpath("configs", f"{name}.yaml")


def read_overall() -> dict[str, Any]:
    """overall.yaml: the keys every model shares, and their sections."""
    return read_yaml(config_file("overall"), OVERALL)


def config_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration keys of a YAML's data (or a ``settings`` dict): everything but its sections."""
    return {k: v for k, v in data.items() if k not in RESERVED_SECTIONS}


@dataclass(frozen=True)
class OwnSettings:
    """A model's own settings (a YAML's sections, its bases' merged in) and where they come from."""

    owner: str  # the model's name; "" for overall.yaml alone
    sources: tuple[str, ...]  # base class first: "configs/lightgcn.yaml", "/abs/img.yaml", "ImgX.settings"
    data: dict[str, Any]

    @property
    def source(self) -> str:
        """The most derived source, named in messages about the model's own sections."""
        return self.sources[-1] if self.sources else OVERALL

    def keys_from(self) -> str:
        """Where the model's keys are defined, for an unknown key's message."""
        return " + ".join((OVERALL, *self.sources))


def model_settings(model: ModelRef) -> dict[str, Any]:
    """A model's own settings, as one YAML would hold them: its keys' defaults and its sections.

    Read from whichever of ``config_name``, ``config_file`` or ``settings`` the class states; a class
    stating none has the settings of its bases (none at all for a direct subclass of ``Recommender``:
    overall.yaml's keys only). Every class of the model's MRO that states settings is merged over its
    bases' (base first): keys and ``description`` are replaced one by one; ``presets``, ``bounds``,
    ``compat`` and ``only_with`` are extended (a preset of the same name setting by setting);
    ``search_space`` and ``search_ranges`` are replaced whole. overall.yaml's keys are not included
    (:func:`modalrec.config.load_defaults` adds them).
    """
    return copy.deepcopy(settings_of(model_class(model)).data)


def settings_of(cls: type | None) -> OwnSettings:
    """:func:`model_settings` of a class, with its owner and sources (None: overall.yaml alone, no own settings)."""
    if cls is None:
        return OwnSettings("", (), {})
    sources: list[str] = []
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        stated = _stated(klass)
        if stated is None:
            continue
        sources.append(stated[0])
        for key, value in stated[1].items():
            if key in MERGED_SECTIONS and key in merged:
                base = merged[key]
                value = {**base, **value}
                if key == "presets":  # a preset the subclass restates keeps the base's settings it does not change
                    value = {name: {**base.get(name, {}), **preset} for name, preset in value.items()}
            merged[key] = value
    return OwnSettings(str(getattr(cls, "name", "") or cls.__name__), tuple(sources), merged)


def _stated(cls: type) -> tuple[str, dict[str, Any]] | None:
    """(source, sections) of the settings ``cls`` itself states (not inherited), checked; None if none."""
    given = [a for a in SETTINGS_ATTRIBUTES if cls.__dict__.get(a)]
    if not given:
        return None
    who = cls.__qualname__
    if len(given) > 1:
        raise ConfigError(
            f"model {who}: state its settings in one of config_name, config_file or settings, not {' and '.join(given)}"
        )
    value = cls.__dict__[given[0]]
    if given[0] == "config_name":
        source, path = f"configs/{value}.yaml", config_file(str(value))
        if not path.is_file():
            raise ConfigError(
                f"model {who}: no configuration file {source} in modalrec (config_name names a built-in YAML; "
                "a YAML of your own: config_file = 'name.yaml', beside your module)"
            )
        data = read_yaml(path, source)
    elif given[0] == "config_file":
        path = _own_file(cls, str(value))
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"model {who}: config_file {source} does not exist")
        data = read_yaml(path, source)
    else:
        source = f"{who}.settings"
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: expected a dict of key: default (and sections such as search_space)")
        data = copy.deepcopy(dict(value))
    _check_sections(data, source)
    return source, data


def _own_file(cls: type, name: str) -> Path:
    """``config_file`` as a path: relative to the file of the module defining ``cls`` unless absolute."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    module_file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if module_file is None:
        raise ConfigError(
            f"model {cls.__qualname__}: config_file {name!r} is relative to the model's module file, and "
            f"{cls.__module__} has none (give an absolute path, or settings = {{...}})"
        )
    return Path(module_file).resolve().parent / path


def _check_sections(data: Mapping[str, Any], source: str) -> None:
    """The shape of settings' keys and sections (their values are checked where they are used)."""
    bad_key = next((k for k in data if not isinstance(k, str) or not k.isidentifier()), None)
    if bad_key is not None:
        raise ConfigError(f"{source}: {bad_key!r} is not a valid configuration key (use a Python identifier)")
    for section in RESERVED_SECTIONS:
        value = data.get(section)
        if value is None:
            continue
        if section == "description":
            if not isinstance(value, str):
                raise ConfigError(f"{source} description: expected one line of text")
        elif not isinstance(value, dict):
            raise ConfigError(f"{source} {section}: expected a mapping of key: value")
        elif section == "presets" and not all(isinstance(v, dict) for v in value.values()):
            raise ConfigError(f"{source} presets: each preset must map keys to values")
        elif section == "search_space" and not all(isinstance(v, list) and v for v in value.values()):
            raise ConfigError(f"{source} search_space: each key must list the values to search (a non-empty list)")
