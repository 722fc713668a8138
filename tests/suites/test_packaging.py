"""Packaging and plugin registration: entry point, /-/plugins.json, import order, hookspecs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from datasette.app import Datasette

import datasette_llm

PACKAGE = Path(datasette_llm.__file__).parent


def test_entry_point_is_llm_pointing_at_the_package() -> None:
    [entry] = [ep for ep in entry_points(group="datasette") if ep.value == "datasette_llm"]
    assert entry.name == "llm"


async def test_plugins_json_lists_datasette_llm() -> None:
    response = await Datasette(memory=True).client.get("/-/plugins.json")
    names = [plugin["name"] for plugin in response.json()]
    assert "datasette-llm" in names


HOOKS_OF_OUR_MODULE = """
import {first}, {second}
from datasette.plugins import pm
import datasette_llm
assert pm.is_registered(datasette_llm)
print(sorted(caller.name for caller in pm.get_hookcallers(datasette_llm)))
print(sorted(name for name in dir(pm.hook) if name.startswith(("llm_", "register_llm"))))
"""


def hooks_after_importing(first: str, second: str) -> str:
    code = HOOKS_OF_OUR_MODULE.format(first=first, second=second)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout


def test_import_order_does_not_change_which_hooks_are_registered() -> None:
    before = hooks_after_importing("datasette_llm", "datasette.app")
    after = hooks_after_importing("datasette.app", "datasette_llm")
    assert before == after
    assert "register_secrets" in before
    assert "'llm_default_model', 'llm_filter_models', 'llm_group_exit'" in before


DEPENDENT = """
from datasette import hookimpl
from datasette_llm import LLM, Purpose  # at import time, while Datasette loads its plugins

@hookimpl
def register_llm_purposes(datasette):
    return [Purpose("from-an-entry-point", owner="dependent")]
"""

LOADED = """
import asyncio, {first}, {second}
from datasette.app import Datasette
from datasette.plugins import pm
import datasette_llm
print(pm.has_plugin("dependent"), [p.name for p in datasette_llm.get_purposes(Datasette())])
"""


@pytest.mark.parametrize("first", ["datasette_llm", "datasette.app"])
def test_a_plugin_importing_datasette_llm_while_datasette_loads_plugins_works(
    tmp_path: Path, first: str
) -> None:
    (tmp_path / "dependent.py").write_text(DEPENDENT)
    info = tmp_path / "dependent-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dependent\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[datasette]\ndependent = dependent\n")
    second = "datasette.app" if first == "datasette_llm" else "datasette_llm"
    environment = {**os.environ, "PYTHONPATH": str(tmp_path)}
    output = subprocess.run(
        [sys.executable, "-c", LOADED.format(first=first, second=second)],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    ).stdout
    assert output.strip() == "True ['from-an-entry-point']"


def test_no_module_imports_datasette_plugins_when_it_is_imported() -> None:
    # Importing datasette.plugins (or datasette.app, datasette_secrets) loads every installed
    # plugin; __init__.py does it last, once every name is bound.
    loaders = ("datasette.app", "datasette.plugins", "datasette_secrets")
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(loaders), f"{path}:{node.lineno} imports {name}"


def test_public_names_are_sorted_in_dunder_all_and_exist() -> None:
    for name in datasette_llm.__all__:
        assert hasattr(datasette_llm, name), name
