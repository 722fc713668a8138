"""FakeModelRouter: routing runs for real and the chosen model answers from the script."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import llm
import pydantic
import pytest
from datasette import Response

from datasette_llm import LLM, Actor, Group, PromptResult, ProviderError, Purpose
from datasette_llm.testing import (
    FakeModelRouter,
    FakeReply,
    ModelCall,
    RealModelRequestError,
    ToolResultRecord,
    UnmatchedPromptError,
)
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin

pytestmark = pytest.mark.usefixtures("test_models")

CONFIG: dict[str, Any] = {
    "default_model": "gpt-not-installed",
    "purposes": {"summarize": {"model": {"model": "test-a", "options": {"temperature": 0.2}}}},
}


class Summary(pydantic.BaseModel):
    title: str
    tags: list[str]
    stars: int


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


# -- routing ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_records_the_resolution_step_of_each_routed_call(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(CONFIG)
    await (await LLM(datasette).model(purpose="summarize")).prompt("a")
    await (await LLM(datasette).model()).prompt("b")
    await (await LLM(datasette).model("test-b")).prompt("c")
    steps = [(call.prompt, call.model_id, call.step) for call in fake_model_router.calls]
    assert steps == [
        ("a", "test-a", "purpose_config"),
        ("b", "gpt-not-installed", "default_model"),
        ("c", "test-b", "explicit"),
    ]


@pytest.mark.asyncio
async def test_llm_default_model_hooks_still_choose_the_model(
    fake_model_router: FakeModelRouter,
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
) -> None:
    class Chooser:
        @hookimpl
        def llm_default_model(self, purpose: str | None) -> str | None:
            return "hooked-model" if purpose == "summarize" else None

    register_plugin(Chooser())
    model = await LLM(make_datasette(CONFIG)).model(purpose="summarize")
    await model.prompt("hi")
    call = fake_model_router.get_call()
    assert (call.model_id, call.step) == ("hooked-model", "hook")


@pytest.mark.asyncio
async def test_a_purpose_default_model_answers_even_when_not_installed(
    fake_model_router: FakeModelRouter,
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
) -> None:
    class Purposes:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [Purpose(name="tagging", default_model="claude-not-installed")]

    register_plugin(Purposes())
    model = await LLM(make_datasette({})).model(purpose="tagging")
    response = await model.prompt("tag this")
    assert await response.text() == "Fake reply from claude-not-installed to: tag this"
    assert fake_model_router.get_call().step == "purpose_default"


@pytest.mark.asyncio
async def test_an_installed_purpose_default_model_answers_without_its_key(
    fake_model_router: FakeModelRouter,
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
) -> None:
    class Purposes:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [Purpose(name="tagging", default_model="test-keyed")]

    register_plugin(Purposes())
    model = await LLM(make_datasette({})).model(purpose="tagging")
    assert (model.model_id, model.resolution.step) == ("test-keyed", "purpose_default")


@pytest.mark.asyncio
async def test_a_keyed_model_answers_without_a_key(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    model = await LLM(make_datasette({"default_model": "test-keyed"})).model()
    assert model.resolution.key.source == "not_needed"
    assert await (await model.prompt("hi")).text() == "Fake reply from test-keyed to: hi"


@pytest.mark.asyncio
async def test_blocked_models_stay_blocked(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette({"default_model": "test-a", "blocked_models": ["test-a"]})
    with pytest.raises(Exception, match="blocked_models"):
        await LLM(datasette).model()
    assert fake_model_router.calls == ()


# -- what is recorded --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_records_prompt_system_options_schema_actor_and_stream(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    model = await LLM(make_datasette(CONFIG)).model(purpose="summarize", actor={"id": "ana"})
    await model.prompt("Summarize", system="Be brief", schema=Summary, stream=False)
    assert fake_model_router.get_call() == ModelCall(
        purpose="summarize",
        model_id="test-a",
        step="purpose_config",
        prompt="Summarize",
        system="Be brief",
        options={"temperature": 0.2},
        schema=Summary.model_json_schema(),
        tools=(),
        tool_results=(),
        attachments=(),
        actor={"id": "ana"},
        group=None,
        streamed=False,
        attempt=1,
        error=None,
    )


@pytest.mark.asyncio
async def test_records_are_frozen_copies(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    actor: dict[str, object] = {"id": "ana"}
    model = await LLM(make_datasette(CONFIG)).model(actor=actor)
    await model.prompt("hi")
    actor["id"] = "changed"
    call = fake_model_router.get_call()
    assert call.actor == {"id": "ana"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.prompt = "other"  # type: ignore[misc]  # proving the record is frozen


@pytest.mark.asyncio
async def test_an_installed_model_keeps_its_option_validation(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    model = await LLM(make_datasette(CONFIG)).model("test-a")
    with pytest.raises(pydantic.ValidationError, match="no_such_option"):
        await model.prompt("hi", no_such_option=1)


@pytest.mark.asyncio
async def test_a_model_that_is_not_installed_accepts_any_option(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    model = await LLM(make_datasette(CONFIG)).model()
    await model.prompt("hi", reasoning_effort="low")
    assert fake_model_router.get_call().options == {"reasoning_effort": "low"}


@pytest.mark.asyncio
async def test_get_calls_filters_by_purpose_model_and_prompt(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(CONFIG)
    for text in ("one", "two"):
        await (await LLM(datasette).model(purpose="summarize")).prompt(text)
    await (await LLM(datasette).model()).prompt("three")
    assert [c.prompt for c in fake_model_router.get_calls(purpose="summarize")] == ["one", "two"]
    assert [c.prompt for c in fake_model_router.get_calls(model_id="gpt-not-installed")] == [
        "three"
    ]
    assert fake_model_router.get_call(prompt=re.compile("^t[wh]o")).prompt == "two"
    assert len(fake_model_router.get_calls()) == 3


@pytest.mark.asyncio
async def test_get_call_fails_unless_exactly_one_call_matches(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(CONFIG)
    for text in ("one", "two"):
        await (await LLM(datasette).model(purpose="summarize")).prompt(text)
    with pytest.raises(AssertionError) as error:
        fake_model_router.get_call(purpose="summarize")
    assert str(error.value) == (
        "Expected exactly one call matching purpose='summarize', found 2. Calls recorded:\n"
        "  - purpose='summarize', model_id='test-a', prompt='one'\n"
        "  - purpose='summarize', model_id='test-a', prompt='two'"
    )


@pytest.mark.asyncio
async def test_repr_counts_calls_and_unused_replies(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    assert repr(fake_model_router) == "<FakeModelRouter: 0 calls, no scripted replies>"
    fake_model_router.add_response(text="one")
    fake_model_router.add_response(text="two", is_optional=True)
    await (await LLM(make_datasette(CONFIG)).model()).prompt("hi")
    assert repr(fake_model_router) == "<FakeModelRouter: 1 call, 2 scripted replies (1 unused)>"


# -- replies -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_default_reply_names_the_model_and_prompt(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    response = await (await LLM(make_datasette(CONFIG)).model()).prompt("hello there")
    assert await response.text() == "Fake reply from gpt-not-installed to: hello there"
    usage = await response.usage()
    assert (usage.input, usage.output) == (2, 7)


@pytest.mark.asyncio
async def test_default_reply_to_a_schema_prompt_validates_against_it(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    model = await LLM(make_datasette(CONFIG)).model()
    response = await model.prompt("Summarize", schema=Summary)
    assert Summary.model_validate_json(await response.text()) == Summary(
        title="example", tags=["example"], stars=0
    )


@pytest.mark.asyncio
async def test_scripted_replies_stream_as_chunks_with_usage(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_response(chunks=["Hel", "lo"], usage=(10, 2))
    response = await (await LLM(make_datasette(CONFIG)).model()).prompt("hi")
    assert [chunk async for chunk in response] == ["Hel", "lo"]
    usage = await response.usage()
    assert (usage.input, usage.output) == (10, 2)


@pytest.mark.asyncio
async def test_json_reply_is_sent_as_json_text(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_response(json={"title": "T", "tags": [], "stars": 5})
    response = await (await LLM(make_datasette(CONFIG)).model()).prompt("x", schema=Summary)
    assert json.loads(await response.text()) == {"title": "T", "tags": [], "stars": 5}


@pytest.mark.asyncio
async def test_first_unused_matching_reply_wins(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_response(text="other purpose", purpose="other", is_optional=True)
    fake_model_router.add_response(text="first")
    fake_model_router.add_response(text="second")
    model = await LLM(make_datasette(CONFIG)).model(purpose="summarize")
    texts = [await (await model.prompt(p)).text() for p in ("a", "b")]
    assert texts == ["first", "second"]


@pytest.mark.asyncio
async def test_a_reusable_reply_answers_every_matching_call(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_response(text="again", is_reusable=True)
    model = await LLM(make_datasette(CONFIG)).model()
    texts = [await (await model.prompt(p)).text() for p in ("a", "b", "c")]
    assert texts == ["again", "again", "again"]


@pytest.mark.asyncio
async def test_prompt_matchers_exact_pattern_and_callable(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_response(text="exact", prompt="hi")
    fake_model_router.add_response(text="pattern", prompt=re.compile(r"\d+"))
    fake_model_router.add_response(text="callable", prompt=lambda text: text.isupper())
    model = await LLM(make_datasette(CONFIG)).model()
    texts = [await (await model.prompt(p)).text() for p in ("SHOUT", "row 12", "hi")]
    assert texts == ["callable", "pattern", "exact"]


@pytest.mark.asyncio
async def test_purpose_and_model_id_matchers(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_response(text="by model", model_id="gpt-not-installed")
    fake_model_router.add_response(text="by purpose", purpose=Purpose(name="summarize"))
    datasette = make_datasette(CONFIG)
    summarize = await LLM(datasette).model(purpose="summarize")
    default = await LLM(datasette).model()
    assert await (await summarize.prompt("x")).text() == "by purpose"
    assert await (await default.prompt("x")).text() == "by model"


@pytest.mark.asyncio
async def test_callback_computes_the_reply_from_the_call(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    async def shout(call: ModelCall) -> FakeReply:
        return FakeReply(text=call.prompt.upper(), usage=(1, 1))

    fake_model_router.add_callback(lambda call: f"{call.purpose}: {call.prompt}")
    fake_model_router.add_callback(shout)
    model = await LLM(make_datasette(CONFIG)).model(purpose="summarize")
    assert await (await model.prompt("quiet")).text() == "summarize: quiet"
    assert await (await model.prompt("quiet")).text() == "QUIET"


@pytest.mark.asyncio
async def test_scripted_exception_comes_out_of_the_prompt(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(TimeoutError("provider timed out"))
    model = await LLM(make_datasette(CONFIG)).model()
    with pytest.raises(ProviderError, match="provider timed out") as raised:
        await model.prompt("hi")
    assert raised.value.kind == "timeout"
    assert isinstance(raised.value.__cause__, TimeoutError)


def test_a_reply_takes_one_kind_of_content() -> None:
    with pytest.raises(ValueError) as error:
        FakeReply(text="a", json={"a": 1})
    assert str(error.value) == (
        "A reply takes one of text=, chunks= or json=, got text and json: pass chunks=[...] to "
        "stream several pieces, or json= for structured output."
    )
    with pytest.raises(ValueError, match="A reply needs content"):
        FakeReply()


def test_matchers_are_checked_when_added() -> None:
    router = FakeModelRouter()
    with pytest.raises(TypeError, match="prompt= must be a string"):
        router.add_response(text="x", prompt=42)  # type: ignore[arg-type]  # a wrong matcher
    with pytest.raises(TypeError, match="usage= must be a tuple"):
        router.add_response(text="x", usage=[1, 2])  # type: ignore[arg-type]  # a list


# -- groups, conversations, chains, hooks --------------------------------------------------


@pytest.mark.asyncio
async def test_group_prompts_share_a_group_number_and_group_exit_runs(
    fake_model_router: FakeModelRouter,
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
) -> None:
    exited: list[Group] = []

    class Exit:
        @hookimpl
        def llm_group_exit(self, group: Group) -> None:
            exited.append(group)

    register_plugin(Exit())
    datasette = make_datasette(CONFIG)
    for batch in (["a", "b"], ["c"]):
        async with LLM(datasette).group(purpose="summarize") as model:
            for text in batch:
                await model.prompt(text)
    assert [(c.prompt, c.group) for c in fake_model_router.calls] == [
        ("a", 1),
        ("b", 1),
        ("c", 2),
    ]
    assert len(exited) == 2


@pytest.mark.asyncio
async def test_prompt_context_hooks_run_around_fake_prompts(
    fake_model_router: FakeModelRouter,
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
) -> None:
    seen: list[int | None] = []

    class Budget:
        @hookimpl
        def llm_prompt_context(
            self, purpose: str | None, actor: Actor | None
        ) -> Callable[[PromptResult], AbstractAsyncContextManager[None]]:
            @asynccontextmanager
            async def around(result: PromptResult) -> AsyncIterator[None]:
                if actor is None:
                    raise PermissionError("sign in to use models")
                yield
                assert result.response is not None
                seen.append((await result.response.usage()).output)

            return around

    register_plugin(Budget())
    datasette = make_datasette(CONFIG)
    fake_model_router.add_response(text="three words here", usage=(4, 3))
    await (await LLM(datasette).model(actor={"id": "ana"})).prompt("hi")
    with pytest.raises(PermissionError):
        await (await LLM(datasette).model()).prompt("refused")
    assert seen == [3]
    assert [call.prompt for call in fake_model_router.calls] == ["hi"]


@pytest.mark.asyncio
async def test_conversation_prompts_are_each_recorded(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    conversation = (await LLM(make_datasette(CONFIG)).model(purpose="summarize")).conversation()
    await conversation.prompt("first")
    response = await conversation.prompt("second")
    assert await response.text() == "Fake reply from test-a to: second"
    assert [(c.prompt, c.purpose) for c in fake_model_router.calls] == [
        ("first", "summarize"),
        ("second", "summarize"),
    ]


@pytest.mark.asyncio
async def test_scripted_tool_calls_make_the_chain_call_the_tools_and_come_back(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_response(
        tool_calls=[llm.ToolCall(name="add", arguments={"a": 1, "b": 2})]
    )
    fake_model_router.add_response(text="1 + 2 = 3")
    model = await LLM(make_datasette(CONFIG)).model(purpose="summarize")
    chain = model.chain("Add 1 and 2", tools=[add])
    assert await chain.text() == "1 + 2 = 3"
    first, second = fake_model_router.calls
    assert (first.prompt, first.tools, first.tool_results) == ("Add 1 and 2", ("add",), ())
    assert (second.prompt, second.step, second.tool_results) == (
        "",
        "purpose_config",
        (ToolResultRecord(name="add", output="3", tool_call_id="call-1"),),
    )


# -- requests, isolation -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_prompts_made_inside_a_request_are_recorded_with_the_actor(
    fake_model_router: FakeModelRouter,
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
) -> None:
    async def summarize(datasette: Datasette, request: Any) -> Response:
        model = await LLM(datasette).model(purpose="summarize", actor=request.actor)
        response = await model.prompt(request.args.get("q", ""))
        return Response.json({"summary": await response.text()})

    class Routes:
        @hookimpl
        def register_routes(self) -> list[tuple[str, Any]]:
            return [(r"^/-/summarize$", summarize)]

    register_plugin(Routes())
    fake_model_router.add_response(text="Short.", purpose="summarize")
    datasette = make_datasette(CONFIG)
    cookies = {"ds_actor": datasette.client.actor_cookie({"id": "ana"})}
    response = await datasette.client.get("/-/summarize?q=Long+text", cookies=cookies)
    assert response.json() == {"summary": "Short."}
    assert fake_model_router.get_call().actor == {"id": "ana"}


@pytest.mark.asyncio
async def test_real_models_are_blocked_and_reported_when_the_router_stops() -> None:
    with pytest.raises(AssertionError) as stopped:
        with FakeModelRouter():
            with pytest.raises(RealModelRequestError) as blocked:
                await llm.get_async_model("test-a").prompt("hi").text()
    assert str(blocked.value).startswith(
        "FakeModelRouter blocked a request to the real model 'test-a' (FreeModel): no prompt "
        "may reach a real model while the router is active."
    )
    assert str(stopped.value) == (
        "FakeModelRouter: 1 request to a real model was blocked:\n  - 'test-a' (FreeModel)"
    )


@pytest.mark.asyncio
async def test_everything_is_restored_when_the_router_stops(make_datasette: MakeDatasette) -> None:
    with FakeModelRouter():
        pass
    assert await llm.get_async_model("test-a").prompt("hi").text() == "test-a:hi"
    model = await LLM(make_datasette({"default_model": "test-a"})).model()
    assert await (await model.prompt("hi")).text() == "test-a:hi"


def test_only_one_router_can_be_active() -> None:
    with FakeModelRouter(), pytest.raises(RuntimeError, match="already active"):
        with FakeModelRouter():
            pass


@pytest.mark.asyncio
async def test_unmatched_prompt_lists_every_scripted_reply(
    make_datasette: MakeDatasette,
) -> None:
    router = FakeModelRouter(assert_all_prompts_matched=False, assert_all_replies_used=False)
    with router:
        router.add_response(text="a", purpose="other")
        router.add_response(text="b", prompt=re.compile("^Tag"))
        model = await LLM(make_datasette(CONFIG)).model(purpose="summarize")
        with pytest.raises(UnmatchedPromptError) as error:
            await model.prompt("Summarize this")
    assert str(error.value) == (
        "No scripted reply matches this call: purpose='summarize', model_id='test-a', "
        "prompt='Summarize this'\n"
        "Scripted replies:\n"
        "  1. add_response(text='a', purpose='other') - purpose is 'summarize', not 'other'\n"
        "  2. add_response(text='b', prompt=re.compile('^Tag')) - prompt does not match "
        "re.compile('^Tag')\n"
        "Add a reply for this call, e.g. router.add_response(text='...', purpose='summarize', "
        "model_id='test-a')."
    )
