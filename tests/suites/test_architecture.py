"""The package's boundaries, checked on its source: a newcomer can rely on them.

- no private name (``_x``) of one of our modules is used in another;
- no import cycle, counting imports inside functions and under ``TYPE_CHECKING``;
- imports flow one way through the layers (``LAYERS``): the foundation, ``config/``,
  ``coordination/``, ``routing/``, ``usage/``, ``prompting/``, ``_operator/``, the plugin's
  glue, then ``testing/``; a module imports only from its own layer and the layers below it;
- only the hook modules (``_hooks.py`` and each layer's ``hooks.py``) call Datasette's hooks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Final

import pytest

import datasette_llm

PACKAGE: Final = Path(datasette_llm.__file__).parent
ROOT: Final = PACKAGE.parent
SOURCES: Final = sorted([*PACKAGE.rglob("*.py"), ROOT / "pytest_datasette_llm.py"])

LAYERS: Final[tuple[tuple[str, ...], ...]] = (
    # The foundation: errors, the logger, actors, the hooks' machinery, the state per Datasette.
    (
        "datasette_llm.errors",
        "datasette_llm.provider_errors",
        "datasette_llm.log",
        "datasette_llm.actors",
        "datasette_llm._hooks",
        "datasette_llm.state",
    ),
    ("datasette_llm.config",),
    ("datasette_llm.coordination",),
    ("datasette_llm.routing",),
    ("datasette_llm.usage",),
    ("datasette_llm.prompting",),
    ("datasette_llm._operator",),
    # The plugin's glue: what Datasette and plugin authors import.
    (
        "datasette_llm.hookspecs",
        "datasette_llm.typing",
        "datasette_llm.plugin",
        "datasette_llm",
    ),
    ("datasette_llm.testing", "pytest_datasette_llm"),
)
HOOK_MODULES: Final = frozenset(
    {
        "datasette_llm._hooks",
        "datasette_llm.hookspecs",
        "datasette_llm.routing.hooks",
        "datasette_llm.prompting.hooks",
    }
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def tree_of(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def defined_privates(tree: ast.Module) -> set[str]:
    """Private names a module defines: functions, classes, attributes, slots, module names."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def imported_modules(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """Yield ``(line, module, names)`` for every import in ``path``, wherever it stands."""
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    for node in ast.walk(tree_of(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            yield node.lineno, base, [alias.name for alias in node.names]


def ours(module: str) -> bool:
    return module == "datasette_llm" or module.startswith(("datasette_llm.", "pytest_datasette"))


def import_graph() -> dict[str, set[str]]:
    known = {module_name(path) for path in SOURCES}
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        edges: set[str] = set()
        for _, module, names in imported_modules(path):
            if not ours(module):
                continue
            submodules = {f"{module}.{name}" for name in names} & known  # from . import hookspecs
            edges |= submodules
            if module in known and (not names or len(submodules) < len(names)):
                edges.add(module)
        graph[module_name(path)] = edges - {module_name(path)}
    return graph


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: module_name(path))
def test_no_private_name_of_ours_is_used_outside_its_module(path: Path) -> None:
    tree = tree_of(path)
    mine = defined_privates(tree)
    foreign: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if not node.attr.startswith("__") and node.attr not in mine:
                foreign.append(f"line {node.lineno}: {ast.unparse(node)}")
    for line, module, names in imported_modules(path):
        foreign.extend(
            f"line {line}: from {module} import {name}"
            for name in names
            if ours(module) and name.startswith("_") and name != "__version__"
        )
    assert not foreign, f"{module_name(path)} uses private names of other modules: {foreign}"


def test_there_is_no_import_cycle_even_counting_type_checking_and_function_imports() -> None:
    graph = import_graph()
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        for imported in sorted(graph.get(module, ())):
            if imported in trail:
                cycles.append([*trail[trail.index(imported) :], imported])
            elif imported not in done:
                visit(imported, [*trail, imported])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def layer_of(module: str) -> int:
    """Return the index in ``LAYERS`` of the layer ``module`` belongs to."""
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer)
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def test_every_module_belongs_to_a_layer() -> None:
    for module in import_graph():
        layer_of(module)


def test_imports_flow_one_way_down_the_layers() -> None:
    upward: list[str] = []
    for module, edges in sorted(import_graph().items()):
        upward.extend(
            f"{module} (layer {layer_of(module)}) imports {edge} (layer {layer_of(edge)})"
            for edge in sorted(edges)
            if layer_of(edge) > layer_of(module)
        )
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_only_the_hook_modules_call_datasettes_hooks() -> None:
    for path in SOURCES:
        if module_name(path) in HOOK_MODULES:
            continue
        for line, module, _ in imported_modules(path):
            if module == "datasette.plugins":
                assert path.match("testing/_router.py"), f"{path}:{line} imports datasette.plugins"
        for node in ast.walk(tree_of(path)):
            if isinstance(node, ast.Attribute) and node.attr == "hook":
                assert path.name == "models.py", f"{path}:{node.lineno}: {ast.unparse(node)}"
