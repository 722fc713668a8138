"""What holds around a prompt: replies, chains that end or fail, groups, and redacted log lines.

Real parts only: a real Datasette, llm-echo's ``echo`` model (which makes tool calls when asked
to) and the suite's own llm models, with plugins registered on Datasette's plugin manager.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncGenerator, Iterator
from typing import Any, Final

import llm
import pytest

from datasette_llm import LLM, Group, WrappedChainResponse
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import SyncStub
from tests.recorder import Recorder

pytestmark = pytest.mark.usefixtures("test_models")

KEY: Final = "sk-test-0123456789abcdef-reply-key"


@pytest.fixture
def recorder(register_plugin: RegisterPlugin) -> Recorder:
    plugin = Recorder()
    register_plugin(plugin, name="recorder")
    return plugin


def lookup(name: str) -> str:
    """Look something up."""
    return f"looked up {name}"


def tool_calling_prompt() -> str:
    """An echo prompt that makes one tool call, so its chain has two responses."""
    return json.dumps(
        {"prompt": "go", "tool_calls": [{"name": "lookup", "arguments": {"name": "x"}}]}
    )


class Hanging(llm.AsyncModel):
    """A model that streams one chunk, then waits until it is cancelled."""

    model_id = "test-hangs"
    can_stream = True

    async def execute(
        self, prompt: llm.Prompt, stream: bool, response: Any, conversation: Any
    ) -> AsyncGenerator[str, None]:
        yield "first"
        await asyncio.Event().wait()
        yield "never"


class Leaky(llm.AsyncKeyModel):
    """A model whose provider error quotes the key in a URL, as some providers' errors do."""

    model_id = "test-leaky"
    needs_key = "leaky"
    can_stream = True

    async def execute(
        self,
        prompt: llm.Prompt,
        stream: bool,
        response: Any,
        conversation: Any,
        key: str | None,
    ) -> AsyncGenerator[str, None]:
        yield "partial"
        raise RuntimeError(f"401 from https://provider.test/v1?api_key={key}")


class MoreModels:
    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        register(SyncStub("test-hangs"), Hanging())
        register(SyncStub("test-leaky", "leaky"), Leaky())


@pytest.fixture
def more_models() -> Iterator[None]:
    llm.plugins.pm.register(MoreModels(), name="datasette-llm-test-more-models")
    try:
        yield
    finally:
        llm.plugins.pm.unregister(name="datasette-llm-test-more-models")


# Replies


