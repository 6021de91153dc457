"""Model registry: every recommender is created by name from here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modalrec.errors import ConfigError
from modalrec.models.base import Batch, Explanation, Recommender

if TYPE_CHECKING:
    from modalrec.config import Config
    from modalrec.data.dataset import Dataset
    from modalrec.graphs import GraphStore

MODEL_REGISTRY: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    """Class decorator adding a model to the registry under ``cls.name``."""
    key = cls.name.lower()
    if key in MODEL_REGISTRY:
        raise RuntimeError(f"model {cls.name} registered twice")
    MODEL_REGISTRY[key] = cls
    return cls


def get_model_class(name: str) -> type[Recommender]:
    try:
        return MODEL_REGISTRY[name.lower()]
    except KeyError:
        names = ", ".join(sorted(c.name for c in MODEL_REGISTRY.values()))
        raise ConfigError(f"unknown model {name!r} (registered: {names})") from None


def build_model(name: str, dataset: Dataset, config: Config, graphs: GraphStore) -> Recommender:
    return get_model_class(name)(dataset, config, graphs)


def list_models() -> list[type[Recommender]]:
    return sorted(MODEL_REGISTRY.values(), key=lambda c: c.name.lower())


def _import_model_modules() -> None:
    """Import every module of this package (one model per file); importing registers the model."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_model_modules()

__all__ = [
    "MODEL_REGISTRY",
    "Batch",
    "Explanation",
    "Recommender",
    "build_model",
    "get_model_class",
    "list_models",
    "register",
]
