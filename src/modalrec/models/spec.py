"""Model specs: name a recommender by registered name, file, module or installed plugin.

A *model spec* is what a user writes wherever a model is named (``--model``, a benchmark plan, the
Python API):

- a registered name, case-insensitive: ``LightGCN`` (every built-in model, and any class a user's
  code decorated with :func:`register`);
- a file and a class: ``path/to/mymodels.py:ImgLightGCN`` (relative to the working directory or
  absolute; ``path/to/mymodels.py`` alone when the file defines exactly one model);
- a module and a class: ``mypkg.models:ImgLightGCN`` (``mypkg.models.ImgLightGCN`` also works);
- a name an installed distribution declares in the ``modalrec.models`` entry-point group, e.g. in its
  ``pyproject.toml``: ``[project.entry-points."modalrec.models"] ImgX = "mypkg.models:ImgX"``;
- the class itself (Python callers).

A file is imported under a module name derived from its resolved path (:func:`file_module_name`), so
resolving the same file twice gives the same module and classes, which pickle by reference. A spec
that cannot be resolved raises a one-line :class:`~modalrec.errors.ConfigError` naming the spec and
the cause; an exception raised by the user's own code while importing is kept as its ``__cause__``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from modalrec.config.settings import use_model_resolver
from modalrec.errors import ConfigError
from modalrec.models.base import Recommender

if TYPE_CHECKING:
    from modalrec.config import Config
    from modalrec.data.dataset import Dataset
    from modalrec.graphs import GraphStore

ENTRY_POINT_GROUP = "modalrec.models"
BUILTIN_PACKAGE = "modalrec.models"
FILE_MODULE_PREFIX = "_modalrec_file_"
MODEL_REGISTRY: dict[str, type[Recommender]] = {}
# a user file may itself resolve a spec while it is imported: re-entrant
_import_lock = threading.RLock()
_entry_point_classes: dict[tuple[str, str], type[Recommender]] = {}  # (name, value) → loaded class


# ---------------------------------------------------------------------- registry
def register(cls: type[Recommender]) -> type[Recommender]:
    """Class decorator adding a model to the registry under ``cls.name`` (case-insensitive).

    Registering the same class again does nothing. A new definition of the same class — same class
    name from the same module or file: a re-run notebook cell, a re-imported file — replaces the
    entry with a warning. Any other model under a taken name is an error, so a built-in model can
    never be replaced by a different one.
    """
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise ConfigError(f"register: {cls!r} is not a Recommender subclass")
    key = cls.name.lower()
    if not key:
        raise ConfigError(f"register: {_where(cls)} has no name (set the class attribute name = '...')")
    old = MODEL_REGISTRY.get(key)
    if old is not None and old is not cls:
        if not _same_definition(old, cls):
            raise ConfigError(
                f"model name {cls.name!r} is taken by {_where(old)}; {_where(cls)} cannot register under it "
                "(give it another name)"
            )
        warnings.warn(
            f"model {cls.name}: replaced the registered class by its new definition from {_where(cls)}", stacklevel=2
        )
    MODEL_REGISTRY[key] = cls
    return cls


def _where(cls: type) -> str:
    """``module.Class`` for messages (the file for a model loaded from a file spec)."""
    file = _file_of(cls)
    if file is not None and cls.__module__.startswith(FILE_MODULE_PREFIX):
        return f"{file}:{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _file_of(cls: type) -> Path | None:
    """The resolved source file of ``cls``'s module (None for a module without one, e.g. a REPL)."""
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def _same_definition(old: type, new: type) -> bool:
    """Whether ``new`` redefines ``old``: same class name, from the same module or the same file."""
    if old.__qualname__ != new.__qualname__:
        return False
    if old.__module__ == new.__module__:
        return True
    old_file, new_file = _file_of(old), _file_of(new)
    return old_file is not None and old_file == new_file


def list_models() -> list[type[Recommender]]:
    """Every registered model and every model installed through the ``modalrec.models`` entry points.

    Entry points are loaded here (not when modalrec is imported); one that fails to load is skipped
    with a warning, so a broken plugin does not hide the others.
    """
    models = {id(cls): cls for cls in MODEL_REGISTRY.values()}
    for ep in _entry_points():
        if ep.name.lower() in MODEL_REGISTRY:
            continue  # a registered name wins (resolve_model finds that one)
        try:
            cls = _load_entry_point(ep)
        except ConfigError as exc:
            warnings.warn(str(exc), stacklevel=2)
            continue
        models.setdefault(id(cls), cls)
    return sorted(models.values(), key=lambda c: (c.name or c.__name__).lower())


def get_model_class(spec: str | type[Recommender]) -> type[Recommender]:
    """The model class a spec names (see :func:`resolve_model`)."""
    return resolve_model(spec)


