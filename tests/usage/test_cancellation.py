"""Cancellation is accounted: an attempt the provider received and the caller cancelled is a row.

Against llm's own OpenAI plugin and the local provider (``tests/openai_server.py``), whose
request log is the truth the ledger is held to: rows for a model = requests it received.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest
from datasette.app import Datasette
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from datasette_llm import LLM, BudgetExceededError, PromptResult, UsageRecord
from datasette_llm._operator.live import try_route
from datasette_llm.typing import PromptContextFactory, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.openai_server import Provider, Reply, serve, write_extra_models
from tests.usage.test_telemetry import span_exporter, spans

__all__ = ["span_exporter", "spans"]  # the fixtures, for pytest

PRICING: Final = {
    "primary-gpt": {"input": 2.0, "output": 8.0},
    "backup-gpt": {"input": 1.0, "output": 4.0},
}
WORDS: Final = " ".join(f"w{n}" for n in range(20))


def config(**purpose: Any) -> dict[str, Any]:
    return {
        "pricing": PRICING,
        "purposes": {"summaries": {"model": "primary-gpt", **purpose}},
    }


@pytest.fixture
def provider(llm_user_dir: Path) -> Iterator[Provider]:
    with serve() as running:
        write_extra_models(llm_user_dir, running, primary_gpt=None, backup_gpt=None)
        yield running


async def records(ds: Datasette) -> list[UsageRecord]:
    return await LLM(ds).usage_records()


async def until(condition: Any, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (the provider runs in a thread of its own)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


async def test_a_prompt_cancelled_while_the_provider_has_it_is_a_cancelled_row_and_a_span(
    make_datasette: MakeDatasette, provider: Provider, spans: InMemorySpanExporter
) -> None:
    ds = make_datasette(config())
    provider.default = Reply(delay=30)
    model = await LLM(ds).model(purpose="summaries")
    task = asyncio.ensure_future(model.prompt("hi", max_tokens=100))
    await until(lambda: provider.counts.requests == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await records(ds)
    assert (row.model, row.outcome, row.input_tokens, row.output_tokens) == (
        "primary-gpt",
        "cancelled",
        None,
        None,
    )
    # Nothing came back: charged its estimate, the 2 bytes of its prompt and max_tokens.
    assert row.cost == pytest.approx((2 * 2.0 + 100 * 8.0) / 1_000_000)
    [span] = [span for span in spans.get_finished_spans() if span.name == "chat primary-gpt"]
    assert span.attributes is not None
    assert span.attributes["error.type"] == "cancelled"
    assert span.attributes["datasette_llm.usage.id"] == row.id


async def test_a_stream_cancelled_mid_way_is_charged_for_what_it_received(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config())
    provider.default = Reply(text=WORDS, interval=0.2)
    model = await LLM(ds).model(purpose="summaries")
    task = asyncio.ensure_future(model.prompt("hi"))  # no max_tokens: no estimate
    await until(lambda: provider.counts.requests == 1)
    await asyncio.sleep(0.5)  # about three chunks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await records(ds)
    assert row.outcome == "cancelled"
    assert row.output_tokens is not None and 1 <= row.output_tokens < 20
    assert row.cost == pytest.approx(row.output_tokens * 8.0 / 1_000_000)
    assert row.first_token is not None and row.first_token <= row.duration


async def test_a_chain_cancelled_mid_stream_is_a_cancelled_row(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config())
    provider.default = Reply(text=WORDS, interval=0.2)
    model = await LLM(ds).model(purpose="summaries")
    chunks: list[str] = []

    async def consume() -> None:
        async for chunk in model.chain("hi"):
            chunks.append(chunk)

    task = asyncio.ensure_future(consume())
    await until(lambda: len(chunks) >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await records(ds)
    assert row.outcome == "cancelled"
    assert row.output_tokens is not None and row.output_tokens >= len(chunks)


class Holds:
    """An ``llm_prompt_context`` plugin that holds every prompt before it is sent."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    @hookimpl
    def llm_prompt_context(self) -> PromptContextFactory:
        return self.hold

    @asynccontextmanager
    async def hold(self, result: PromptResult) -> AsyncIterator[None]:
        self.entered.set()
        await asyncio.Event().wait()
        yield


async def test_a_prompt_cancelled_before_it_was_sent_leaves_no_row(
    make_datasette: MakeDatasette, provider: Provider, register_plugin: RegisterPlugin
) -> None:
    ds = make_datasette(config())
    model = await LLM(ds).model(purpose="summaries")
    task = asyncio.ensure_future(model.prompt("hi"))
    task.cancel()  # before it ran at all
    with pytest.raises(asyncio.CancelledError):
        await task
    holds = Holds()
    register_plugin(holds)
    task = asyncio.ensure_future(model.prompt("hi"))
    await holds.entered.wait()  # in a hook, before the request
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert provider.counts.requests == 0
    assert await records(ds) == []


