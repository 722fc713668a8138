"""The wrapped model: prompts, options, conversations, chains and the prompt-context hook."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import llm
import pytest

from datasette_llm import LLM, Actor, PromptResult, WrappedAsyncModel
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin

pytestmark = pytest.mark.usefixtures("test_models")

Factory = Callable[[PromptResult], AbstractAsyncContextManager[object]]


class Recorder:
    """An llm_prompt_context plugin recording what it sees."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.events: list[str] = []
        self.results: list[PromptResult] = []
        self.calls: list[dict[str, Any]] = []
        self.done: list[str] = []

    @hookimpl
    def llm_prompt_context(
        self, model_id: str, prompt: str, purpose: str | None, actor: Actor | None
    ) -> Factory:
        self.calls.append(
            {"model_id": model_id, "prompt": prompt, "purpose": purpose, "actor": actor}
        )

        @asynccontextmanager
        async def around(result: PromptResult) -> AsyncIterator[None]:
            self.events.append("enter")
            if self.refuse:
                raise PermissionError("budget exhausted")
            self.results.append(result)

            async def done(response: llm.AsyncResponse) -> None:
                self.done.append(await response.text())

            await result.on_response_done(done)
            yield
            self.events.append("exit")

        return around


async def echo_model(make_datasette: MakeDatasette, **config: Any) -> WrappedAsyncModel:
    return await LLM(make_datasette({"default_model": "echo", **config})).model(purpose="p")


async def test_prompt_returns_llms_completed_async_response(make_datasette: MakeDatasette) -> None:
    model = await echo_model(make_datasette)
    response = await model.prompt("hello", system="be brief")
    assert isinstance(response, llm.AsyncResponse)
    body = json.loads(await response.text())
    assert (body["prompt"], body["system"]) == ("hello", "be brief")
    chunks = [chunk async for chunk in response]
    assert "".join(chunks) == await response.text()
    assert (await response.usage()).input is not None
    assert response.to_dict()["model"] == "echo"


async def test_wrapped_model_exposes_model_id_purpose_and_underlying_model(
    make_datasette: MakeDatasette,
) -> None:
    model = await echo_model(make_datasette)
    assert (model.model_id, model.purpose) == ("echo", "p")
    assert getattr(model, "_model", model).model_id == "echo"
    assert isinstance(model._model, llm.AsyncModel)
    assert (await LLM(make_datasette()).model("echo")).purpose is None


