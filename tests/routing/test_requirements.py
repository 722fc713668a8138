"""What a call requires of a model: its purpose's requirements and its own, alike on every path.

``routing.route.requirements_for`` is the one place that works them out. A purpose given by name
requires what its registered ``Purpose`` requires, so the ``Purpose`` and its name must route,
list and fall back the same way through ``model()`` (with and without an explicit id),
``group()``, ``models()``, ``resolve()``, the routing page and the routing form.

The models: ``test-eyes`` reads PNG images and answers; ``test-eyes-down`` reads them too but
its provider fails with a server error; ``test-a`` (``tests/llm_models.py``) reads no image.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

import llm
import pytest

from datasette_llm import LLM, Purpose, Requirements
from datasette_llm.routing.route import requirements_for
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import FreeModel, ServerErrorModel, SyncStub
from tests.recorder import Recorder

pytestmark = pytest.mark.usefixtures("test_models")

PNG: Final = Requirements(attachment_types={"image/png"})
ENRICH: Final = Purpose("enrich", owner="tests", requires=PNG)
CONFIG: Final[dict[str, Any]] = {
    "retries": 0,
    "purposes": {"enrich": {"model": "test-eyes-down", "fallbacks": ["test-a", "test-eyes"]}},
}


class Eyes(FreeModel):
    """A keyless model that reads PNG images."""

    attachment_types = frozenset({"image/png"})


class EyesDown(ServerErrorModel, Eyes):
    """A keyless model that reads PNG images, whose provider fails with a server error."""


class EyesPlugin:
    __test__ = False

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        register(SyncStub("test-eyes"), Eyes("test-eyes"))
        register(SyncStub("test-eyes-down"), EyesDown("test-eyes-down"))


class Declares:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return [ENRICH]


@pytest.fixture(autouse=True)
def eyes(register_plugin: RegisterPlugin) -> Iterator[None]:
    register_plugin(Declares())
    llm.plugins.pm.register(EyesPlugin(), name="datasette-llm-test-eyes")
    try:
        yield
    finally:
        llm.plugins.pm.unregister(name="datasette-llm-test-eyes")


async def answer(client: LLM, model_id: str | None, purpose: str | Purpose) -> str:
    model = await client.model(model_id, purpose=purpose)
    response = await model.prompt("hi")
    return await response.text()


async def answer_in_group(client: LLM, model_id: str | None, purpose: str | Purpose) -> str:
    async with client.group(model_id, purpose=purpose) as model:
        response = await model.prompt("hi")
        return await response.text()


async def every_path(datasette: Datasette, purpose: str | Purpose) -> dict[str, object]:
    """What each way of asking for ``purpose`` gives: models, resolutions, and who answers."""
    client = LLM(datasette)
    seen: dict[str, object] = {
        "requires": requirements_for(datasette, purpose),
        "models": [model.model_id for model in await client.models(purpose=purpose)],
        "resolve": await client.resolve(purpose=purpose),
        "resolve explicit": await client.resolve("test-eyes-down", purpose=purpose),
    }
    for explicit in (None, "test-eyes-down"):
        seen[f"model {explicit}"] = await answer(client, explicit, purpose)
        seen[f"group {explicit}"] = await answer_in_group(client, explicit, purpose)
    return seen


async def test_a_purpose_and_its_name_route_list_and_fall_back_alike_on_every_path(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(CONFIG)
    by_purpose = await every_path(datasette, ENRICH)
    assert await every_path(datasette, "enrich") == by_purpose
    assert by_purpose["requires"] == PNG
    assert "test-a" not in by_purpose["models"]  # type: ignore[operator]
    # The routed model fails; test-a reads no image, so the prompt goes on to test-eyes.
    for path in ("model None", "model test-eyes-down", "group None", "group test-eyes-down"):
        assert by_purpose[path] == "test-eyes:hi", path


async def test_an_explicit_model_id_named_with_the_purposes_name_skips_an_incapable_fallback(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    recorder = Recorder()
    register_plugin(recorder)
    model = await LLM(make_datasette(CONFIG)).model("test-eyes-down", purpose="enrich")
    response = await model.prompt("hi")
    assert await response.text() == "test-eyes:hi"
    assert recorder.results[0].skipped == [
        "fallback 'test-a' skipped because it does not support attachments of type image/png, "
        "which the call requires"
    ]


async def test_a_calls_own_requirements_add_to_the_purposes_by_name_and_by_purpose(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(CONFIG)
    tools = Requirements(tools=True)
    both = Requirements(tools=True, attachment_types={"image/png"})
    assert requirements_for(datasette, "enrich", tools) == both
    assert requirements_for(datasette, ENRICH, tools) == both
    assert requirements_for(datasette, "not-registered", tools) == tools
    assert requirements_for(datasette, None) == Requirements()


async def test_the_routing_page_and_the_routing_form_ask_the_same_requirements(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(CONFIG)
    datasette.root_enabled = True
    cookies = {"ds_actor": datasette.client.actor_cookie({"id": "root"})}
    data = (await datasette.client.get("/-/llm.json", cookies=cookies)).json()
    [enrich] = [purpose for purpose in data["purposes"] if purpose["name"] == "enrich"]
    assert enrich["requires"] == PNG.names()
    refused = {link["model_id"]: link["refused_as"] for link in enrich["chain"]["models"]}
    assert refused == {"test-eyes-down": None, "test-a": "lacks_requirement", "test-eyes": None}
    html = (await datasette.client.get("/-/llm", cookies=cookies)).text
    form = re.search(r'action="/-/llm/purposes/enrich".*?</select>', html, re.DOTALL)
    assert form is not None
    offered = re.findall(r'<option value="([^"]+)"', form.group())
    assert "test-eyes" in offered and "test-eyes-down" in offered
    assert "test-a" not in offered
