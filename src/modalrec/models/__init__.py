"""Models: the :class:`Recommender` interface, the registry of built-in models, and model specs.

Every model is created from here by a spec — a registered name, ``path/to/file.py:Class``,
``package.module:Class``, an installed ``modalrec.models`` entry point, or the class itself
(see :mod:`modalrec.models.spec`).
"""

from __future__ import annotations

from modalrec.models.base import Batch, Explanation, Recommender
from modalrec.models.spec import (
    MODEL_REGISTRY,
    build_model,
    get_model_class,
    list_models,
    model_source_hash,
    model_spec_of,
    register,
    resolve_model,
)


def _import_model_modules() -> None:
    """Import every module of this package (one model per file); importing registers the model."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in ("base", "spec") and not info.name.startswith("_"):
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
    "model_source_hash",
    "model_spec_of",
    "register",
    "resolve_model",
]
