"""FakeModelRouter: a fake model answers only while the router that made it is active."""

from __future__ import annotations

from typing import Any

import pytest
from datasette import Response

from datasette_llm import LLM, WrappedAsyncModel
from datasette_llm.testing import FakeModelRouter, RouterStoppedError
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin

pytestmark = pytest.mark.usefixtures("test_models")

CONFIG: dict[str, Any] = {"purposes": {"summarize": {"model": "test-a"}}}

STOPPED = (
    "The fake model 'test-a' was prompted after the FakeModelRouter that made it stopped: a "
    "model obtained while the router was active (LLM(datasette).model(...) or .group(...)) "
    "answers only until the router stops. Nothing was sent to a real model and nothing was "
    "recorded. Prompt it inside the router's scope (the test that uses the fake_model_router "
    "fixture, or the `with FakeModelRouter():` block), or obtain the model again after the "
    "router has stopped to get the real one."
)


@pytest.mark.asyncio
async def test_a_model_obtained_while_active_refuses_to_answer_after_the_router_stops(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(CONFIG)
    with FakeModelRouter() as router:
        model = await LLM(datasette).model(purpose="summarize")
        assert await (await model.prompt("inside")).text() == "Fake reply from test-a to: inside"
    with pytest.raises(RouterStoppedError) as error:
        await (await model.prompt("after")).text()
    assert str(error.value) == STOPPED
    assert [call.prompt for call in router.calls] == ["inside"]
    assert router.unmet_expectations() is None


@pytest.mark.asyncio
async def test_conversations_and_chains_begun_while_active_refuse_after_the_router_stops(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(CONFIG)
    with FakeModelRouter() as router:
        model = await LLM(datasette).model(purpose="summarize")
        conversation = model.conversation()
        await (await conversation.prompt("first")).text()
    with pytest.raises(RouterStoppedError) as in_conversation:
        await (await conversation.prompt("second")).text()
    with pytest.raises(RouterStoppedError) as in_chain:
        await model.chain("a chain").text()
    assert str(in_conversation.value) == str(in_chain.value) == STOPPED
    assert [call.prompt for call in router.calls] == ["first"]


@pytest.mark.asyncio
async def test_a_model_a_plugin_keeps_across_requests_refuses_after_the_router_stops(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    kept: list[WrappedAsyncModel] = []

    async def summarize(datasette: Datasette, request: Any) -> Response:
        if not kept:  # the bug under test: a model cached for the life of the process
            kept.append(await LLM(datasette).model(purpose="summarize"))
        try:
            text = await (await kept[0].prompt(request.args["q"])).text()
        except RouterStoppedError as error:
            return Response.json({"error": str(error)}, status=500)
        return Response.json({"summary": text})

    class Routes:
        @hookimpl
        def register_routes(self) -> list[tuple[str, Any]]:
            return [(r"^/-/summarize$", summarize)]

    register_plugin(Routes())
    datasette = make_datasette(CONFIG)
    with FakeModelRouter() as router:
        router.add_response(text="Short.", purpose="summarize")
        inside = await datasette.client.get("/-/summarize?q=Long+text")
    after = await datasette.client.get("/-/summarize?q=More+text")
    assert inside.json() == {"summary": "Short."}
    assert (after.status_code, after.json()) == (500, {"error": STOPPED})
    assert len(router.calls) == 1


@pytest.mark.asyncio
async def test_a_model_from_an_earlier_activation_stays_stopped_when_the_router_restarts(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(CONFIG)
    router = FakeModelRouter()
    router.start()
    earlier = await LLM(datasette).model(purpose="summarize")
    router.stop()
    router.start()
    try:
        with pytest.raises(RouterStoppedError):
            await (await earlier.prompt("stale")).text()
        current = await LLM(datasette).model(purpose="summarize")
        assert await (await current.prompt("fresh")).text() == "Fake reply from test-a to: fresh"
    finally:
        router.stop()
    assert [call.prompt for call in router.calls] == ["fresh"]


@pytest.mark.asyncio
async def test_obtaining_the_model_again_after_the_router_stops_gives_the_real_model(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(CONFIG)
    with FakeModelRouter():
        await LLM(datasette).model(purpose="summarize")
    model = await LLM(datasette).model(purpose="summarize")
    assert await (await model.prompt("hi")).text() == "test-a:hi"
