"""The search space of ``modalrec tune``: which keys it searches and how a trial draws a point of it.

The space is the model's ``search_space`` (finite lists → categorical choices) with its
``search_ranges`` taking over the keys they name (log-uniform learning rates and regularisers,
integer layers); keys fixed with ``--set`` are not searched.
"""

from __future__ import annotations

from typing import Any

import yaml

from modalrec.config import load_defaults, load_search_ranges
from modalrec.models import get_model_class


def tune_space(model: str, fixed: dict[str, Any], sampler: str = "tpe") -> dict[str, dict[str, Any]]:
    """``{key: {"choices": [...]}}`` or ``{key: {"low", "high", "log", "int"}}`` of the keys ``tune`` searches.

    ``search_space`` lists become choices; a ``search_ranges`` entry replaces the list of its key
    (except with the grid sampler, which needs finite lists); ``fixed`` keys are left out.
    """
    cls = get_model_class(model)
    space: dict[str, dict[str, Any]] = {k: {"choices": list(v)} for k, v in load_defaults(cls)[2].items()}
    if sampler != "grid":
        space.update(load_search_ranges(cls))
    return {k: v for k, v in space.items() if k not in fixed}


def encode(value: Any) -> Any:
    """Optuna's categorical choices are scalars: a list value (e.g. ``[2, 3]``) travels as its YAML text."""
    return yaml.safe_dump(value, default_flow_style=True).strip() if isinstance(value, list | dict) else value


def decode(value: Any, choices: list[Any]) -> Any:
    """The choice whose :func:`encode` is ``value`` (the value itself when it is a scalar choice)."""
    return next((c for c in choices if encode(c) == value), value)


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one point of ``space`` through an Optuna trial; returns the config overrides."""
    params: dict[str, Any] = {}
    for key, d in space.items():
        if "choices" in d:
            params[key] = decode(trial.suggest_categorical(key, [encode(c) for c in d["choices"]]), d["choices"])
        elif d["int"]:
            params[key] = trial.suggest_int(key, int(d["low"]), int(d["high"]), log=d["log"])
        else:
            params[key] = trial.suggest_float(key, float(d["low"]), float(d["high"]), log=d["log"])
    return params