def build_model(spec: str | type[Recommender], dataset: Dataset, config: Config, graphs: GraphStore) -> Recommender:
    """A new model of the class ``spec`` names, built from (dataset, config, graphs)."""
    return resolve_model(spec)(dataset, config, graphs)


# ---------------------------------------------------------------------- resolution
def resolve_model(spec: str | type[Recommender]) -> type[Recommender]:
    """The :class:`Recommender` subclass a model spec names (the forms are listed in this module's docstring).

    A registered name is looked up first, then the installed entry points; a spec with ``:`` (or a
    ``.py`` path) is a file or a module; a dotted name that is neither registered nor installed is
    tried as ``module.Class``. Raises a one-line :class:`ConfigError` for a bad spec.
    """
    if isinstance(spec, type):
        return _check_class(spec, f"{spec.__module__}.{spec.__qualname__}")
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"model spec {spec!r}: give a model name, path/to/file.py:Class or package.module:Class")
    spec = spec.strip()
    target, colon, class_name = spec.rpartition(":")
    if not colon:
        target, class_name = spec, ""
    if spec_file(spec) is not None:
        return _from_file(spec, target, class_name)
    if colon:
        return _from_module(spec, target, class_name)
    cls = MODEL_REGISTRY.get(spec.lower())
    if cls is not None:
        return cls
    for ep in _entry_points():
        if ep.name.lower() == spec.lower():
            return _load_entry_point(ep)
    module, dot, name = spec.rpartition(".")
    if dot and module and name and _module_exists(module):
        return _from_module(spec, module, name)
    names = ", ".join(sorted({c.name for c in MODEL_REGISTRY.values()} | {ep.name for ep in _entry_points()}))
    raise ConfigError(
        f"unknown model {spec!r} (registered: {names}; a model of your own: path/to/file.py:Class or module:Class)"
    )


# modalrec.config takes a model spec wherever it takes a model class; it sits below this layer, so it is told how
use_model_resolver(resolve_model)


def spec_file(spec: str) -> Path | None:
    """The ``.py`` file a file spec (``path/file.py:Class`` or ``path/file.py``) names; None for any other spec."""
    target, colon, _ = spec.strip().rpartition(":")
    if not colon:
        target = spec.strip()
    if target.endswith(".py") or "/" in target or "\\" in target:
        return Path(target).expanduser()
    return None


def _check_class(obj: object, spec: str) -> type[Recommender]:
    """``obj`` if it is a concrete model class, else the one-line error saying what it is."""
    if not (isinstance(obj, type) and issubclass(obj, Recommender)):
        kind = f"the class {obj.__qualname__}" if isinstance(obj, type) else f"a {type(obj).__name__}"
        raise ConfigError(f"model spec {spec!r}: {kind} is not a modalrec Recommender subclass")
    if obj is Recommender:
        raise ConfigError(f"model spec {spec!r}: Recommender is the base class; name a model derived from it")
    return obj


def _pick_class(spec: str, module: ModuleType, class_name: str, where: str) -> type[Recommender]:
    """``module.<class_name>`` (a dotted name walks nested classes) or, with no name, the module's only model."""
    if not class_name:
        own = _own_models(module)
        if len(own) == 1:
            return own[0]
        found = ", ".join(c.__qualname__ for c in own) or "none"
        raise ConfigError(f"model spec {spec!r}: name the class, e.g. {where}:Class ({where} defines models: {found})")
    obj: object = module
    for part in class_name.split("."):
        if not hasattr(obj, part):
            found = ", ".join(c.__qualname__ for c in _own_models(module)) or "none"
            raise ConfigError(f"model spec {spec!r}: {where} has no class {class_name!r} (its models: {found})")
        obj = getattr(obj, part)
    return _check_class(obj, spec)


def _own_models(module: ModuleType) -> list[type[Recommender]]:
    """The Recommender subclasses defined (not imported) in ``module``."""
    return [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, Recommender) and v is not Recommender
        if v.__module__ == module.__name__
    ]


def file_module_name(path: Path) -> str:
    """The module name a model file is imported under: stable for a resolved path, unique across paths."""
    resolved = path.resolve()
    stem = re.sub(r"\W", "_", resolved.stem)
    return f"{FILE_MODULE_PREFIX}{stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"


def _from_file(spec: str, target: str, class_name: str) -> type[Recommender]:
    path = Path(target).expanduser()
    if not path.is_file():
        why = "is a directory, not a .py file" if path.is_dir() else "does not exist"
        raise ConfigError(f"model spec {spec!r}: the file {path} {why}")
    return _pick_class(spec, _import_file(spec, path.resolve()), class_name, target)


