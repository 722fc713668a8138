"""Client-side limits per model, requirements of a call, and fallbacks the policy refuses.

The models are the suite's own (``tests/llm_models.py``: test-a/b/c answer at once, none
supports tools) and llm-echo's ``echo`` (tools, image attachments, no schema).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import llm
import pytest

from datasette_llm import LLM, Actor, ModelNotFoundError, PromptResult, Purpose, Requirements
from datasette_llm.provider_errors import ProviderError
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import SyncStub
from tests.openai_server import Reply, serve, write_extra_models

pytestmark = pytest.mark.usefixtures("test_models")

TOOLS = Requirements(tools=True)


class InFlight:
    """Counts the attempts under way at once (hooks run inside a model's limits)."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    @hookimpl
    def llm_prompt_context(
        self, model_id: str, prompt: str, purpose: str | None, actor: Actor | None
    ) -> Callable[[PromptResult], AbstractAsyncContextManager[object]]:
        @asynccontextmanager
        async def around(result: PromptResult) -> AsyncIterator[None]:
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                await asyncio.sleep(0.02)
                yield
            finally:
                self.now -= 1

        return around


async def test_concurrency_caps_the_requests_to_a_model_at_once(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    counter = InFlight()
    register_plugin(counter, name="in-flight")
    ds = make_datasette({"purposes": {"p": {"model": {"model": "test-a", "concurrency": 3}}}})
    model = await LLM(ds).model(purpose="p")
    responses = await asyncio.gather(*(model.prompt(f"row {n}") for n in range(12)))
    assert [await response.text() for response in responses][:2] == [
        "test-a:row 0",
        "test-a:row 1",
    ]
    assert counter.most == 3


async def test_the_limits_of_a_model_hold_across_purposes(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    counter = InFlight()
    register_plugin(counter, name="in-flight")
    limited = {"model": "test-a", "concurrency": 2}
    ds = make_datasette({"purposes": {"p": {"model": limited}, "q": {"model": limited}}})
    first, second = await LLM(ds).model(purpose="p"), await LLM(ds).model(purpose="q")
    await asyncio.gather(*(m.prompt("x") for m in (first, second) for _ in range(5)))
    assert counter.most == 2


async def test_rpm_spreads_requests_evenly_over_each_second(make_datasette: MakeDatasette) -> None:
    ds = make_datasette({"purposes": {"p": {"model": {"model": "test-a", "rpm": 300}}}})
    model = await LLM(ds).model(purpose="p")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(model.prompt(f"{n}") for n in range(10)))
    # 300 a minute is one every 0.2 s: ten requests take at least 1.8 s.
    assert loop.time() - started >= 1.7


def test_limits_given_twice_for_one_model_must_agree(make_datasette: MakeDatasette) -> None:
    from datasette_llm.config.parser import parse_config
    from datasette_llm.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as raised:
        parse_config(
            {
                "default_model": {"model": "test-a", "rpm": 60},
                "purposes": {"p": {"model": {"model": "test-a", "rpm": 120}}},
            }
        )
    assert "plugins.datasette-llm.purposes.p.model: limits for 'test-a' (rpm 120.0" in str(
        raised.value
    )
    assert "differ from those at plugins.datasette-llm.default_model" in str(raised.value)


async def test_a_purpose_requiring_tools_is_routed_past_a_model_without_them(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    class Declares:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [Purpose("agent", default_model="test-a", requires=TOOLS)]

    register_plugin(Declares(), name="declares")
    ds = make_datasette({"default_model": "echo"})
    resolution = await LLM(ds).resolve(purpose="agent")
    assert resolution.model_id == "echo"
    assert resolution.skipped == (
        "Purpose('agent').default_model recommends 'test-a', skipped because it does not "
        "support tools, which the call requires",
    )
    model_ids = [model.model_id for model in await LLM(ds).models(purpose="agent")]
    assert model_ids == ["echo"]


async def test_requires_on_a_call_adds_to_the_purposes_requirements(
    make_datasette: MakeDatasette,
) -> None:
    ds = make_datasette({"default_model": "test-a", "models": ["test-a", "echo"]})
    assert (await LLM(ds).model()).model_id == "test-a"
    with pytest.raises(ModelNotFoundError, match="'test-a', skipped because it does not support"):
        await LLM(ds).model(requires=TOOLS)
    assert [m.model_id for m in await LLM(ds).models(requires=TOOLS)] == ["echo"]
    images = Requirements(attachment_types={"image/*"})
    assert [m.model_id for m in await LLM(ds).models(requires=images)] == ["echo"]
    schema = Requirements(schema=True)
    assert await LLM(ds).models(requires=schema) == []


async def test_a_fallback_lacking_a_requirement_or_removed_by_a_filter_hook_is_skipped(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    class Removes:
        @hookimpl
        def llm_filter_models(
            self, models: list[llm.AsyncModel], actor: Actor | None, purpose: str | None
        ) -> list[llm.AsyncModel]:
            if actor and actor.get("id") == "intern":
                return [model for model in models if model.model_id != "echo"]
            return models

    register_plugin(Removes(), name="removes")
    ds = make_datasette(
        {"purposes": {"p": {"model": "test-fails", "fallbacks": ["test-a", "echo"]}}}
    )
    result_of: list[PromptResult] = []

    class Keeps:
        @hookimpl
        def llm_prompt_context(
            self, model_id: str, prompt: str, purpose: str | None, actor: Actor | None
        ) -> Any:
            @asynccontextmanager
            async def around(result: PromptResult) -> AsyncIterator[None]:
                result_of.append(result)
                yield

            return around

    register_plugin(Keeps(), name="keeps")
    model = await LLM(ds).model(purpose="p", requires=Requirements(streaming=True))
    with pytest.raises(RuntimeError, match="failed mid-stream"):
        await model.prompt("hi")  # an unknown error: raised as it is, never retried
    assert [a.error for a in result_of[0].attempts] == ["unknown"]

    class Fails(llm.AsyncModel):
        model_id = "test-rate-limited"
        can_stream = True
        supports_tools = True

        async def execute(self, prompt: Any, stream: Any, response: Any, conversation: Any) -> Any:
            if prompt is not None:  # always: an async generator, as llm expects, failing at once
                raise ProviderError("rate_limit", self.model_id, "scripted 429")
            yield ""

    class Registers:
        @llm.hookimpl
        def register_models(self, register: Any) -> None:
            register(SyncStub("test-rate-limited"), Fails())

    llm.plugins.pm.register(Registers(), name="rate-limited-model")
    try:
        ds = make_datasette(
            {"purposes": {"p": {"model": "test-rate-limited", "fallbacks": ["test-a", "echo"]}}}
        )
        result_of.clear()
        model = await LLM(ds).model(purpose="p", actor={"id": "intern"}, requires=TOOLS)
        with pytest.raises(ProviderError) as raised:
            await model.prompt("hi")
        assert raised.value.kind == "rate_limit"
        assert result_of[0].skipped == [
            "fallback 'test-a' skipped because it does not support tools, which the call requires",
            "fallback 'echo' skipped because llm_filter_models in plugin 'removes' removed it",
        ]
        model = await LLM(ds).model(purpose="p", actor={"id": "editor"}, requires=TOOLS)
        assert (await model.prompt("hi")).model.model_id == "echo"
    finally:
        llm.plugins.pm.unregister(name="rate-limited-model")


async def test_no_second_sees_more_requests_than_rpm_allows(make_datasette: MakeDatasette) -> None:
    ds = make_datasette({"purposes": {"p": {"model": {"model": "test-a", "rpm": 1200}}}})
    model = await LLM(ds).model(purpose="p")
    loop = asyncio.get_running_loop()
    sent: list[float] = []

    async def one(n: int) -> None:
        await model.prompt(f"{n}")
        sent.append(loop.time())

    await asyncio.gather(*(one(n) for n in range(45)))
    sent.sort()
    busiest = max(bisect.bisect_left(sent, t + 1) - i for i, t in enumerate(sent))
    assert busiest <= 20 + 1  # 1200 a minute is 20 a second, never a burst of them at once


@pytest.mark.parametrize("call", ["prompt", "chain"])
async def test_a_wait_for_a_place_past_the_deadline_sends_nothing_and_leaves_no_row(
    make_datasette: MakeDatasette, llm_user_dir: Path, call: str
) -> None:
    limited = {"model": "primary-gpt", "concurrency": 1}
    purposes = {"slow": {"model": limited, "deadline": 5}, "p": {"model": limited, "deadline": 0.3}}
    with serve() as provider:
        write_extra_models(llm_user_dir, provider, primary_gpt=None)
        provider.default = Reply(text="late but in time", delay=1.0)
        ds = make_datasette({"purposes": purposes})
        holder = asyncio.ensure_future((await LLM(ds).model(purpose="slow")).prompt("first"))
        while not provider.requests:  # it holds the model's one place for 1 s
            await asyncio.sleep(0.01)
        model = await LLM(ds).model(purpose="p")
        with pytest.raises(ProviderError) as raised:
            if call == "prompt":
                await model.prompt("second")
            else:
                await model.chain("second").text()
        assert raised.value.kind == "timeout"
        assert "waiting for a place under the client-side limits of 'primary-gpt'" in str(
            raised.value
        )
        assert raised.value.attempts == ()  # nothing was tried: no attempt of the model's
        assert await (await holder).text() == "late but in time"
        # Ledger rows for the model are the requests its provider received: the first's only.
        rows = await LLM(ds).usage_records()
        assert [(row.purpose, row.outcome) for row in rows] == [("slow", "ok")]
        assert provider.counts.requests == 1


async def test_a_turn_under_rpm_past_the_deadline_sends_nothing(
    make_datasette: MakeDatasette,
) -> None:
    paced = {"model": "test-a", "rpm": 6}  # one request every 10 s
    ds = make_datasette({"purposes": {"p": {"model": paced, "deadline": 0.3}}})
    model = await LLM(ds).model(purpose="p")
    assert await (await model.prompt("first")).text() == "test-a:first"
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderError) as raised:
        await model.prompt("second")
    assert asyncio.get_running_loop().time() - started < 1  # not the 10 s to its turn
    assert raised.value.kind == "timeout"
    assert "waiting for a place under the client-side limits of 'test-a' (rpm 6.0" in str(
        raised.value
    )
    assert "its next turn under rpm is later" in str(raised.value)
    assert raised.value.attempts == ()  # nothing was tried
