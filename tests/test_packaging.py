"""Packaging and plugin registration: entry point, /-/plugins.json, import order, hookspecs."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

from datasette.app import Datasette

import datasette_llm


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


def test_importing_the_package_does_not_import_llm() -> None:
    code = "import sys, datasette_llm; print('llm' in sys.modules)"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "False"


def test_public_names_are_sorted_in_dunder_all_and_exist() -> None:
    for name in datasette_llm.__all__:
        assert hasattr(datasette_llm, name), name
