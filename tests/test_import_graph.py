"""The package's import graph: no cycles, no imports of another module's private names, and an
inference path that does not depend on the simulator.

Edges are read statically from every ``from ... import`` in the package (at any depth: imports
inside functions and under ``TYPE_CHECKING`` count too, since they are how cycles hide).  An import
of a name from a sub-package is an edge to the module that defines the name, found through the
sub-package's star re-exports, so that the graph is one of modules, as Python executes them.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "python" / "lsst" / "meas" / "extensions" / "bliss"
PACKAGE = "lsst.meas.extensions.bliss"


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}


@cache
def parsed(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text())


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def absolute_target(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module named by ``node`` inside ``importer``."""
    if node.level == 0:
        return node.module or ""
    parts = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def declared_all(module: str) -> list[str]:
    for node in parsed(module).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "__all__":
            return list(ast.literal_eval(node.value))
    return []


@cache
def defining_modules(package: str) -> dict[str, str]:
    """Name -> module defining it, over a package's star re-exports (recursively)."""
    found: dict[str, str] = {}
    for node in parsed(package).body:
        if isinstance(node, ast.ImportFrom) and node.names[0].name == "*":
            source = absolute_target(package, node)
            if is_package(source):
                found.update(defining_modules(source))
            else:
                found.update(dict.fromkeys(declared_all(source), source))
    return found


def imports_of(module: str) -> list[tuple[int, str, list[str]]]:
    """``(line, target module, names)`` of every import of this package's modules in ``module``."""
    found = []
    for node in ast.walk(parsed(module)):
        if isinstance(node, ast.ImportFrom):
            target = absolute_target(module, node)
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found.append((node.lineno, target, [alias.name for alias in node.names]))
    return found


def edges(module: str) -> set[str]:
    """Modules of the package that ``module`` imports from, resolved to where the names live."""
    result = set()
    for _, target, names in imports_of(module):
        if target not in MODULES:
            continue
        if not is_package(target):
            result.add(target)
            continue
        defined = defining_modules(target)
        for name in names:
            if f"{target}.{name}" in MODULES:  # a sub-module imported by name
                result.add(f"{target}.{name}")
            elif name in defined:
                result.add(defined[name])
            elif name != "*":
                result.add(target)
    result.discard(module)
    return result


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for neighbour in sorted(graph.get(node, ())):
            if state.get(neighbour) == 1:
                return stack[stack.index(neighbour) :] + [neighbour]
            if neighbour not in state and (cycle := visit(neighbour)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def private_name_imports(module: str) -> list[str]:
    return [
        f"{module}:{line}: {name} from {target}"
        for line, target, names in imports_of(module)
        for name in names
        if name.startswith("_") and not name.endswith("__") and f"{target}.{name}" not in MODULES
    ]


GRAPH = {module: edges(module) for module in MODULES if not is_package(module)}


def test_the_checks_catch_what_they_look_for() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert reachable({"a": {"b"}, "b": {"c"}, "d": {"a"}}, "a") == {"a", "b", "c"}
    # The graph resolves sub-package imports to the defining module.
    frame = f"{PACKAGE}.inference._frame"
    assert f"{PACKAGE}.network._encoder" in GRAPH[frame]
    assert f"{PACKAGE}.catalog._catalog" in GRAPH[frame]


def test_no_import_cycles() -> None:
    assert len(GRAPH) > 40
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_sub_packages_form_layers() -> None:
    """The sub-packages, with module edges collapsed onto them, have no cycle either."""

    def sub_package(module: str) -> str:
        parts = module[len(PACKAGE) + 1 :].split(".")
        return ".".join(parts[:-1]) or parts[0]

    layers: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        layers.setdefault(sub_package(module), set()).update(
            sub_package(target) for target in targets if sub_package(target) != sub_package(module)
        )
    cycle = find_cycle(layers)
    assert cycle is None, "sub-package cycle: " + " -> ".join(cycle or [])


def test_no_imports_of_private_names() -> None:
    violations = [line for module in MODULES for line in private_name_imports(module)]
    assert not violations, "imports of another module's private names:\n" + "\n".join(violations)


@pytest.mark.parametrize("entry", ["inference._frame", "inference._inference", "io._model_io"])
def test_the_inference_path_does_not_depend_on_the_simulator(entry: str) -> None:
    simulator = {f"{PACKAGE}.simulation._simulate", f"{PACKAGE}.simulation._prior"}
    training = {module for module in MODULES if ".training." in module}
    loaded = reachable(GRAPH, f"{PACKAGE}.{entry}")
    assert not loaded & (simulator | training), sorted(loaded & (simulator | training))