async def test_a_reply_runs_the_hooks_and_uses_the_routed_key_and_options(
    make_datasette: MakeDatasette, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_REPLY_KEY", KEY)
    datasette = make_datasette(
        {
            "purposes": {
                "chat": {
                    "model": {
                        "model": "test-keyed",
                        "key": "REPLY_KEY",
                        "options": {"style": "terse"},
                    }
                }
            }
        }
    )
    model = await LLM(datasette).model(purpose="chat")
    first = await model.prompt("hi")
    second = await first.reply("again")
    third = await second.reply("once more", style="long")
    # llm sends a reply as messages (the model's prompt text is empty): the options and key
    # are the routed ones, the caller's option wins.
    terse, long = await second.text(), await third.text()
    assert terse == f"test-keyed: options=[('style', 'terse')] key-length={len(KEY)}"
    assert long == f"test-keyed: options=[('style', 'long')] key-length={len(KEY)}"
    assert recorder.events == [
        "enter hi",
        "exit hi",
        "enter again",
        "exit again",
        "enter once more",
        "exit once more",
    ]
    assert [result.response for result in recorder.results] == [first, second, third]
    # The reply continues the conversation: the model saw the earlier turns.
    assert len(second.prompt.messages) > 1


async def test_a_reply_inside_a_group_is_part_of_the_group(
    make_datasette: MakeDatasette, recorder: Recorder
) -> None:
    async with LLM(make_datasette()).group("test-a") as model:
        first = await model.prompt("one")
        second = await first.reply("two")
    assert recorder.results[1].group is recorder.results[0].group
    assert recorder.results[1].group is not None
    assert recorder.results[1].group.responses == (first, second)
    assert recorder.events[-1] == "group exit"


# Chains


@pytest.mark.parametrize("way", ["text", "async for", "responses", "astream_events"])
async def test_the_hooks_see_chain_complete_after_the_last_response_of_a_tool_call_chain(
    make_datasette: MakeDatasette, recorder: Recorder, way: str
) -> None:
    model = await LLM(make_datasette()).model("echo")
    chain = model.chain(tool_calling_prompt(), tools=[lookup])
    if way == "text":
        text = await chain.text()
    elif way == "async for":
        text = "".join([chunk async for chunk in chain])
    elif way == "responses":
        text = "".join([await response.text() async for response in chain.responses()])
    else:
        text = "".join(
            [event.chunk async for event in chain.astream_events() if event.type == "text"]
        )
    assert "looked up x" in text
    [(_, error, complete)] = recorder.exits
    assert (error, complete) == (None, True)
    assert len(recorder.results[0].responses) == 2


@pytest.mark.parametrize("way", ["text", "async for", "astream_events"])
async def test_a_chain_failing_mid_stream_exits_the_hooks_with_its_error_before_the_caller_sees_it(
    make_datasette: MakeDatasette, recorder: Recorder, way: str
) -> None:
    model = await LLM(make_datasette()).model("test-fails")
    chain = model.chain("go")
    try:
        if way == "text":
            await chain.text()
        elif way == "async for":
            async for _ in chain:
                pass
        else:
            async for _ in chain.astream_events():
                pass
    except RuntimeError as error:
        recorder.events.append(f"caller saw {error}")
    assert recorder.events == [
        "enter go",
        "exit go with RuntimeError",
        "caller saw the provider failed mid-stream",
    ]
    [(_, seen, complete)] = recorder.exits
    assert str(seen) == "the provider failed mid-stream" and complete


async def test_a_cancelled_chain_exits_the_hooks_with_cancelled_error(
    make_datasette: MakeDatasette, recorder: Recorder, more_models: None
) -> None:
    model = await LLM(make_datasette()).model("test-hangs")
    chain = model.chain("wait")
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in chain:
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert recorder.events == ["enter wait", "exit wait with CancelledError"]


async def test_a_chain_failing_in_a_group_exits_the_hooks_before_llm_group_exit(
    make_datasette: MakeDatasette, recorder: Recorder
) -> None:
    with pytest.raises(RuntimeError, match="mid-stream"):
        async with LLM(make_datasette()).group("test-fails") as model:
            await model.chain("go").text()
    assert recorder.events == ["enter go", "exit go with RuntimeError", "group exit"]


async def test_a_chain_the_block_left_sees_the_blocks_error_before_llm_group_exit(
    make_datasette: MakeDatasette, recorder: Recorder
) -> None:
    class Stop(Exception):
        pass

    with pytest.raises(Stop):
        async with LLM(make_datasette()).group("echo") as model:
            chain = model.chain(tool_calling_prompt(), tools=[lookup])
            async for response in chain.responses():
                await response.text()
                raise Stop("the block gave up after the first response")
    prompt = tool_calling_prompt()
    assert recorder.events == [f"enter {prompt}", f"exit {prompt} with Stop", "group exit"]


async def test_a_chain_left_unfinished_by_a_block_that_ends_normally_is_closed_before_group_exit(
    make_datasette: MakeDatasette, recorder: Recorder
) -> None:
    async with LLM(make_datasette()).group("echo") as model:
        chain: WrappedChainResponse = model.chain(tool_calling_prompt(), tools=[lookup])
        async for response in chain.responses():
            await response.text()
            break
    assert recorder.events[-2:] == [
        "exit " + tool_calling_prompt() + " with GeneratorExit",
        "group exit",
    ]


# Groups


async def test_prompts_started_as_tasks_are_awaited_before_group_exit_even_when_the_block_raises(
    make_datasette: MakeDatasette, recorder: Recorder, register_plugin: RegisterPlugin
) -> None:
    class Stop(Exception):
        pass

    seen_at_exit: list[list[bool]] = []

    class AtExit:
        @hookimpl
        def llm_group_exit(self, group: Group) -> None:
            seen_at_exit.append([response._done for response in group.responses])

    register_plugin(AtExit(), name="at-exit")
    tasks: list[asyncio.Task[Any]] = []
    with pytest.raises(Stop):
        async with LLM(make_datasette()).group("test-a") as model:
            tasks = [asyncio.create_task(model.prompt(row)) for row in ("r1", "r2", "r3")]
            raise Stop
    assert all(task.done() for task in tasks)
    assert seen_at_exit == [[True, True, True]]
    assert recorder.events.count("group exit") == 1
    assert recorder.events[-1] == "group exit"


async def test_a_grouped_model_used_after_its_block_raises_a_clear_error(
    make_datasette: MakeDatasette,
) -> None:
    async with LLM(make_datasette()).group("test-a") as model:
        await model.prompt("inside")
    message = re.escape("This model belongs to a group() block that has ended")
    with pytest.raises(RuntimeError, match=message):
        await model.prompt("after")
    with pytest.raises(RuntimeError, match=message):
        model.chain("after")
    with pytest.raises(RuntimeError, match=message):
        await model.conversation().prompt("after")


# Log lines


async def test_log_lines_repeating_a_provider_error_redact_the_key(
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
    more_models: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_LEAKY_API_KEY", KEY)

    class ReRaises:
        @hookimpl
        def llm_group_exit(self, group: Group) -> None:
            # A plugin repeating the provider's error, key and all.
            raise RuntimeError(f"budget plugin: https://provider.test/v1?api_key={KEY} failed")

    register_plugin(ReRaises(), name="re-raises")
    caplog.set_level(logging.DEBUG, logger="datasette_llm")
    with pytest.raises(RuntimeError, match="budget plugin"):
        async with LLM(make_datasette()).group("test-leaky") as model:
            chain = model.chain("go")
            async for _ in chain:
                break  # left after its first chunk: the group finishes it, and it fails
    messages = [record.getMessage() for record in caplog.records]
    assert any("failed while being finished" in message for message in messages)
    assert "api_key=[redacted]" in caplog.text
    assert KEY not in caplog.text
    for record in caplog.records:
        assert KEY not in logging.Formatter().format(record)
