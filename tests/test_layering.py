"""The package is a pipeline: every module imports only from its own layer or the layers below it, with no circle.

The layer map is the one in ``docs/architecture.md``. Imports inside functions count as much as those at the top
of a file (a lazy import is still a dependency, and a circle hidden in a function is still a circle). Modules of
the same layer may use each other (``data.split`` uses ``data.dataset``), except the three consumers of run
directories — ``experiments``, ``analysis`` and ``serve`` — which share what they need through ``reporting``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "modalrec"

# Lowest first. A key is a module or package below ``modalrec``; a module's layer is that of its longest key.
LAYERS: list[set[str]] = [
    {"errors", "io", "threads", "interrupt", "allocator"},
    {"config"},
    {"data"},
    {"graphs", "knn_graphs", "ann"},
    {"nn"},
    {"models"},
    {"evaluation"},
    {"training"},
    {"runs", "run_files", "run_model", "run_resume", "run_load", "run_index", "run_distributed", "recommendation"},
    {"reporting"},
    {"experiments", "analysis", "serve"},
    {"testing", "api"},
    {"demo"},
    {"cli", "__main__", "__init__"},
]
SIBLINGS_APART = {"experiments", "analysis", "serve"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _group(module: str) -> str:
    keys = {k for layer in LAYERS for k in layer}
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in keys:
            return ".".join(parts[:n])
    raise AssertionError(f"modalrec.{module} is in no layer of tests/test_layering.py: add it to LAYERS")


def _layer(module: str) -> int:
    g = _group(module)
    return next(i for i, layer in enumerate(LAYERS) if g in layer)


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The modalrec modules ``module`` imports (anywhere in the file), as names below ``modalrec``."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(["modalrec", *base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        for name in names:
            if name == "modalrec" or not name.startswith("modalrec."):
                continue
            inner = name.removeprefix("modalrec.")
            while inner and inner not in known:
                inner = inner.rpartition(".")[0]
            if inner and inner != module:
                found.add(inner)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def test_no_module_imports_a_higher_layer_or_a_separated_sibling():
    bad = []
    for mod, deps in sorted(_graph().items()):
        for dep in sorted(deps):
            if _layer(dep) > _layer(mod):
                bad.append(f"modalrec.{mod} (layer {_group(mod)}) imports higher modalrec.{dep} ({_group(dep)})")
            elif _group(dep) != _group(mod) and {_group(dep), _group(mod)} <= SIBLINGS_APART:
                bad.append(f"modalrec.{mod} imports its sibling modalrec.{dep}: share it through modalrec.reporting")
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d.startswith(m + ".") or m.startswith(d + "."):
                continue  # a package and its own submodules
            if state.get(d) == 1:
                circle = stack[stack.index(d) :] + [d]
                pytest.fail("import circle: " + " -> ".join(f"modalrec.{x}" for x in circle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_a_planted_upward_import(tmp_path, monkeypatch):
    """The layering test can fail: a models file that imports the trainer is reported."""
    fake = tmp_path / "modalrec"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "__init__.py").write_text("")
    (fake / "models" / "bad.py").write_text("def f():\n    from modalrec.training import fit\n")
    (fake / "training.py").write_text("from modalrec.models import bad\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    graph = _graph()
    assert "training" in graph["models.bad"]
    with pytest.raises(AssertionError, match="imports higher modalrec.training"):
        test_no_module_imports_a_higher_layer_or_a_separated_sibling()
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_no_import_circle()
