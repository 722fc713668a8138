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
from tests.prompting.test_matrix import until

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


# A chain its caller leaves, or whose time runs out between its requests.


@pytest.fixture
def tooled(llm_user_dir: Path) -> Iterator[Provider]:
    with serve() as running:
        write_extra_models(llm_user_dir, running, supports_tools=True, primary_gpt=None)
        yield running


async def _leave(chain: WrappedChainResponse, way: str) -> None:
    """Take the chain's first item, then leave: ``break`` out of ``async for``, or close an
    ``astream_events()`` iterator."""
    if way == "async for":
        async for _ in chain:
            break
        return
    events = chain.astream_events()
    await anext(aiter(events))
    await events.aclose()  # type: ignore[attr-defined]  # an asynchronous generator


@pytest.mark.parametrize("way", ["async for", "events"])
async def test_a_chain_left_part_way_ends_its_request_before_it_gives_back_its_place(
    make_datasette: MakeDatasette, provider: Provider, way: str
) -> None:
    provider.script = [Reply(text=" ".join(f"w{n}" for n in range(10)), interval=0.1)]
    provider.default = Reply(text="next")
    limited = {"model": "primary-gpt", "concurrency": 1}
    ds = make_datasette({**PRICED, "purposes": {"p": {"model": limited}}})
    model = await LLM(ds).model(purpose="p")
    chain = model.chain("go")  # kept, as code holding it in a variable keeps it
    await _leave(chain, way)
    await asyncio.sleep(0)  # the iterator left by `break` is closed by the event loop
    assert await (await model.prompt("then")).text() == "next"
    await asyncio.sleep(1.2)  # what the first answer had left to send
    # The first request's connection was closed (the provider saw the client hang up): it
    # was not left streaming beside the next one, which its place let go.
    assert (provider.counts.abandoned, provider.counts.ok) == (1, 1)
    assert chain.result.chain_complete
    rows = await LLM(ds).usage_records()
    assert sorted(row.outcome for row in rows) == ["cancelled", "ok"]
    assert len(rows) == len(provider.requests)


