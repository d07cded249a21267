"""The package's shape, read from its source: no import cycles, the training loop on the ground
floor, and the category names in one home.

Every ``import`` statement counts, at module level or inside a function (a function-level import
is still a dependency, only a later one), and so do imports guarded by ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from contrastive.hookspecs import Category
from tests.conftest import REPO

CORE = REPO / "contrastive"

#: The module the training loop lives in.
LOOP = "contrastive.engine"

#: What the loop must not import: the spec schema, the run directory, the runner, the stages and
#: the package face (each stands above the loop and hands it plain values instead).
ABOVE_THE_LOOP = ("contrastive.spec", "contrastive.rundir", "contrastive.runner", "contrastive.stages")

#: The one module where the category names are spelled out.
CATEGORY_HOME = "contrastive.hookspecs"

#: How many category-name literals core may hold outside that home: none (a chosen component, a
#: record and a registered component carry their category; code names one as ``Category.X``).
CATEGORY_LITERALS_ALLOWED = 0


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every Python module of the core package (the packaged TOML specs hold none)."""
    return {module_name(path): path for path in sorted(CORE.rglob("*.py"))}


def imported(path: Path, name: str) -> Iterator[str]:
    """What a module imports, as dotted names (``from a import b`` gives ``a.b``: the module ``b``
    or a name inside ``a``), relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield from (f"{base}.{alias.name}" for alias in node.names)


def dependencies(known: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the core modules it imports (a name inside a module counts as that module)."""
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        found: set[str] = set()
        for target in imported(path, name):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (each one an import cycle)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(start: str, edges: dict[str, set[str]], out: list[str]) -> None:
        stack = [(start, iter(sorted(edges.get(start, ()))))]
        seen.add(start)
        while stack:
            node, children = stack[-1]
            child = next((c for c in children if c not in seen), None)
            if child is None:
                stack.pop()
                out.append(node)
            else:
                seen.add(child)
                stack.append((child, iter(sorted(edges.get(child, ())))))

    for node in sorted(graph):
        if node not in seen:
            visit(node, graph, order)
    reverse: dict[str, set[str]] = {node: set() for node in graph}
    for node, targets in graph.items():
        for target in targets:
            reverse.setdefault(target, set()).add(node)
    seen.clear()
    groups = []
    for node in reversed(order):
        if node not in seen:
            group: list[str] = []
            visit(node, reverse, group)
            if len(group) > 1:
                groups.append(sorted(group))
    return groups


def category_literals(known: dict[str, Path]) -> list[str]:
    """``module:line`` of every string constant equal to a category name, outside its home."""
    names = {category.value for category in Category}
    found = []
    for name, path in known.items():
        if name == CATEGORY_HOME:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{name}:{node.lineno}: {node.value!r}")
    return found


def test_no_import_cycle_in_core() -> None:
    assert cycles(dependencies(modules())) == []


def test_the_loop_stands_on_the_ground_floor() -> None:
    graph = dependencies(modules())
    above = sorted(
        target
        for target in graph[LOOP]
        if target == "contrastive" or any(target == a or target.startswith(a + ".") for a in ABOVE_THE_LOOP)
    )
    assert above == [], f"{LOOP} imports from above it: {above}"


def test_category_names_live_in_one_home() -> None:
    found = category_literals(modules())
    assert len(found) <= CATEGORY_LITERALS_ALLOWED, "name categories as Category.X:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected


def test_function_level_and_relative_imports_count(tmp_path: Path) -> None:
    package = tmp_path / "contrastive" / "sub"
    package.mkdir(parents=True)
    module = package / "mod.py"
    module.write_text("def f():\n    from ..engine import train\n    import contrastive.spec\n")
    found = set(imported(module, "contrastive.sub.mod"))
    assert {"contrastive.engine.train", "contrastive.spec"} <= found
