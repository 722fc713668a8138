"""Chains take the one attempt path: limits held per step, the deadline, the ledger, budgets.

Every way of consuming a chain (``text()``, ``async for``, ``astream_events()``,
``responses()``) holds a model's ``concurrency`` place until each step's response has
completed, passes ``rpm`` for every step, ends at the ``deadline``, leaves one ledger row per
attempt and is refused by a spent budget. The models that count what they see are this file's;
the ledger and the failing provider are llm's OpenAI plugin against the local provider.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, Final

import llm
import pytest

from datasette_llm import LLM, BudgetExceededError, ProviderError, WrappedChainResponse
from tests.conftest import MakeDatasette
from tests.llm_models import SyncStub
from tests.openai_server import Provider, Reply, serve, write_extra_models

WAYS: Final = ["text", "async for", "events", "responses"]


class Watched(llm.AsyncModel):
    """Streams ``chunks`` chunks ``pause`` seconds apart, after asking for ``tool_steps`` tool
    calls one step at a time. Counts its requests under way and when each began."""

    can_stream = True
    supports_tools = True

    def __init__(self, model_id: str, chunks: int, pause: float) -> None:
        self.model_id = model_id
        self.chunks = chunks
        self.pause = pause
        self.tool_steps = 0
        self.now = 0
        self.most = 0
        self.began: list[float] = []

    async def execute(
        self, prompt: llm.Prompt, stream: bool, response: Any, conversation: Any
    ) -> AsyncGenerator[str, None]:
        self.now += 1
        self.most = max(self.most, self.now)
        self.began.append(time.monotonic())
        try:
            parts = [type(part).__name__ for message in prompt.messages for part in message.parts]
            if sum("ToolResult" in name for name in parts) < self.tool_steps:
                response.add_tool_call(llm.ToolCall(name="lookup", arguments={"query": "rows"}))
                yield ""
                return
            for index in range(self.chunks):
                await asyncio.sleep(self.pause)
                yield f"c{index} "
        finally:
            self.now -= 1


def lookup(query: str) -> str:
    """Look something up."""
    return f"found {query}"


SLOW: Final = Watched("test-slow", chunks=4, pause=0.05)
TRICKLE: Final = Watched("test-trickle", chunks=20, pause=0.2)


class Models:
    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        for model in (SLOW, TRICKLE):
            register(SyncStub(model.model_id), model)


@pytest.fixture(autouse=True)
def models() -> Iterator[None]:
    for model in (SLOW, TRICKLE):
        model.now = model.most = model.tool_steps = 0
        model.began.clear()
    llm.plugins.pm.register(Models(), name="chain-test-models")
    try:
        yield
    finally:
        llm.plugins.pm.unregister(name="chain-test-models")


async def consume(chain: WrappedChainResponse, way: str) -> str:
    if way == "text":
        return await chain.text()
    if way == "events":
        return "".join([e.chunk async for e in chain.astream_events() if e.type == "text"])
    if way == "responses":
        return "".join([await response.text() async for response in chain.responses()])
    return "".join([chunk async for chunk in chain])


@pytest.mark.parametrize("way", WAYS)
async def test_concurrency_holds_a_place_until_each_steps_response_has_completed(
    make_datasette: MakeDatasette, way: str
) -> None:
    limited = {"model": "test-slow", "concurrency": 1}
    model = await LLM(make_datasette({"purposes": {"p": {"model": limited}}})).model(purpose="p")
    texts = await asyncio.gather(*(consume(model.chain("go"), way) for _ in range(4)))
    assert texts == ["c0 c1 c2 c3 "] * 4
    assert SLOW.most == 1  # not 4 at once, nor one per first chunk


async def test_every_step_of_a_tool_calling_chain_passes_rpm(
    make_datasette: MakeDatasette,
) -> None:
    limited = {"model": "test-slow", "rpm": 240}  # one request every 0.25 s
    model = await LLM(make_datasette({"purposes": {"p": {"model": limited}}})).model(purpose="p")
    SLOW.tool_steps = 2
    chain = model.chain("look it up twice", tools=[lookup])
    assert await chain.text() == "c0 c1 c2 c3 "
    assert len(SLOW.began) == 3
    gaps = [later - earlier for earlier, later in zip(SLOW.began, SLOW.began[1:], strict=False)]
    # Each waits its turn: at least three quarters of the interval after the one before (the
    # bucket's slack for a request that left late), the interval on the whole.
    assert min(gaps) >= 0.25 * 0.75, gaps
    assert sum(gaps) >= 2 * 0.25 - 0.25 * 0.25, gaps


@pytest.mark.parametrize("way", WAYS)
async def test_the_deadline_bounds_the_whole_chain_as_it_bounds_a_prompt(
    make_datasette: MakeDatasette, way: str
) -> None:
    ds = make_datasette({"purposes": {"p": {"model": "test-trickle", "deadline": 1}}})
    model = await LLM(ds).model(purpose="p")
    started = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        await consume(model.chain("go"), way)  # 20 chunks 0.2 s apart: 4 s
    assert raised.value.kind == "timeout"
    assert time.monotonic() - started < 1.6


@pytest.fixture
def provider(llm_user_dir: Path) -> Iterator[Provider]:
    with serve() as running:
        write_extra_models(llm_user_dir, running, primary_gpt=None)
        yield running


PRICED: Final = {"pricing": {"primary-gpt": {"input": 100.0, "output": 100.0}}}


@pytest.mark.parametrize("way", WAYS)
async def test_a_failed_attempt_of_a_chain_is_one_ledger_row(
    make_datasette: MakeDatasette, provider: Provider, way: str
) -> None:
    provider.default = Reply(status=500, message="the provider broke")
    purpose = {"model": "primary-gpt", "retries": 0}
    ds = make_datasette({**PRICED, "purposes": {"p": purpose}})
    with pytest.raises(ProviderError, match="server_error"):
        await consume((await LLM(ds).model(purpose="p")).chain("go"), way)
    assert [row.outcome for row in await LLM(ds).usage_records()] == ["server_error"]


@pytest.mark.parametrize("way", WAYS)
async def test_a_spent_budget_refuses_a_chain_however_it_is_consumed(
    make_datasette: MakeDatasette, provider: Provider, way: str
) -> None:
    budget = {"usd": 0.0001, "per": "day", "then": "refuse"}
    ds = make_datasette({**PRICED, "purposes": {"p": {"model": "primary-gpt", "budget": budget}}})
    model = await LLM(ds).model(purpose="p")
    await consume(model.chain("go"), way)  # spends about $0.001
    provider.requests.clear()
    with pytest.raises(BudgetExceededError):
        await consume(model.chain("go"), way)
    assert provider.requests == []


# Each attempt of a chain is one attempt of its client: its timeout, its pooled client held.


@pytest.fixture
def pooled(llm_user_dir: Path) -> Iterator[Provider]:
    with serve() as running:
        write_extra_models(llm_user_dir, running, primary_gpt=None, keyed_gpt="keyed")
        yield running


@pytest.mark.parametrize("way", ["text", "async for", "events"])
async def test_every_request_of_a_chain_takes_the_attempt_s_timeout_as_its_client_s(
    make_datasette: MakeDatasette, pooled: Provider, way: str
) -> None:
    # The first word comes at once, the next ones 1 s apart: each read waits longer than the
    # attempt's timeout, which the pooled client's requests must take as their own.
    pooled.default = Reply(text="one two three", interval=1.0)
    purpose = {"model": "primary-gpt", "retries": 0, "timeout": 0.4}
    ds = make_datasette({"purposes": {"p": purpose}})
    model = await LLM(ds).model(purpose="p")
    began = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        await consume(model.chain("go"), way)
    assert raised.value.kind == "timeout"
    assert time.monotonic() - began < 1.5  # not 2 s of words: the client's read timed out
    assert [row.outcome for row in await LLM(ds).usage_records()] == ["timeout"]


async def test_the_pooled_client_a_chain_streams_from_is_not_closed_until_its_stream_ends(
    make_datasette: MakeDatasette, pooled: Provider
) -> None:
    from datasette_llm.prompting.clients import POOL_SIZE, adapt

    pooled.default = Reply(text="one two three", interval=0.2)
    ds = make_datasette({"purposes": {"p": {"model": "primary-gpt"}}})
    stream = aiter((await LLM(ds).model(purpose="p")).chain("go"))
    first = await anext(stream)
    primary, keyed = llm.get_async_model("primary-gpt"), llm.get_async_model("keyed-gpt")
    assert adapt(primary) and adapt(keyed)
    client: Any = primary.get_client(None, async_=True)  # type: ignore[attr-defined]  # the chain's
    for number in range(POOL_SIZE):  # the pool lets the chain's client go
        keyed.get_client(f"key-{number}", async_=True)  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)
    assert not client.is_closed()  # the chain's attempt still uses it
    assert first + "".join([chunk async for chunk in stream]) == "one two three"
    await asyncio.sleep(0.05)
    assert client.is_closed()  # closed once the chain's stream ended
    assert [row.outcome for row in await LLM(ds).usage_records()] == ["ok"]