async def test_cancelled_requests_count_towards_the_budget(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config(budget={"usd": 1, "per": "day", "estimate_usd": 2}))
    provider.default = Reply(delay=30)
    model = await LLM(ds).model(purpose="summaries")
    task = asyncio.ensure_future(model.prompt("hi"))
    await until(lambda: provider.counts.requests == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await records(ds)
    assert (row.outcome, row.cost) == ("cancelled", 2.0)
    with pytest.raises(BudgetExceededError, match=r"has spent \$2.00 of its \$1 budget"):
        await model.prompt("hi")
    assert provider.counts.requests == 1


async def test_rows_equal_the_requests_each_model_received_under_faults_and_cancellation(
    make_datasette: MakeDatasette, llm_user_dir: Path
) -> None:
    """Prompts cancelled at random points (before they ran, right after they started, while
    the provider has them, mid-stream) among 500s, dropped connections, retries and fallbacks:
    the ledger has one row per request each provider received."""
    draw = random.Random(33)
    settings = {
        "pricing": PRICING,
        "purposes": {"summaries": {"model": "primary-gpt", "fallbacks": ["backup-gpt"]}},
    }
    with (
        serve(server_errors=0.15, drops=0.1, seed=1) as primary,
        serve(seed=2) as backup,
    ):
        write_extra_models(llm_user_dir, {"primary-gpt": primary, "backup-gpt": backup})
        stream = Reply(text=WORDS, interval=0.02)
        primary.default = backup.default = stream
        ds = make_datasette(settings)
        model = await LLM(ds).model(purpose="summaries")

        async def one(number: int) -> None:
            phase = draw.choice(["none", "before", "started", "during"])
            task = asyncio.ensure_future(model.prompt(f"prompt {number}"))
            if phase == "started":  # llm preparing the request, the client connecting, sending
                for _ in range(draw.randrange(40)):
                    await asyncio.sleep(0)
                await asyncio.sleep(draw.choice([0, draw.uniform(0, 0.03)]))

            def seen() -> bool:
                bodies = [*primary.requests, *backup.requests]
                sent = f"prompt {number}"
                return task.done() or any(sent in str(seen.body) for seen in bodies)

            if phase == "during":  # waiting for the answer, or mid-stream (20 chunks, 0.4 s)
                await until(seen)
                await asyncio.sleep(draw.uniform(0, 0.5))
            if phase != "none":
                task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

        await asyncio.gather(*(one(number) for number in range(60)))
        rows = await records(ds)
        for model_id, running in (("primary-gpt", primary), ("backup-gpt", backup)):
            received = [seen for seen in running.requests if seen.path == "/v1/chat/completions"]
            made = [row for row in rows if row.model == model_id]
            assert len(made) == len(received), (model_id, [row.outcome for row in made])
        assert {row.outcome for row in rows} >= {"ok", "cancelled"}


async def test_the_bound_of_test_this_route_is_a_cancelled_row_it_shows(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config())
    provider.default = Reply(delay=30)
    result = await try_route(ds, "summaries", timeout=0.5)
    assert result.error == "timeout"
    assert [(attempt.model_id, attempt.error) for attempt in result.attempts] == [
        ("primary-gpt", "cancelled")
    ]
    [row] = await records(ds)
    assert (row.outcome, provider.counts.requests) == ("cancelled", 1)


async def consume_chain(model: Any, way: str, prompt: str, **options: Any) -> None:
    chain = model.chain(prompt, **options)
    if way == "text":
        await chain.text()
    elif way == "iterated":
        async for _ in chain:
            pass
    elif way == "events":
        async for _ in chain.astream_events():
            pass
    else:
        async for response in chain.responses():
            await response.text()


async def cancelled_after_each_turn(
    ds: Datasette, provider: Provider, start: Callable[[str], Awaitable[object]]
) -> list[UsageRecord]:
    """Start a call and cancel it after each number of turns of the event loop, from none
    until three requests have reached the provider; after each, a row exactly when the
    provider received the request. Return the rows."""
    provider.default = Reply(delay=30)
    rows: list[UsageRecord] = []
    for turns in range(80):
        task = asyncio.ensure_future(start(f"turns {turns}"))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.02)  # the provider, in its own thread, reads what was sent
        rows = await records(ds)
        assert len(rows) == provider.counts.requests, (turns, rows)
        if provider.counts.requests >= 3:
            break
    assert provider.counts.requests >= 1
    return rows


