"""Benchmark plans: the table rows of ``modalrec benchmark --plan`` from a YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modalrec.config import load_defaults
from modalrec.errors import ModalrecError
from modalrec.experiments.entries import Entry
from modalrec.models import get_model_class, model_spec_of

ROW_FIELDS = ("model", "label", "set", "grid", "modalities", "seeds")


def load_plan(path: str | Path) -> list[Entry]:
    """Table rows from a plan YAML: ``rows: [{model, label?, set?, grid?, modalities?, seeds?}, ...]``.

    ``model`` is any model spec (a registered name, ``path/file.py:Class`` relative to the working
    directory, ``package.module:Class``); ``set`` fixes overrides for that row only; ``grid`` is a
    search space of its own (``{key: [values, ...]}``) or the word ``default`` for the model's ``search_space``;
    ``seeds`` replaces the benchmark's seeds for that row (e.g. one seed for a costly variant).
    Labels must be unique (they name the table rows and the t-tests).
    """
    path = Path(path)
    rows = _read_rows(path)
    entries = [_entry(row, f"{path} row {n}") for n, row in enumerate(rows, 1)]
    labels = [e.label for e in entries]
    dup = next((lb for lb in labels if labels.count(lb) > 1), None)
    if dup is not None:
        raise ModalrecError(f"{path}: two rows are labelled {dup!r}; give each a unique 'label:'")
    return entries


def _read_rows(path: Path) -> list:
    """The plan's non-empty ``rows:`` list; a missing file, bad YAML or no rows is a one-line error."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ModalrecError(f"{path}: cannot read the plan ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ModalrecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ModalrecError(f"{path}: a plan needs a non-empty list under 'rows:'")
    return rows


def _entry(row: Any, where: str) -> Entry:
    """One plan row as an :class:`Entry`, checked field by field; errors name ``where`` (file and row)."""
    if not isinstance(row, dict) or "model" not in row:
        raise ModalrecError(f"{where}: each row is a mapping with at least 'model:'")
    unknown = set(row) - set(ROW_FIELDS)
    if unknown:
        raise ModalrecError(f"{where}: unknown field {sorted(unknown)[0]!r} ({', '.join(ROW_FIELDS)})")
    seeds = row.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds)):
        raise ModalrecError(f"{where}: 'seeds' must be a non-empty list of integers")
    try:
        cls = get_model_class(str(row["model"]))
    except ModalrecError as exc:
        raise ModalrecError(f"{where}: {exc}") from None
    overrides = row.get("set") or {}
    if not isinstance(overrides, dict):
        raise ModalrecError(f"{where}: 'set' must map keys to values")
    grid = row.get("grid")
    if grid == "default":
        grid = load_defaults(cls)[2]
    elif grid is not None and (not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values())):
        raise ModalrecError(f"{where}: 'grid' must be 'default' or map each key to a non-empty list")
    modalities = row.get("modalities")
    if isinstance(modalities, str):
        modalities = [m.strip() for m in modalities.split(",") if m.strip()]
    # the row's model as its canonical spec: a file's model is found again by its absolute path
    return Entry(str(row.get("label") or cls.name), model_spec_of(cls), dict(overrides), modalities, grid, seeds)