async def test_a_chain_left_part_way_in_a_group_is_read_to_its_end_holding_its_place(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    # A group finishes every response: the one its chain left is read to its end at once,
    # holding its place meanwhile, so the next prompt of the block waits for it (and is not
    # stuck behind a place held until the block has ended).
    provider.script = [Reply(text=" ".join(f"w{n}" for n in range(10)), interval=0.1)]
    provider.default = Reply(text="next")
    limited = {"model": "primary-gpt", "concurrency": 1}
    ds = make_datasette({**PRICED, "purposes": {"p": {"model": limited}}})
    async with LLM(ds).group(purpose="p") as model:
        async for _ in model.chain("go"):
            break
        began = time.monotonic()
        text = await asyncio.wait_for((await model.prompt("then")).text(), 5)
        waited = time.monotonic() - began
    assert text == "next"
    assert waited > 0.5, waited  # the first answer had about 0.9 s left to send
    # The provider's thread counts an answer once it has written it all: maybe just after the
    # client read its end.
    await until(lambda: provider.counts.ok == 2)
    assert provider.counts.abandoned == 0


@pytest.mark.parametrize("leave", ["break", "aclose events", "cancel the task"])
async def test_a_chain_left_part_way_in_a_group_is_recorded_as_the_group_read_it(
    make_datasette: MakeDatasette, provider: Provider, leave: str
) -> None:
    """The group reads the rest of it, so the provider answers it whole and bills it whole: its
    row is the answer's, with the provider's usage, not a cancelled one with the one chunk
    its caller saw (which would leave the budget the rest)."""
    provider.script = [Reply(text=" ".join(f"w{n}" for n in range(10)), interval=0.05)]
    ds = make_datasette({**PRICED, "purposes": {"p": {"model": "primary-gpt"}}})
    async with LLM(ds).group(purpose="p") as model:
        chain = model.chain("go")
        if leave == "break":
            async for _ in chain:
                break
        elif leave == "aclose events":
            events = chain.astream_events()
            await anext(aiter(events))
            await events.aclose()  # type: ignore[attr-defined]
        else:

            async def read() -> None:
                async for _ in chain:
                    await asyncio.sleep(10)

            task = asyncio.ensure_future(read())
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    await until(lambda: provider.counts.ok == 1)  # counted once written (see above)
    assert provider.counts.abandoned == 0
    [row] = await LLM(ds).usage_records()
    assert (row.outcome, row.output_tokens) == ("ok", 10)
    assert row.cost == pytest.approx((3 * 100.0 + 10 * 100.0) / 1_000_000)


async def test_a_chain_left_part_way_in_a_group_whose_rest_fails_is_recorded_as_failed(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.script = [Reply(text=" ".join(f"w{n}" for n in range(10)), interval=0.05, cut_after=5)]
    ds = make_datasette({**PRICED, "purposes": {"p": {"model": "primary-gpt"}}})
    async with LLM(ds).group(purpose="p") as model:
        async for _ in model.chain("go"):
            break
    [row] = await LLM(ds).usage_records()
    assert row.outcome == "connection", row
    assert row.error


async def _slow_lookup(query: str) -> str:
    """Look something up, slowly."""
    await asyncio.sleep(2)
    return f"found {query}"


@pytest.mark.parametrize("way", WAYS)
async def test_a_deadline_passing_while_a_tool_runs_ends_the_chain_with_no_row_of_its_own(
    make_datasette: MakeDatasette, tooled: Provider, way: str
) -> None:
    tooled.script = [Reply(tool_call=("_slow_lookup", {"query": "rows"}))]
    purpose = {"model": "primary-gpt", "deadline": 1, "retries": 0}
    ds = make_datasette({**PRICED, "purposes": {"p": purpose}})
    model = await LLM(ds).model(purpose="p")
    began = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        await consume(model.chain("go", tools=[_slow_lookup]), way)
    assert raised.value.kind == "timeout"
    assert time.monotonic() - began < 1.6
    # One request (the tool call), one row: none for the time that ran out in the tool.
    assert len(tooled.requests) == 1
    assert [row.outcome for row in await LLM(ds).usage_records()] == ["ok"]


async def test_a_timeout_passing_while_a_tool_runs_is_not_retried_which_would_run_it_again(
    make_datasette: MakeDatasette, tooled: Provider
) -> None:
    runs: list[str] = []

    async def slow_lookup(query: str) -> str:
        """Look something up, slowly."""
        runs.append(query)
        await asyncio.sleep(2)
        return f"found {query}"

    tooled.script = [Reply(tool_call=("slow_lookup", {"query": "rows"}))] * 2
    purpose = {"model": "primary-gpt", "timeout": 1, "retries": 1}
    ds = make_datasette({**PRICED, "purposes": {"p": purpose}})
    model = await LLM(ds).model(purpose="p")
    with pytest.raises(ProviderError) as raised:
        await model.chain("go", tools=[slow_lookup]).text()  # its first item: after the tool
    assert raised.value.kind == "timeout"
    assert runs == ["rows"]
    assert len(tooled.requests) == 1
    assert [row.outcome for row in await LLM(ds).usage_records()] == ["ok"]


@pytest.mark.parametrize("way", WAYS)
async def test_a_later_step_whose_turn_would_pass_the_deadline_is_not_sent_and_has_no_row(
    make_datasette: MakeDatasette, tooled: Provider, way: str
) -> None:
    tooled.script = [Reply(tool_call=("lookup", {"query": "rows"}))]
    limited = {"model": "primary-gpt", "rpm": 2}  # a turn every 30 s
    ds = make_datasette({**PRICED, "purposes": {"p": {"model": limited, "deadline": 2}}})
    model = await LLM(ds).model(purpose="p")
    with pytest.raises(ProviderError) as raised:
        await consume(model.chain("go", tools=[lookup]), way)
    assert raised.value.kind == "timeout"
    assert len(tooled.requests) == 1
    assert [row.outcome for row in await LLM(ds).usage_records()] == ["ok"]


async def test_each_step_of_a_chain_is_admitted_under_the_budget_and_holds_its_estimate(
    make_datasette: MakeDatasette, tooled: Provider
) -> None:
    # Every request asks for a tool call (3 input and 5 output tokens, as the provider reports
    # them) and the chains stop at their fourth: four requests each, each costing exactly the
    # estimate (the prompt's 3 bytes, max_tokens 5, at the price). The budget: 9.5 estimates.
    tooled.default = Reply(tool_call=("lookup", {"query": "rows"}))
    estimate = (3 * 2.0 + 5 * 8.0) / 1_000_000
    budget = 9.5 * estimate
    purpose = {
        "model": {"model": "primary-gpt", "options": {"max_tokens": 5}},
        "budget": {"usd": budget, "per": "day"},
    }
    pricing = {"primary-gpt": {"input": 2.0, "output": 8.0}}
    ds = make_datasette({"pricing": pricing, "purposes": {"p": purpose}})
    model = await LLM(ds).model(purpose="p")

    async def one() -> None:
        # Refused by the budget at some step, else stopped by llm at its chain limit.
        with pytest.raises((BudgetExceededError, ValueError)):
            await model.chain("p00", tools=[lookup], chain_limit=4).text()

    await asyncio.gather(*(one() for _ in range(30)))
    rows = await LLM(ds).usage_records()
    assert len(rows) == len(tooled.requests)
    assert max(row.cost or 0.0 for row in rows) == pytest.approx(estimate)
    spent = sum(row.cost or 0.0 for row in rows)
    # Not 9 chains admitted once each and making 4 requests apiece (36 estimates).
    assert spent <= budget + estimate + 1e-12, spent / estimate
