"""modalrec — multimodal recommendation: data, graphs, models, training, evaluation.

The Python API, in one namespace::

    import modalrec as mr

    data = mr.load_dataset("data/baby")
    trained = mr.train("mymodels.py:ImgLightGCN", data, settings={"epochs": 50}, seed=1)
    base = mr.train("LightGCN", data, seed=1)
    print(mr.compare(trained, base, "recall@20"))
    print(mr.recommend(trained, user=12, k=10, explain=True))

Its functions are loaded on first use (``import modalrec`` stays light, and the command line starts fast): see
:mod:`modalrec.api` for :func:`load_dataset`, :func:`train`, :func:`load_run`, :func:`evaluate`, :func:`recommend`,
:func:`per_user_metrics` and :func:`compare`; :func:`list_models`, :func:`register` and :class:`Recommender` come
from :mod:`modalrec.models`, :func:`check_model` (the contract kit) from :mod:`modalrec.testing`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modalrec.errors import ConfigError, DataError, ModalrecError, RunError
from modalrec.threads import choose_openmp_waiting

choose_openmp_waiting()  # must precede torch's OpenMP start-up; see modalrec.threads

__version__ = "0.1.0"

# public name → the module defining it, imported when the name is first used (PEP 562)
_LAZY = {
    **dict.fromkeys(
        (
            "Comparison",
            "TrainedRun",
            "compare",
            "evaluate",
            "load_dataset",
            "load_run",
            "per_user_metrics",
            "recommend",
            "train",
        ),
        "modalrec.api",
    ),
    **dict.fromkeys(("Recommender", "list_models", "register"), "modalrec.models"),
    "check_model": "modalrec.testing",
}

__all__ = [
    "Comparison",
    "ConfigError",
    "DataError",
    "ModalrecError",
    "Recommender",
    "RunError",
    "TrainedRun",
    "__version__",
    "check_model",
    "compare",
    "evaluate",
    "list_models",
    "load_dataset",
    "load_run",
    "per_user_metrics",
    "recommend",
    "register",
    "train",
]

if TYPE_CHECKING:  # what editors and type checkers see; at run time __getattr__ imports them on first use
    from modalrec.api import (
        Comparison,
        TrainedRun,
        compare,
        evaluate,
        load_dataset,
        load_run,
        per_user_metrics,
        recommend,
        train,
    )
    from modalrec.models import Recommender, list_models, register
    from modalrec.testing import check_model


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modalrec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
