"""The package's layers and its import graph, read from the source (every import, module-level or inside a
function): no import cycles, and each layer imports only the layers below it.

    errors <- utils <- models <- data <- metrics <- systems <- callbacks <- the entry points and launchers

``utils`` is a leaf beside ``errors``: it imports nothing else of the package. The package's own ``__init__``
(its version and start time) imports nothing of it, and anything may import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "aigc_lab"
# Each layer and the package's layers it may import (besides itself).
LAYERS = {
    "errors": set(),
    "utils": {"errors"},
    "models": {"errors", "utils"},
    "data": {"errors", "utils", "models"},
    "metrics": {"errors", "utils", "models", "data"},
    "systems": {"errors", "utils", "models", "data", "metrics"},
    "callbacks": {"errors", "utils", "models", "data", "metrics", "systems"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The package modules ``path`` imports, anywhere in it (``from aigc_lab.x import y`` counts as ``x.y`` when
    ``y`` is a module, else ``x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.startswith(("aigc_lab", "hydra_plugins")) and name in MODULES:
                found.add(name)
    # `from aigc_lab.x import y` with y a module: the package x itself is not a dependency
    return {n for n in found if not any(other.startswith(n + ".") for other in found) or n not in PACKAGES}


FILES = sorted(PACKAGE.rglob("*.py")) + sorted((SRC / "hydra_plugins").rglob("*.py"))  # the plugins: cycles only
MODULES = {module_name(path) for path in FILES}
PACKAGES = {module_name(path) for path in FILES if path.name == "__init__.py"}
GRAPH = {module_name(path): imports_of(path) - {module_name(path)} for path in FILES}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "aigc_lab"


def find_cycle() -> list[str] | None:
    """One import cycle of GRAPH, as the list of its modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_layer_imports_only_the_layers_below(name):
    allowed = LAYERS[name] | {name, "aigc_lab"}
    wrong = sorted(f"{module} imports {target}" for module, targets in GRAPH.items() if layer(module) == name
                   for target in targets if layer(target) not in allowed)
    assert not wrong, "\n".join(wrong)


def test_the_package_root_imports_nothing_of_the_package():
    assert GRAPH["aigc_lab"] == set()


def test_the_cycle_finder_finds_cycles(monkeypatch):
    monkeypatch.setitem(globals(), "GRAPH", {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()})
    assert find_cycle() == ["a", "b", "c", "a"]