@pytest.mark.parametrize("way", ["prompt", "chain text", "chain events", "chain responses"])
async def test_a_prompt_cancelled_right_after_it_started_is_a_row_only_if_its_request_left(
    make_datasette: MakeDatasette, provider: Provider, way: str
) -> None:
    """Cancelled while llm prepares the request and the client connects and writes it: a row
    exactly when the provider received the request. Chains alike."""
    ds = make_datasette(config())
    model = await LLM(ds).model(purpose="summaries")

    async def start(prompt: str) -> None:
        if way == "prompt":
            await model.prompt(prompt)
        else:
            await consume_chain(model, way[6:], prompt)

    rows = await cancelled_after_each_turn(ds, provider, start)
    assert {row.outcome for row in rows} == {"cancelled"}


@pytest.mark.parametrize("way", ["text", "events", "responses"])
async def test_a_grouped_chain_cancelled_right_after_it_started_is_a_row_only_if_its_request_left(
    make_datasette: MakeDatasette, provider: Provider, way: str
) -> None:
    """The same in a ``group()``, which reads to its end every response its block left: one
    cancelled before its request left has no row, not an answered one without tokens."""
    ds = make_datasette(config())

    async def start(prompt: str) -> None:
        async with LLM(ds).group(purpose="summaries") as model:
            await consume_chain(model, way, prompt)

    rows = await cancelled_after_each_turn(ds, provider, start)
    assert {(row.outcome, row.sent) for row in rows} == {("cancelled", True)}


async def test_an_attempt_whose_request_never_left_is_a_row_that_says_so(
    make_datasette: MakeDatasette, llm_user_dir: Path
) -> None:
    """A provider refusing the connection: each attempt is a row (the model's health), with
    ``sent`` false and no cost, and the fallback's, which the provider received, true."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"  # nothing listens there
    with serve() as backup:
        write_extra_models(llm_user_dir, {"primary-gpt": closed, "backup-gpt": backup})
        ds = make_datasette(config(fallbacks=["backup-gpt"], retries=1))
        model = await LLM(ds).model(purpose="summaries")
        assert await (await model.prompt("hi")).text() == "hello from the local provider"
        rows = await records(ds)
    assert [(row.model, row.outcome, row.sent, row.cost) for row in rows] == [
        ("primary-gpt", "connection", False, None),
        ("primary-gpt", "connection", False, None),
        ("backup-gpt", "ok", True, rows[-1].cost),
    ]
    assert len(backup.requests) == 1
    assert rows[-1].cost is not None


@pytest.mark.parametrize("way", ["text", "events", "responses"])
async def test_a_chain_cancelled_before_its_first_chunk_gives_back_its_place_under_the_limits(
    make_datasette: MakeDatasette, provider: Provider, way: str
) -> None:
    """With ``concurrency: 1``, the next prompt goes as soon as the cancelled chain is gone,
    and the chain's request is a cancelled row."""
    ds = make_datasette(config(model={"model": "primary-gpt", "concurrency": 1}))
    model = await LLM(ds).model(purpose="summaries")
    provider.script = [Reply(delay=30)]
    task = asyncio.ensure_future(consume_chain(model, way, "slow"))
    await until(lambda: provider.counts.requests == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    response = await asyncio.wait_for(model.prompt("next"), 10)
    assert await response.text() == "hello from the local provider"
    assert sorted(row.outcome for row in await records(ds)) == ["cancelled", "ok"]


def lookup(query: str) -> str:
    """Look ``query`` up."""
    return f"found {query}"


@pytest.mark.parametrize("way", ["text", "iterated", "events", "responses"])
async def test_a_tool_chain_cancelled_while_its_second_step_is_at_the_provider_is_a_row_for_each(
    make_datasette: MakeDatasette, llm_user_dir: Path, way: str
) -> None:
    """The first step calls a tool (no text reaches the caller); the second step's request is
    cancelled at the provider: one row per request, the second cancelled and charged at least
    the prompt's estimate."""
    with serve() as running:
        write_extra_models(llm_user_dir, running, supports_tools=True, primary_gpt=None)
        running.script = [Reply(tool_call=("lookup", {"query": "rows"})), Reply(delay=30)]
        ds = make_datasette(config(budget={"usd": 10, "estimate_usd": 0.01}))
        model = await LLM(ds).model(purpose="summaries")
        task = asyncio.ensure_future(consume_chain(model, way, "look it up", tools=[lookup]))
        await until(lambda: running.counts.requests == 2)
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rows = await records(ds)
        assert [row.outcome for row in rows] == ["ok", "cancelled"]
        assert rows[1].cost is not None and rows[1].cost >= 0.01
