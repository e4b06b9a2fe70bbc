"""The package's import graph, read from the source (module- and function-level imports): no cycle anywhere,
and the lower layers import nothing above them (communicators -> references -> labelling -> the rest)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "fhi_al"
PACKAGE = PACKAGE_DIR.name


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """fhi_al modules `name` imports anywhere in its file (an import inside a function counts too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            named = [f"{module}.{alias.name}" for alias in node.names]
            # `from package import module` imports that module; any other name comes from `package` itself
            candidates = [n for n in named if n in modules]
            candidates += [module] if any(n not in modules for n in named) else []
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and candidate != PACKAGE:
                targets.add(candidate)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle_and_accepts_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "fhi_al.procedures.initial_dataset" in graph["fhi_al.cli"]  # imported inside a function
    assert "fhi_al.references.base" in graph["fhi_al.labeling.label"]  # `from ..references.base import`


def test_no_import_cycle_in_the_package():
    assert cycles(import_graph()) == []


# each layer and the fhi_al modules it may import (besides its own package's modules)
LOWER_LAYERS = {
    "fhi_al.parallel": {"fhi_al.errors"},
    "fhi_al.references": {"fhi_al.errors", "fhi_al.durable"},
    "fhi_al.labeling": {"fhi_al.errors", "fhi_al.durable", "fhi_al.parallel", "fhi_al.references"},
}


@pytest.mark.parametrize("layer", sorted(LOWER_LAYERS))
def test_lower_layers_import_nothing_above_them(layer):
    allowed = LOWER_LAYERS[layer]
    graph = import_graph()
    inside = [name for name in graph if name == layer or name.startswith(layer + ".")]
    assert inside, layer
    above = {f"{name} -> {target}" for name in inside for target in graph[name]
             if not (target == layer or target.startswith(layer + "."))
             and not any(target == low or target.startswith(low + ".") for low in allowed)}
    assert not above, sorted(above)


def test_the_command_line_starts_without_heavy_libraries():
    """Bad input exits within a second: the console scripts load torch, mace and the reference libraries only
    when a procedure runs."""
    heavy = ("torch", "mace", "e3nn", "tblite", "pyscf", "scipy", "mpi4py", "asi4py")
    code = f"import sys, fhi_al.cli; print(sorted(set({heavy!r}) & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