def _import_file(spec: str, path: Path) -> ModuleType:
    """Import ``path`` under :func:`file_module_name`; again only when the file changed since.

    While the file runs, its folder is first on ``sys.path`` so that it can import its neighbours,
    as it could when run as a script.
    """
    name = file_module_name(path)
    source = path.read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    with _import_lock:
        previous = sys.modules.get(name)
        if previous is not None and getattr(previous, "__modalrec_source_sha256__", None) == digest:
            return previous
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"model spec {spec!r}: {path} cannot be imported as a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        module.__modalrec_source_sha256__ = digest  # type: ignore[attr-defined]
        sys.modules[name] = module  # before running it: pickle and dataclasses look the module up by name
        sys.path.insert(0, str(path.parent))
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            # the last version that imported stays in place: classes already taken from it still pickle
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
            raise ConfigError(f"model spec {spec!r}: importing {path} raised {_one_line(exc)}") from exc
        finally:
            with contextlib.suppress(ValueError):  # unless the file took its folder off sys.path itself
                sys.path.remove(str(path.parent))
        return module


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _module_exists(name: str) -> bool:
    """Whether ``name`` can be imported (its parent packages are imported to find out)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, ValueError):
        return False
    except Exception:  # a parent package failed to import: _from_module reports the user's error
        return True


def _from_module(spec: str, module_name: str, class_name: str) -> type[Recommender]:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ConfigError(
                f"model spec {spec!r}: no module named {missing!r} (install it, or put its folder on PYTHONPATH)"
            ) from exc
        raise ConfigError(f"model spec {spec!r}: importing {module_name} raised {_one_line(exc)}") from exc
    except Exception as exc:
        raise ConfigError(f"model spec {spec!r}: importing {module_name} raised {_one_line(exc)}") from exc
    return _pick_class(spec, module, class_name, f"module {module_name}")


# ---------------------------------------------------------------------- entry points
def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The installed ``modalrec.models`` entry points, read afresh (a plugin may be installed meanwhile)."""
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name.lower())


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> type[Recommender]:
    """The class an entry point names, imported on first use."""
    key = (ep.name, ep.value)
    cls = _entry_point_classes.get(key)
    if cls is None:
        dist = ep.dist.name if ep.dist is not None else "an installed package"
        try:
            obj = ep.load()
        except Exception as exc:
            raise ConfigError(
                f"model {ep.name!r} (entry point {ep.value} of {dist}): importing it raised {_one_line(exc)}"
            ) from exc
        cls = _entry_point_classes[key] = _check_class(obj, f"{ep.name} = {ep.value}")
    return cls


def _entry_point_of(cls: type) -> importlib.metadata.EntryPoint | None:
    """The installed entry point naming ``cls`` (matched on its ``module:Class`` value), if any."""
    for key, loaded in _entry_point_classes.items():
        if loaded is cls:
            return next((ep for ep in _entry_points() if (ep.name, ep.value) == key), None)
    value = f"{cls.__module__}:{cls.__qualname__}"
    return next((ep for ep in _entry_points() if ep.value.replace(" ", "") == value), None)


# ---------------------------------------------------------------------- what a run records
def model_spec_of(cls: type[Recommender]) -> str:
    """The canonical spec of ``cls`` to record in a run, so that the same model is found again.

    A built-in model's registered name; an installed plugin's entry-point name; an absolute
    ``/path/file.py:Class`` for a model loaded from a file; ``package.module:Class`` otherwise.
    """
    if cls.__module__.startswith(BUILTIN_PACKAGE + ".") and MODEL_REGISTRY.get(cls.name.lower()) is cls:
        return cls.name
    ep = _entry_point_of(cls)
    if ep is not None:
        return ep.name
    file = _file_of(cls)
    if cls.__module__.startswith(FILE_MODULE_PREFIX) and file is not None:
        return f"{file}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def model_source_hash(cls: type[Recommender]) -> str:
    """A hash of the model's source code: any change to it changes the hash (16 hex digits).

    For an installed plugin (entry point) the ``.py`` files its distribution lists; otherwise the
    bytes of the file that defines the class (built-in models: their own module; modalrec's own
    code is covered by ``run_files.code_version``); for a class without a file (a notebook cell) the
    source of the class itself.
    """
    h = hashlib.sha256()
    ep = _entry_point_of(cls)
    files = _distribution_sources(ep) if ep is not None else []
    for rel, path in files:
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    if not files:
        file = _file_of(cls)
        if file is not None and file.is_file():
            h.update(file.read_bytes())
        else:
            try:
                h.update(inspect.getsource(cls).encode())
            except (OSError, TypeError) as exc:
                raise ConfigError(f"model {cls.__qualname__}: its source code cannot be found to hash it") from exc
    return h.hexdigest()[:16]


def _distribution_sources(ep: importlib.metadata.EntryPoint) -> list[tuple[str, Path]]:
    """(relative name, path) of each ``.py`` file of the distribution providing ``ep``, sorted; [] if unknown."""
    if ep.dist is None or not ep.dist.files:
        return []
    out = []
    for f in ep.dist.files:
        if f.suffix == ".py":
            path = Path(str(f.locate()))
            if path.is_file():
                out.append((str(f), path))
    return sorted(out)
