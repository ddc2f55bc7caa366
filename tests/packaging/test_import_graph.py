"""No package imports itself in a circle: its modules form a graph without cycles.

The graph is read from the source with ``ast``, nothing imported. Every import counts, wherever it
is written: at module level, inside a function, under ``if TYPE_CHECKING:`` (a cycle hidden there is
still a cycle of the design). ``from pkg import name`` depends on ``pkg.name`` when that is a module,
and on ``pkg`` (its ``__init__``) otherwise; importing ``a.b.c`` also depends on the packages ``a``
and ``a.b`` it runs first, except those that hold the importing module (a package may import its own
modules).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    pytest.param(ROOT / "gateway", "kruxos_gateway", id="kruxos_gateway"),
    pytest.param(ROOT, "kruxos_build", id="kruxos_build"),
]

Graph = dict[str, set[str]]


def _modules(source: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``source``, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((source / package).rglob("*.py")):
        parts = path.relative_to(source).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The modules of ``known`` that ``tree`` (the source of ``module``) imports, anywhere in it."""
    here = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                # ``import a.b.c`` binds ``a`` but runs, and depends on, ``a.b.c``.
                if name in known:
                    yield name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in known:
                    yield submodule
                elif target in known:
                    yield target


def import_graph(source: Path, package: str) -> Graph:
    modules = _modules(source, package)
    known = set(modules)
    graph: Graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        own = _ancestors(name) | {name}
        graph[name] = {
            needed
            for target in _imported(tree, name, is_package, known)
            for needed in _ancestors(target) | {target}
            if needed in known and needed not in own
        }
    return graph


def _ancestors(module: str) -> set[str]:
    """The packages above ``module``, which importing it runs first (``a`` and ``a.b`` for ``a.b.c``)."""
    parts = module.split(".")
    return {".".join(parts[:n]) for n in range(1, len(parts))}


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: Graph, component: set[str]) -> list[str]:
    """The shortest cycle through the first module (by name) of ``component`` (breadth first)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


@pytest.mark.parametrize(("source", "package"), PACKAGES)
def test_the_package_has_no_import_cycle(source: Path, package: str) -> None:
    found = cycles(import_graph(source, package))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_an_import_inside_a_function_or_under_type_checking_counts(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from . import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n"
    )
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_from_a_package_import_a_name_depends_on_the_package_init(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .leaf import Thing\n")
    (package / "sub" / "leaf.py").write_text("from ..top import value\n")
    (package / "top.py").write_text("from .sub import Thing\nfrom .sub import leaf\nvalue = 1\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.top"] == {"pkg.sub", "pkg.sub.leaf"}
    assert cycles(graph) == [["pkg.sub", "pkg.sub.leaf", "pkg.top", "pkg.sub"]]
