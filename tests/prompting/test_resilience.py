"""Retries and fallbacks against a real HTTP provider, for prompts and for chains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, Final

import llm
import openai
import pytest

from datasette_llm import LLM, ProviderError
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import SyncStub
from tests.openai_server import Provider, Reply, serve, write_extra_models
from tests.recorder import Recorder

EVERY_KIND: Final = [
    "rate_limit",
    "timeout",
    "server_error",
    "connection",
    "auth",
    "bad_request",
    "context_window",
    "content_policy",
]


def config(**purpose: Any) -> dict[str, Any]:
    """A purpose routed to primary-gpt, falling back to backup-gpt; one try per model unless
    ``retries`` says otherwise (each try is one request: llm's OpenAI models are adapted)."""
    settings = {"model": "primary-gpt", "fallbacks": ["backup-gpt"], "retries": 0, **purpose}
    return {"purposes": {"summaries": settings}}


@pytest.fixture
def provider(llm_user_dir: Path) -> Iterator[Provider]:
    with serve() as running:
        write_extra_models(
            llm_user_dir,
            running,
            primary_gpt=None,
            backup_gpt=None,
            blocked_gpt=None,
            keyless_gpt="absent-key",
        )
        yield running


def upstream(provider: Provider) -> list[str]:
    """The model of every request the provider received, in order."""
    return [str(seen.body["model"]).removesuffix("-upstream") for seen in provider.requests]


def by_model(model_id: str, prompt: str, purpose: str | None) -> tuple[str, str]:
    return f"enter {model_id}", f"exit {model_id}"


FAILURES: Final = {
    "rate_limit": Reply(status=429, message="slow down"),
    "server_error": Reply(status=500, message="the provider broke"),
    "auth": Reply(status=401, message="Incorrect API key provided"),
    "bad_request": Reply(status=400, message="'temperature' must be a number"),
    "context_window": Reply(status=400, message="This model's maximum context length is 8"),
    "content_policy": Reply(
        status=400, message="The response was filtered by the content management policy"
    ),
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
async def test_each_error_kind_of_the_provider_is_raised_as_a_provider_error_of_that_kind(
    make_datasette: MakeDatasette, provider: Provider, kind: str
) -> None:
    provider.default = FAILURES[kind]
    model = await LLM(make_datasette(config(fallbacks=[]))).model(purpose="summaries")
    with pytest.raises(ProviderError) as raised:
        await model.prompt("hi")
    assert raised.value.kind == kind
    assert raised.value.model_id == "primary-gpt"
    assert isinstance(raised.value.__cause__, openai.APIStatusError)
    assert raised.value.status == FAILURES[kind].status


@pytest.mark.parametrize("kind", sorted(FAILURES))
async def test_each_error_kind_falls_back_when_fallback_on_names_it_and_only_then(
    make_datasette: MakeDatasette, provider: Provider, kind: str
) -> None:
    ds = make_datasette(config(fallback_on=EVERY_KIND))
    provider.script = [FAILURES[kind], Reply(text="from the backup")]
    model = await LLM(ds).model(purpose="summaries")
    response = await model.prompt("hi")
    assert await response.text() == "from the backup"
    assert upstream(provider) == ["primary-gpt", "backup-gpt"]

    provider.requests.clear()
    provider.script = [FAILURES[kind]]
    others = [other for other in EVERY_KIND if other != kind]
    model = await LLM(make_datasette(config(fallback_on=others))).model(purpose="summaries")
    with pytest.raises(ProviderError) as raised:
        await model.prompt("hi")
    assert raised.value.kind == kind
    assert upstream(provider) == ["primary-gpt"]


async def test_by_default_rate_limits_server_errors_and_cut_streams_fall_back_but_auth_does_not(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    for failure in (FAILURES["rate_limit"], FAILURES["server_error"], Reply(cut_after=0)):
        provider.requests.clear()
        provider.script = [failure, Reply(text="from the backup")]
        ds = make_datasette(config())
        response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
        assert await response.text() == "from the backup"
        assert upstream(provider) == ["primary-gpt", "backup-gpt"]
    provider.requests.clear()
    provider.script = [FAILURES["auth"]]
    with pytest.raises(ProviderError, match="auth"):
        await (await LLM(make_datasette(config())).model(purpose="summaries")).prompt("hi")
    assert upstream(provider) == ["primary-gpt"]


async def test_retries_2_is_three_tries_of_one_request_each_the_openai_client_retrying_none(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    quick_429 = Reply(status=429, message="slow down", headers={"retry-after": "0.01"})
    provider.script = [quick_429, quick_429, quick_429, Reply(text="from the backup")]
    model = await LLM(make_datasette(config(retries=2))).model(purpose="summaries")
    response = await model.prompt("hi")
    assert await response.text() == "from the backup"
    assert upstream(provider) == ["primary-gpt"] * 3 + ["backup-gpt"]
    retry_counts = [seen.headers.get("x-stainless-retry-count") for seen in provider.requests]
    assert retry_counts == ["0"] * 4  # every request is a first try of the openai client
    assert provider.counts.retried == 0


async def test_every_retry_is_datasette_llm_s_own_try(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    quick_429 = Reply(status=429, message="slow down", headers={"retry-after": "0.01"})
    provider.script = [quick_429] * 5 + [Reply(text="sixth request")]
    ds = make_datasette(config(retries=5, fallbacks=[]))
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "sixth request"
    # retries: 5 is six requests: six tries of datasette-llm's, each of one request.
    assert upstream(provider) == ["primary-gpt"] * 6
    retry_counts = [seen.headers.get("x-stainless-retry-count") for seen in provider.requests]
    assert retry_counts == ["0"] * 6

    provider.requests.clear()
    fail = Reply(status=500, message="broken")
    provider.script = [fail, fail, Reply(text="third try")]
    ds = make_datasette(config(retries=8, fallbacks=[]))
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "third try"
    assert upstream(provider) == ["primary-gpt"] * 3


async def test_every_attempt_enters_and_exits_the_hooks_and_the_result_lists_the_attempts(
    make_datasette: MakeDatasette, provider: Provider, register_plugin: RegisterPlugin
) -> None:
    recorder = Recorder(by_model)
    register_plugin(recorder, name="recorder")
    provider.script = [FAILURES["server_error"], Reply(text="from the backup")]
    model = await LLM(make_datasette(config())).model(purpose="summaries")
    await model.prompt("hi")
    assert recorder.events == [
        "enter primary-gpt",
        "exit primary-gpt with InternalServerError",
        "enter backup-gpt",
        "exit backup-gpt",
    ]
    result = recorder.results[0]
    assert result is recorder.results[1]  # one PromptResult for the prompt's attempts
    assert result.model_id == "backup-gpt"
    assert [(a.model_id, a.number, a.error, a.fell_back_from) for a in result.attempts] == [
        ("primary-gpt", 1, "server_error", None),
        ("backup-gpt", 2, None, "primary-gpt"),
    ]
    assert all(attempt.duration >= 0 for attempt in result.attempts)
    assert [response.model.model_id for response in result.responses] == ["backup-gpt"]
    # Each attempt's hooks exit seeing it in the result: its Attempt and its ledger row.
    assert recorder.settled == [
        ([("primary-gpt", "server_error")], [("primary-gpt", "server_error")]),
        (
            [("primary-gpt", "server_error"), ("backup-gpt", None)],
            [("primary-gpt", "server_error"), ("backup-gpt", "ok")],
        ),
    ]


async def test_a_blocked_or_keyless_fallback_is_never_contacted(
    make_datasette: MakeDatasette, provider: Provider, register_plugin: RegisterPlugin
) -> None:
    recorder = Recorder(by_model)
    register_plugin(recorder, name="recorder")
    ds = make_datasette(
        {
            "blocked_models": ["blocked-gpt"],
            "purposes": {
                "summaries": {
                    "model": "primary-gpt",
                    "fallbacks": ["blocked-gpt", "keyless-gpt", "backup-gpt"],
                    "retries": 0,
                }
            },
        }
    )
    provider.script = [FAILURES["server_error"], Reply(text="from the backup")]
    model = await LLM(ds).model(purpose="summaries")
    assert model.resolution.fallbacks == ("blocked-gpt", "keyless-gpt", "backup-gpt")
    response = await model.prompt("hi")
    assert await response.text() == "from the backup"
    assert upstream(provider) == ["primary-gpt", "backup-gpt"]
    assert recorder.events[2:] == ["enter backup-gpt", "exit backup-gpt"]
    skipped = recorder.results[0].skipped
    assert skipped[0].startswith("fallback 'blocked-gpt' skipped because it is in blocked_models")
    assert skipped[1].startswith("fallback 'keyless-gpt' skipped because it has no API key")


async def test_a_hook_refusing_the_fallback_attempt_stops_the_prompt_with_its_own_error(
    make_datasette: MakeDatasette, provider: Provider, register_plugin: RegisterPlugin
) -> None:
    class OverBudget(Exception):
        pass

    def refuse_backup(model_id: str, prompt: str, purpose: str | None) -> tuple[str, str]:
        if model_id == "backup-gpt":
            raise OverBudget("the backup costs too much")
        return "enter", "exit"

    register_plugin(Recorder(refuse_backup), name="budget")
    provider.script = [FAILURES["server_error"], Reply(text="never sent")]
    model = await LLM(make_datasette(config())).model(purpose="summaries")
    with pytest.raises(OverBudget):
        await model.prompt("hi")
    assert upstream(provider) == ["primary-gpt"]


async def test_a_stream_cut_mid_way_inside_prompt_is_sent_again_and_its_text_not_duplicated(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.script = [Reply(text="one two three four", cut_after=2), Reply(text="whole answer")]
    model = await LLM(make_datasette(config())).model(purpose="summaries")
    response = await model.prompt("hi", stream=True)
    assert await response.text() == "whole answer"
    assert [chunk async for chunk in response] == ["whole", " answer"]


async def test_a_conversation_falls_back_with_its_history(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    model = await LLM(make_datasette(config())).model(purpose="summaries")
    conversation = model.conversation()
    provider.script = [Reply(text="first answer")]
    await (await conversation.prompt("first question")).text()
    provider.script = [FAILURES["server_error"], Reply(text="second answer")]
    response = await conversation.prompt("second question")
    assert await response.text() == "second answer"
    assert upstream(provider) == ["primary-gpt", "primary-gpt", "backup-gpt"]
    sent = [message["content"] for message in provider.requests[-1].body["messages"]]
    assert sent == ["first question", "first answer", "second question"]
    assert len(conversation.responses) == 2


async def test_a_reply_falls_back_with_the_messages_llm_built_for_it(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    model = await LLM(make_datasette(config())).model(purpose="summaries")
    provider.script = [Reply(text="first answer")]
    first = await model.prompt("first question")
    provider.script = [FAILURES["rate_limit"], Reply(text="the reply")]
    reply = await first.reply("and then?")
    assert await reply.text() == "the reply"
    assert upstream(provider) == ["primary-gpt", "primary-gpt", "backup-gpt"]
    sent = [message["content"] for message in provider.requests[-1].body["messages"]]
    assert sent == ["first question", "first answer", "and then?"]


async def test_a_reply_retried_keeps_the_caller_s_options(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    model = await LLM(make_datasette(config(retries=1))).model(purpose="summaries")
    provider.script = [Reply(text="first answer")]
    first = await model.prompt("first question")
    provider.script = [FAILURES["server_error"], Reply(text="the reply")]
    reply = await first.reply("and then?", options={"temperature": 0.25, "max_tokens": 7})
    assert await reply.text() == "the reply"
    sent = [
        (seen.body.get("temperature"), seen.body.get("max_tokens")) for seen in provider.requests
    ]
    assert sent == [(None, None), (0.25, 7), (0.25, 7)]  # the retry's too


async def test_a_reply_to_a_fallback_s_answer_is_built_without_the_routed_model_s_options(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    # The routed model's configured option is not one the fallback's model takes: the reply is
    # built on the model that answered (the fallback) with the caller's options alone, then sent
    # to the routed model with its own.
    purpose = {"model": {"model": "primary-gpt", "options": {"seed": 42}}}
    ds = make_datasette(config(**purpose, fallbacks=["test-answers"]))
    model = await LLM(ds).model(purpose="summaries")
    provider.script = [FAILURES["server_error"]]
    first = await model.prompt("first question")
    assert (await first.text(), first.model.model_id) == ("the answer", "test-answers")
    provider.script = [Reply(text="the reply")]
    reply = await first.reply("and then?")
    assert await reply.text() == "the reply"
    assert provider.requests[-1].body["seed"] == 42
    sent = [message["content"] for message in provider.requests[-1].body["messages"]]
    assert sent == ["first question", "the answer", "and then?"]


async def test_prompts_of_a_group_fall_back_and_the_group_holds_only_the_answers(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.script = [Reply(text="a"), FAILURES["server_error"], Reply(text="b")]
    async with LLM(make_datasette(config())).group(purpose="summaries") as model:
        texts = [await (await model.prompt(p)).text() for p in ("one", "two")]
        group = model.group
    assert texts == ["a", "b"]
    assert group is not None
    assert [response.model.model_id for response in group.responses] == [
        "primary-gpt",
        "backup-gpt",
    ]


async def test_a_retry_after_beyond_the_deadline_gives_up_at_once_instead_of_waiting(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.default = Reply(status=429, message="quota", headers={"retry-after": "30"})
    ds = make_datasette(config(fallbacks=[], retries=5, deadline=2))
    model = await LLM(ds).model(purpose="summaries")
    with pytest.raises(ProviderError) as raised:
        await model.prompt("hi")
    assert raised.value.kind == "rate_limit"
    assert raised.value.retry_after is not None and raised.value.retry_after > 2
    assert upstream(provider) == ["primary-gpt"]
    assert [attempt.error for attempt in raised.value.attempts] == ["rate_limit"]


async def test_a_rate_limited_model_is_skipped_while_it_cools_down_and_tried_again_after(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config())
    cooling = Reply(status=429, message="slow down", headers={"retry-after": "0.5"})
    provider.script = [cooling, Reply(text="b1"), Reply(text="b2")]
    for _ in range(2):
        await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert upstream(provider) == ["primary-gpt", "backup-gpt", "backup-gpt"]
    await asyncio.sleep(0.6)
    provider.script = [Reply(text="primary again")]
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "primary again"
    assert upstream(provider)[-1] == "primary-gpt"


async def test_the_final_error_lists_every_attempt(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.script = [FAILURES["server_error"], FAILURES["rate_limit"]]
    model = await LLM(make_datasette(config())).model(purpose="summaries")
    with pytest.raises(ProviderError) as raised:
        await model.prompt("hi")
    error = raised.value
    assert error.kind == "rate_limit"
    assert error.model_id == "backup-gpt"
    assert [(a.model_id, a.error) for a in error.attempts] == [
        ("primary-gpt", "server_error"),
        ("backup-gpt", "rate_limit"),
    ]
    assert "after 2 attempts: primary-gpt server_error, backup-gpt rate_limit" in str(error)


async def _consume(chain: Any, way: str) -> str:
    if way == "text":
        return str(await chain.text())
    if way == "events":
        return "".join(
            [event.chunk async for event in chain.astream_events() if event.type == "text"]
        )
    return "".join([chunk async for chunk in chain])


@pytest.mark.parametrize("way", ["async for", "text", "events"])
async def test_a_chain_whose_first_step_fails_before_streaming_starts_again_on_the_fallback(
    make_datasette: MakeDatasette, provider: Provider, register_plugin: RegisterPlugin, way: str
) -> None:
    recorder = Recorder(by_model)
    register_plugin(recorder, name="recorder")
    provider.script = [FAILURES["server_error"], Reply(text="streamed from the backup")]
    model = await LLM(make_datasette(config())).model(purpose="summaries")
    chain = model.chain("go")
    assert await _consume(chain, way) == "streamed from the backup"
    assert upstream(provider) == ["primary-gpt", "backup-gpt"]
    assert recorder.events == [
        "enter primary-gpt",
        "exit primary-gpt with InternalServerError",
        "enter backup-gpt",
        "exit backup-gpt",
    ]
    result = chain.result
    assert [response.model.model_id for response in result.responses] == ["backup-gpt"]
    assert result.chain_complete
    assert [(a.model_id, a.error) for a in result.attempts] == [
        ("primary-gpt", "server_error"),
        ("backup-gpt", None),
    ]
    # As for prompt(): each attempt's hooks exit seeing it, and its row.
    assert recorder.settled == [
        ([("primary-gpt", "server_error")], [("primary-gpt", "server_error")]),
        (
            [("primary-gpt", "server_error"), ("backup-gpt", None)],
            [("primary-gpt", "server_error"), ("backup-gpt", "ok")],
        ),
    ]


async def test_a_chain_in_a_group_that_falls_back_leaves_only_the_answer_in_the_group(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.script = [Reply(cut_after=0), Reply(text="from the backup")]
    async with LLM(make_datasette(config())).group(purpose="summaries") as model:
        text = await model.chain("go").text()
        group = model.group
    assert text == "from the backup"
    assert group is not None
    assert [response.model.model_id for response in group.responses] == ["backup-gpt"]


async def test_an_attempt_slower_than_timeout_is_a_timeout_and_falls_back(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.script = [Reply(delay=5), Reply(text="from the backup")]
    # A second of timeout: the fallback's first request (a new client, its connection) must
    # fit in it too, on a loaded machine (0.3 s did not, once in a CI run).
    model = await LLM(make_datasette(config(timeout=1.0))).model(purpose="summaries")
    response = await model.prompt("hi")
    assert await response.text() == "from the backup"
    assert upstream(provider) == ["primary-gpt", "backup-gpt"]

    provider.requests.clear()
    provider.default = Reply(delay=5)
    model = await LLM(make_datasette(config(timeout=1.0, fallbacks=[]))).model(purpose="summaries")
    with pytest.raises(ProviderError) as raised:
        await model.prompt("hi")
    assert raised.value.kind == "timeout"
    assert isinstance(raised.value.__cause__, TimeoutError)


async def test_a_dropped_connection_is_a_connection_error_and_falls_back(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    drop = Reply(drop=True)
    provider.script = [drop, Reply(text="from the backup")]
    model = await LLM(make_datasette(config())).model(purpose="summaries")
    response = await model.prompt("hi")
    assert await response.text() == "from the backup"
    # One request to the primary (its client never retries by itself), then the fallback.
    assert upstream(provider) == ["primary-gpt", "backup-gpt"]

    provider.requests.clear()
    provider.default = drop
    model = await LLM(make_datasette(config(fallbacks=[]))).model(purpose="summaries")
    with pytest.raises(ProviderError) as raised:
        await model.prompt("hi")
    assert raised.value.kind == "connection"
    assert isinstance(raised.value.__cause__, openai.APIConnectionError)


async def test_the_deadline_bounds_the_whole_prompt_every_attempt_included(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.default = Reply(delay=5)
    ds = make_datasette(config(timeout=0.4, deadline=1, retries=5))
    model = await LLM(ds).model(purpose="summaries")
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderError) as raised:
        await model.prompt("hi")
    elapsed = asyncio.get_running_loop().time() - started
    assert raised.value.kind == "timeout"
    assert elapsed < 4  # the deadline, not 6 attempts of 0.4 s plus backoff, nor the 5 s delay
    assert 1 <= len(raised.value.attempts) <= 3


TOOL_RUNS: list[str] = []
SEEN_BY_BACKUP: list[list[str]] = []
FAILING_SAW: list[list[str]] = []


def lookup(query: str) -> str:
    """Look something up."""
    TOOL_RUNS.append(query)
    return f"found {query}"


class AsksThenFails(llm.AsyncModel):
    model_id = "test-asks-then-fails"
    supports_tools = True
    can_stream = True

    async def execute(
        self, prompt: llm.Prompt, stream: bool, response: Any, conversation: Any
    ) -> AsyncGenerator[str, None]:
        parts = [type(part).__name__ for message in prompt.messages for part in message.parts]
        FAILING_SAW.append(parts)
        if not any("ToolResult" in name for name in parts):
            response.add_tool_call(llm.ToolCall(name="lookup", arguments={"query": "rows"}))
        else:
            raise ProviderError("server_error", self.model_id, "the provider broke at step 2")
        yield ""


class Answers(llm.AsyncModel):
    model_id = "test-answers"
    supports_tools = True
    can_stream = True

    async def execute(
        self, prompt: llm.Prompt, stream: bool, response: Any, conversation: Any
    ) -> AsyncGenerator[str, None]:
        SEEN_BY_BACKUP.append(
            [type(part).__name__ for message in prompt.messages for part in message.parts]
        )
        yield "the answer"


class Models:
    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        register(SyncStub("test-asks-then-fails"), AsksThenFails())
        register(SyncStub("test-answers"), Answers())


@pytest.fixture(autouse=True)
def models() -> Iterator[None]:
    TOOL_RUNS.clear()
    SEEN_BY_BACKUP.clear()
    llm.plugins.pm.register(Models(), name="chain-models")
    try:
        yield
    finally:
        llm.plugins.pm.unregister(name="chain-models")


CONFIG = {
    "purposes": {
        "agent": {"model": "test-asks-then-fails", "fallbacks": ["test-answers"], "retries": 0}
    }
}


@pytest.mark.parametrize("way", ["async for", "text"])
async def test_a_later_step_failing_before_any_text_goes_on_from_that_step_on_the_fallback(
    make_datasette: MakeDatasette, way: str
) -> None:
    model = await LLM(make_datasette(CONFIG)).model(purpose="agent")
    chain = model.chain("count the rows", tools=[lookup])
    if way == "text":
        text = await chain.text()
    else:
        text = "".join([chunk async for chunk in chain])
    assert text == "the answer"
    assert TOOL_RUNS == ["rows"]  # the tool ran once: the fallback got its result in messages
    [parts] = SEEN_BY_BACKUP
    assert "ToolResultPart" in parts or any("Tool" in name for name in parts), parts
    steps = [response.model.model_id for response in chain.result.responses]
    assert steps == ["test-asks-then-fails", "test-answers"]
    assert [(a.model_id, a.error) for a in chain.result.attempts] == [
        ("test-asks-then-fails", "server_error"),
        ("test-answers", None),
    ]


async def test_a_later_step_failing_with_no_fallback_raises_the_provider_error(
    make_datasette: MakeDatasette,
) -> None:
    config = {"purposes": {"agent": {"model": "test-asks-then-fails"}}}
    model = await LLM(make_datasette(config)).model(purpose="agent")
    with pytest.raises(ProviderError) as raised:
        await model.chain("count the rows", tools=[lookup]).text()
    assert raised.value.kind == "server_error"
    assert TOOL_RUNS == ["rows"]


async def _slow_lookup(query: str) -> str:
    """Look something up, slowly."""
    TOOL_RUNS.append(query)
    await asyncio.sleep(3)
    return f"found {query}"


@pytest.fixture
def tooled(llm_user_dir: Path) -> Iterator[Provider]:
    with serve() as running:
        write_extra_models(llm_user_dir, running, supports_tools=True, primary_gpt=None)
        yield running


async def test_a_reply_s_tool_calls_run_once_before_its_attempts_within_the_deadline(
    make_datasette: MakeDatasette, tooled: Provider
) -> None:
    purpose = {"model": {"model": "primary-gpt", "concurrency": 1}, "deadline": 1}
    ds = make_datasette({"purposes": {"p": purpose}})
    model = await LLM(ds).model(purpose="p")
    tooled.script = [Reply(tool_call=("_slow_lookup", {"query": "rows"}))]
    first = await model.prompt("count the rows", tools=[_slow_lookup])
    began = asyncio.get_running_loop().time()
    with pytest.raises(ProviderError) as raised:
        await first.reply()  # runs the tool, which takes 3 s
    assert raised.value.kind == "timeout"
    assert asyncio.get_running_loop().time() - began < 1.6  # not the tool's 3 s, then a request
    assert TOOL_RUNS == ["rows"]
    assert len(tooled.requests) == 1  # nothing sent for the reply
    assert [row.outcome for row in await LLM(ds).usage_records()] == ["ok"]
    # Its tool ran outside the model's place: another prompt was not kept waiting by it.
    tooled.script = [Reply(tool_call=("_slow_lookup", {"query": "more"}))]
    second = await model.prompt("count again", tools=[_slow_lookup])
    replying = asyncio.ensure_future(second.reply())
    await asyncio.sleep(0.2)  # its tool is running
    tooled.script = [Reply(text="meanwhile")]
    assert await asyncio.wait_for((await model.prompt("anything else")).text(), 0.9) == "meanwhile"
    with pytest.raises(ProviderError):
        await replying
