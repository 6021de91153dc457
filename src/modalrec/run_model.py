"""Which model a run was trained with: what a run records of it, and how the same model is found again.

A run records, beside the model's ``name``, its ``model_spec`` (:func:`~modalrec.models.spec.model_spec_of`:
a built-in model's name, an installed plugin's entry-point name, an absolute ``/path/file.py:Class`` or
``package.module:Class``) and its ``model_source_hash`` (:func:`~modalrec.models.spec.model_source_hash`).
Loading a run (evaluate, recommend, serve, resume) resolves the recorded spec again through
:func:`~modalrec.models.spec.resolve_model` — the code comes from the user's file or installed package, never
from the run folder — and compares the hash: a changed source is said in one line. A run made before
specs were recorded has neither: its ``model`` name is looked up, and its source counts as unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from modalrec.errors import ConfigError, RunError
from modalrec.models import Recommender, model_source_hash, model_spec_of, resolve_model
from modalrec.models.spec import spec_file


def model_record(cls: type[Recommender]) -> dict[str, str | None]:
    """What a run records of its model: ``model`` (name), ``model_spec`` and ``model_source_hash``.

    The hash is None for a class whose source cannot be found (code typed into an interpreter):
    its changes then go unnoticed, as for a run made before hashes were recorded.
    """
    try:
        source: str | None = model_source_hash(cls)
    except ConfigError:
        source = None
    return {"model": cls.name, "model_spec": model_spec_of(cls), "model_source_hash": source}


def recorded_spec(record: Mapping[str, Any]) -> str:
    """The spec a run's record names: its ``model_spec``, else (a run made before specs) its ``model`` name."""
    return str(record.get("model_spec") or record["model"])


def run_model_class(
    record: Mapping[str, Any],
    where: object,
    model: str | type[Recommender] | None = None,
    run_dir: str | Path | None = None,
) -> type[Recommender]:
    """The model class of a run: ``model`` when given (the caller knows better, e.g. the file moved), else
    the recorded spec resolved again. A spec that no longer resolves (file gone, class renamed, import
    error in the user's file) is a one-line :class:`RunError` naming ``where``, the spec and the cause;
    the user's own exception stays chained for ``modalrec -v``.

    A run folder can come from someone else, and whoever wrote it also wrote the spec it records: a
    recorded file spec that points inside ``run_dir`` is refused (nothing is imported), so code shipped
    in a run folder never runs by loading the run. Name the model yourself (``model``) to load it anyway.
    """
    spec = model if model is not None else recorded_spec(record)
    if model is None and run_dir is not None:
        _refuse_code_inside_the_run(spec, where, Path(run_dir))
    try:
        return resolve_model(spec)
    except ConfigError as exc:
        raise RunError(f"{where}: the run's model cannot be loaded ({exc})") from exc


def _refuse_code_inside_the_run(spec: str, where: object, run_dir: Path) -> None:
    file = spec_file(spec)
    if file is None:
        return
    inside = file.resolve()
    if inside == run_dir.resolve() or run_dir.resolve() in inside.parents:
        raise RunError(
            f"{where}: the run names model code inside its own folder ({spec}); modalrec never imports code from "
            "a run folder — name the model yourself to load it"
        )


def source_change(cls: type[Recommender], record: Mapping[str, Any]) -> str | None:
    """``the code of X (spec)`` when ``cls``'s source hash differs from the one ``record`` holds (what changed,
    for the caller's sentence); None when it is the same, or unknown (no hash recorded: a run made before)."""
    recorded = record.get("model_source_hash")
    current = model_record(cls)["model_source_hash"]
    if recorded is None or current is None or recorded == current:
        return None
    return f"the code of {cls.name} ({model_spec_of(cls)})"


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Load ``state_dict`` into ``model``: None when it loaded, else why not, in one line (a missing or
    unexpected key, a size mismatch) — e.g. the model's code changed since the weights were saved."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        own = model.state_dict()
        found = [
            (what, keys)
            for what, keys in (
                ("missing", [k for k in own if k not in state_dict]),
                ("unexpected", [k for k in state_dict if k not in own]),
            )
            if keys
        ]
        if found:
            return "; ".join(f"{what} {', '.join(keys[:3])}" + (" …" if len(keys) > 3 else "") for what, keys in found)
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]  # after "Error(s) in …:"
        return details[0] if details else " ".join(str(exc).split())
    return None