async def test_configured_options_are_merged_and_the_callers_win(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(
        {
            "purposes": {
                "p": {
                    "model": {"model": "test-a", "options": {"temperature": 0.5, "style": "terse"}}
                }
            }
        }
    )
    model = await LLM(datasette).model(purpose="p")
    text = await (await model.prompt("x", style="long")).text()
    assert "options=[('style', 'long'), ('temperature', 0.5)]" in text


async def test_prompt_model_id_positionally_or_by_keyword(make_datasette: MakeDatasette) -> None:
    datasette = make_datasette()
    assert (await LLM(datasette).model("test-a")).model_id == "test-a"
    assert (await LLM(datasette).model(model_id="test-b")).model_id == "test-b"


async def test_hook_llm_prompt_context_wraps_the_prompt_and_sees_the_response(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    recorder = register_plugin(Recorder(), name="recorder")
    assert isinstance(recorder, Recorder)
    actor = {"id": "ann"}
    model = await LLM(make_datasette({"default_model": "test-a"})).model(purpose="p", actor=actor)
    response = await model.prompt("hi")
    assert recorder.events == ["enter", "exit"]
    assert recorder.calls == [
        {"model_id": "test-a", "prompt": "hi", "purpose": "p", "actor": actor}
    ]
    [result] = recorder.results
    assert result.response is response and result.responses == [response]
    assert (result.purpose, result.group, result.is_chain) == ("p", None, False)
    assert recorder.done == ["test-a:hi"]


async def test_hook_llm_prompt_context_refusing_before_yield_raises_unchanged(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    register_plugin(Recorder(refuse=True), name="refuser")
    model = await LLM(make_datasette()).model("test-a")
    with pytest.raises(PermissionError, match="budget exhausted"):
        await model.prompt("hi")


async def test_conversation_prompts_run_the_hooks_each_time(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    recorder = register_plugin(Recorder(), name="recorder")
    assert isinstance(recorder, Recorder)
    model = await echo_model(make_datasette)
    conversation = model.conversation()
    await conversation.prompt("one")
    second = await conversation.prompt("two")
    assert [call["prompt"] for call in recorder.calls] == ["one", "two"]
    assert len(json.loads(await second.text())["previous"]) == 1


def tool_prompt(*calls: dict[str, Any]) -> str:
    return json.dumps({"prompt": "use tools", "tool_calls": list(calls)})


async def test_chain_calls_tools_and_yields_raw_responses_once(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    recorder = register_plugin(Recorder(), name="recorder")
    assert isinstance(recorder, Recorder)
    called: list[int] = []

    def add(a: int, b: int) -> int:
        called.append(a + b)
        return a + b

    model = await echo_model(make_datasette)
    chain = model.chain(tool_prompt({"name": "add", "arguments": {"a": 2, "b": 3}}), tools=[add])
    responses = [response async for response in chain.responses()]
    assert called == [5]
    assert len(responses) == 2 and all(isinstance(r, llm.AsyncResponse) for r in responses)
    [result] = recorder.results
    assert result.is_chain and result.chain_complete
    assert result.responses == responses
    assert len(recorder.done) == 2  # on_response_done fired for the later step too
    assert recorder.events == ["enter", "exit"]
    with pytest.raises(RuntimeError, match="can only be iterated once"):
        async for _ in chain.responses():
            pass


async def test_chain_text_and_streaming_go_through_the_hooks(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    recorder = register_plugin(Recorder(), name="recorder")
    assert isinstance(recorder, Recorder)
    model = await echo_model(make_datasette)
    text = await model.chain("plain", system="s").text()
    assert json.loads(text)["prompt"] == "plain"
    streamed = "".join([chunk async for chunk in model.chain("streamed")])
    assert json.loads(streamed)["prompt"] == "streamed"
    assert recorder.events == ["enter", "exit", "enter", "exit"]


async def test_chain_other_attributes_fall_through_to_llms_chain(
    make_datasette: MakeDatasette,
) -> None:
    model = await echo_model(make_datasette)
    chain = model.chain("x", options={"example_bool": True})
    assert chain.chain_limit is None or isinstance(chain.chain_limit, int)
    assert chain.prompt.prompt == "x"
    assert json.loads(await chain.text())["options"] == {"example_bool": True}


async def test_chain_merges_configured_options_into_options(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(
        {"default_model": {"model": "echo", "options": {"example_bool": True, "thinking": False}}}
    )
    model = await LLM(datasette).model()
    chain = model.chain("x", options={"thinking": True})
    assert chain.prompt.options.model_dump(exclude_none=True) == {
        "example_bool": True,
        "thinking": True,
    }


async def test_pause_chain_raised_by_a_tool_passes_through_untouched(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    recorder = register_plugin(Recorder(), name="recorder")
    assert isinstance(recorder, Recorder)

    class NeedsApproval(llm.PauseChain):
        pass

    def dangerous() -> str:
        raise NeedsApproval("ask a human first")

    model = await echo_model(make_datasette)
    chain = model.chain(tool_prompt({"name": "dangerous", "arguments": {}}), tools=[dangerous])
    with pytest.raises(NeedsApproval, match="ask a human first"):
        async for _ in chain.responses():
            pass
    assert recorder.events == ["enter"]  # left through the exception, not the normal exit
    assert recorder.results[0].chain_complete


async def test_a_response_that_fails_mid_stream_raises_from_prompt(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    recorder = register_plugin(Recorder(), name="recorder")
    assert isinstance(recorder, Recorder)
    model = await LLM(make_datasette()).model("test-fails")
    with pytest.raises(RuntimeError, match="failed mid-stream"):
        await model.prompt("hi")
    assert recorder.events == ["enter"]


async def test_schema_prompts_pass_through(make_datasette: MakeDatasette) -> None:
    model = await LLM(make_datasette()).model("echo")
    with pytest.raises(ValueError, match="does not support schemas"):
        await model.prompt("x", schema={"type": "object"})
