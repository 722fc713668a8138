"""Why a model is refused: the policy decides the kind and the reason, and everyone reads them.

``routing.policy.screen`` gives each refused model a ``Refusal`` (its ``RefusalKind`` and its
reason). A prompt falling back skips a fallback for that reason; the routing page, ``datasette
llm check`` and its warnings show the same reason under the same kind, never working it out
again. One purpose here has a fallback refused for every kind there is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import llm
import pytest

from datasette_llm import LLM, Actor, Purpose, Requirements
from datasette_llm.routing.policy import REFUSAL_KINDS
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import FreeModel, KeyedModel, ServerErrorModel, SyncStub
from tests.recorder import Recorder

pytestmark = pytest.mark.usefixtures("test_models")

AGENT: Final = Purpose("agent", owner="tests", requires=Requirements(tools=True))
CONFIG: Final[dict[str, Any]] = {
    "retries": 0,
    "models": ["tool-down", "test-a", "tool-keyed", "tool-filtered", "tool-ok", "test-c"],
    "blocked_models": ["test-c"],
    "purposes": {
        "agent": {
            "model": "tool-down",
            "fallbacks": ["test-c", "test-b", "test-a", "tool-keyed", "tool-filtered", "tool-ok"],
        }
    },
}
# Each fallback, and the kind of refusal it meets: every kind the policy has, then one admitted.
EXPECTED: Final = [
    ("tool-down", None),
    ("test-c", "blocked"),
    ("test-b", "not_allowed"),
    ("test-a", "lacks_requirement"),
    ("tool-keyed", "keyless"),
    ("tool-filtered", "filtered"),
    ("tool-ok", None),
]


class Tools(FreeModel):
    """A keyless model that supports tool calls."""

    supports_tools = True


class ToolsDown(ServerErrorModel, Tools):
    """A keyless model that supports tool calls, whose provider fails with a server error."""


class ToolsKeyed(KeyedModel):
    """A model that supports tool calls and needs a key for provider ``testprov``."""

    supports_tools = True


class ToolModels:
    __test__ = False

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        register(SyncStub("tool-down"), ToolsDown("tool-down"))
        register(SyncStub("tool-filtered"), Tools("tool-filtered"))
        register(SyncStub("tool-ok"), Tools("tool-ok"))
        register(SyncStub("tool-keyed", "testprov"), ToolsKeyed("tool-keyed"))


class Declares:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return [AGENT]


class Removes:
    @hookimpl
    def llm_filter_models(
        self, models: list[llm.AsyncModel], actor: Actor | None, purpose: str | None
    ) -> list[llm.AsyncModel]:
        return [model for model in models if model.model_id != "tool-filtered"]


@pytest.fixture(autouse=True)
def tool_models(register_plugin: RegisterPlugin) -> Iterator[None]:
    register_plugin(Declares())
    register_plugin(Removes(), name="removes-tool-filtered")
    llm.plugins.pm.register(ToolModels(), name="datasette-llm-test-tool-models")
    try:
        yield
    finally:
        llm.plugins.pm.unregister(name="datasette-llm-test-tool-models")


async def chain_on_the_page(datasette: Datasette) -> list[dict[str, Any]]:
    datasette.root_enabled = True
    cookies = {"ds_actor": datasette.client.actor_cookie({"id": "root"})}
    data = (await datasette.client.get("/-/llm.json", cookies=cookies)).json()
    [agent] = [purpose for purpose in data["purposes"] if purpose["name"] == "agent"]
    links: list[dict[str, Any]] = agent["chain"]["models"]
    return links


async def skipped_by_a_prompt(datasette: Datasette, register_plugin: RegisterPlugin) -> list[str]:
    recorder = Recorder()
    register_plugin(recorder)
    model = await LLM(datasette).model(purpose="agent")
    response = await model.prompt("hi")
    assert await response.text() == "tool-ok:hi"
    return recorder.results[0].skipped


async def test_the_page_shows_each_refused_fallback_under_the_kind_the_policy_gave(
    make_datasette: MakeDatasette,
) -> None:
    links = await chain_on_the_page(make_datasette(CONFIG))
    assert [(link["model_id"], link["refused_as"]) for link in links] == EXPECTED


def test_every_kind_of_refusal_the_policy_has_is_met_here() -> None:
    # A check added to the policy adds a kind: give it a fallback above, so that the page
    # and routing are compared for it too.
    assert [kind for _, kind in EXPECTED if kind is not None] == list(REFUSAL_KINDS)


async def test_a_prompt_skips_each_refused_fallback_for_the_reason_the_page_shows(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    datasette = make_datasette(CONFIG)
    links = await chain_on_the_page(datasette)
    shown = [
        f"fallback {link['model_id']!r} skipped because {link['refusal']}"
        for link in links
        if link["refused_as"] is not None
    ]
    assert await skipped_by_a_prompt(datasette, register_plugin) == shown
    assert shown[0] == "fallback 'test-c' skipped because it is in blocked_models"
    assert shown[-1] == (
        "fallback 'tool-filtered' skipped because llm_filter_models in plugin "
        "'removes-tool-filtered' removed it"
    )
