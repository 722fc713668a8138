"""The root actor of ``datasette --root`` may do everything datasette-llm guards, and only then.

``routing.permissions.is_root`` is the one check: using a purpose (``llm-use``), changing the
routing (``llm-manage-routing``) and seeing the routing page (``llm-view-routing``) all let root
through there, even where ``permissions:`` grants the action only to someone else.
"""

from __future__ import annotations

import ast
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import pytest

import datasette_llm
from datasette_llm import Actor
from datasette_llm._operator.views import VIEW_ROUTING, can_view_routing
from datasette_llm.routing.permissions import MANAGE_ROUTING, USE, can_manage_routing, may_use
from datasette_llm.typing import Datasette
from tests.conftest import MakeDatasette

Gate = Callable[[Datasette, "Actor | None"], Awaitable[bool]]


async def uses(datasette: Datasette, actor: Actor | None) -> bool:
    return await may_use(datasette, actor, "enrichments")


GATES: Final[dict[str, Gate]] = {
    USE: uses,
    MANAGE_ROUTING: can_manage_routing,
    VIEW_ROUTING: can_view_routing,
}
ONLY_ALICE: Final[dict[str, Any]] = {
    "permissions": {action: {"id": "alice"} for action in GATES},
}


async def verdicts(datasette: Datasette, actor: Actor) -> dict[str, bool]:
    await datasette.invoke_startup()
    return {action: await gate(datasette, actor) for action, gate in GATES.items()}


@pytest.mark.parametrize(
    ("actor", "root_enabled", "allowed"),
    [
        ({"id": "root"}, True, True),
        ({"id": "root"}, False, False),
        ({"id": "root", "name": "Root"}, True, True),
        ({"id": "bob"}, True, False),
        ({"id": "alice"}, False, True),
    ],
)
async def test_every_guarded_action_lets_root_through_under_root_and_no_one_else(
    make_datasette: MakeDatasette, actor: Actor, root_enabled: bool, allowed: bool
) -> None:
    datasette = make_datasette({}, config=ONLY_ALICE)
    datasette.root_enabled = root_enabled
    assert await verdicts(datasette, actor) == dict.fromkeys(GATES, allowed)


def test_only_the_one_root_check_reads_whether_root_is_enabled() -> None:
    package = Path(datasette_llm.__file__).parent
    readers: list[str] = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if any(
                isinstance(node, ast.Attribute) and node.attr == "root_enabled"
                for node in ast.walk(function)
            ):
                readers.append(f"{path.relative_to(package)}:{function.name}")
    assert readers == ["routing/permissions.py:is_root"]
