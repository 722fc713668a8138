"""Budgets hold under concurrency: every prompt in flight holds its estimate until it ends.

Against llm's own OpenAI plugin and the local provider (``tests/openai_server.py``), whose
answers report 3 input tokens and one output token a word.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from datasette.app import Datasette

from datasette_llm import LLM, BudgetExceededError, ConfigurationError, ProviderError
from datasette_llm.config.parser import parse_config
from datasette_llm.coordination import LocalCoordinator
from datasette_llm.usage.budgets import coordinator_of, period_start, settled
from datasette_llm.usage.records import usd
from tests.conftest import MakeDatasette
from tests.openai_server import Provider, Reply, serve, write_extra_models

PRICING: Final = {
    "primary-gpt": {"input": 2.0, "output": 8.0},
    "backup-gpt": {"input": 1.0, "output": 4.0},
}
ONE_PROMPT: Final = (3 * 2.0 + 5 * 8.0) / 1_000_000  # 3 tokens in, 5 out: the default reply


def config(budget: dict[str, Any], **extra: Any) -> dict[str, Any]:
    purpose = {"model": "primary-gpt", "budget": {"per": "day", **budget}}
    return {"pricing": PRICING, "purposes": {"summaries": {**purpose, **extra}}}


@pytest.fixture
def provider(llm_user_dir: Path) -> Iterator[Provider]:
    with serve() as running:
        write_extra_models(llm_user_dir, running, primary_gpt=None, backup_gpt=None)
        yield running


async def spent(ds: Datasette) -> float:
    return sum(row.cost or 0.0 for row in await LLM(ds).usage_records())


async def reserved(ds: Datasette) -> float:
    """US dollars the prompts of 'summaries' in flight hold today, once every hold given back
    has reached the coordinator."""
    await settled(ds)
    coordinator = coordinator_of(ds)
    assert isinstance(coordinator, LocalCoordinator)
    return coordinator.reserved("summaries", period_start("day", time.time()))


async def prompt_at_once(ds: Datasette, count: int, **kwargs: Any) -> list[object]:
    model = await LLM(ds).model(purpose="summaries")
    prompts = (model.prompt(f"prompt {number}", **kwargs) for number in range(count))
    return list(await asyncio.gather(*prompts, return_exceptions=True))


@pytest.mark.parametrize("count", [50, 150])
async def test_concurrent_prompts_spend_at_most_the_budget_and_one_estimate(
    make_datasette: MakeDatasette, provider: Provider, count: int
) -> None:
    usd = 9.5 * ONE_PROMPT  # worth nine and a half prompts: the tenth may overspend
    ds = make_datasette(config({"usd": usd, "estimate_usd": ONE_PROMPT}))
    provider.latency = 0.2  # every prompt is in flight at once
    outcomes = await prompt_at_once(ds, count)
    refused = [error for error in outcomes if isinstance(error, BudgetExceededError)]
    assert len(refused) == count - 10
    assert provider.counts.requests == 10
    assert await spent(ds) <= usd + ONE_PROMPT
    assert await reserved(ds) == 0
    assert "held by prompts in flight" in str(refused[0])


async def test_a_prompt_after_another_has_ended_finds_its_hold_given_back(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config({"usd": 1.5 * ONE_PROMPT, "estimate_usd": ONE_PROMPT}))
    model = await LLM(ds).model(purpose="summaries")
    await model.prompt("one")
    await model.prompt("two")  # one prompt spent, nothing held: within the budget
    with pytest.raises(BudgetExceededError, match="has spent"):
        await model.prompt("three")
    assert provider.counts.requests == 2


@pytest.mark.parametrize(
    "where", ["the caller's int", "the caller's float", "the caller's string", "configured"]
)
async def test_the_estimate_comes_from_max_tokens_at_the_configured_price(
    make_datasette: MakeDatasette, provider: Provider, where: str
) -> None:
    """However llm's options take max_tokens (5, 5.0, "5", a $env string), it caps the
    estimate."""
    # "prompt N": 8 bytes (a token a byte at most), 50 tokens out at most.
    estimate = (8 * 2.0 + 50 * 8.0) / 1_000_000
    value = {"the caller's int": 50, "the caller's float": 50.0}.get(where, "50")
    if where == "configured":
        routed = {"model": "primary-gpt", "options": {"max_tokens": value}}
        ds, kwargs = make_datasette(config({"usd": 4 * estimate}, model=routed)), {}
    else:
        ds, kwargs = make_datasette(config({"usd": 4 * estimate})), {"max_tokens": value}
    provider.latency = 0.2
    outcomes = await prompt_at_once(ds, 10, **kwargs)
    assert sum(not isinstance(outcome, Exception) for outcome in outcomes) == 4
    assert await spent(ds) <= 4 * estimate + estimate


async def test_a_reservation_is_settled_on_failure_and_on_cancellation(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config({"usd": ONE_PROMPT, "estimate_usd": ONE_PROMPT}, retries=0))
    provider.script = [Reply(status=400, message="no")]
    model = await LLM(ds).model(purpose="summaries")
    with pytest.raises(ProviderError):
        await model.prompt("hi")
    assert await reserved(ds) == 0
    provider.default = Reply(delay=30)
    task = asyncio.ensure_future(model.prompt("hi"))
    while provider.counts.requests < 2:
        await asyncio.sleep(0.005)
    assert await reserved(ds) == ONE_PROMPT
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await reserved(ds) == 0
    assert await spent(ds) == pytest.approx(ONE_PROMPT)  # the cancelled one, at its estimate
    with pytest.raises(BudgetExceededError):
        await model.prompt("hi")


async def test_the_budget_is_the_error_when_every_fallback_is_refused_at_admission(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    raw = config(
        {"usd": ONE_PROMPT / 2, "then": "fallback"},
        fallbacks=["backup-gpt"],
        blocked_models=["backup-gpt"],
    )
    ds = make_datasette(raw)
    model = await LLM(ds).model(purpose="summaries")
    await model.prompt("hi")  # spends the budget
    with pytest.raises(BudgetExceededError):
        await model.prompt("hi")
    assert provider.counts.requests == 1


def test_estimate_usd_is_read_with_its_path() -> None:
    raw = config({"usd": 5, "estimate_usd": 0.25})
    budget = parse_config(raw).purposes["summaries"].budget
    assert budget is not None and budget.estimate_usd == 0.25
    with pytest.raises(ConfigurationError) as caught:
        parse_config(config({"usd": 5, "estimate_usd": -1}))
    assert [str(problem) for problem in caught.value.problems] == [
        "plugins.datasette-llm.purposes.summaries.budget.estimate_usd: expected a positive "
        "number of US dollars, got int: -1."
    ]


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
async def test_a_chain_holds_its_reservation_until_it_ends_however_it_ends(
    make_datasette: MakeDatasette, provider: Provider, end: str
) -> None:
    ds = make_datasette(config({"usd": ONE_PROMPT, "estimate_usd": ONE_PROMPT}, retries=0))
    words = Reply(text="one two three four five", interval=0.2)  # 5 words: ONE_PROMPT
    provider.script = [dataclasses.replace(words, cut_after=2) if end == "failed" else words]
    model = await LLM(ds).model(purpose="summaries")
    chunks: list[str] = []

    async def consume() -> None:
        async for chunk in model.chain("hi"):
            chunks.append(chunk)

    task = asyncio.ensure_future(consume())
    while not chunks:
        await asyncio.sleep(0.01)
    # Its first chunk has reached the caller and its stream goes on: it holds its estimate.
    assert await reserved(ds) == ONE_PROMPT
    with pytest.raises(BudgetExceededError):
        await model.prompt("another")
    if end == "completed":
        await task
    else:
        if end == "cancelled":
            task.cancel()
        with pytest.raises(ProviderError if end == "failed" else asyncio.CancelledError):
            await task  # a cut stream, or its task cancelled mid-stream
    assert await reserved(ds) == 0  # settled: its row counts instead
    outcomes = {"completed": "ok", "failed": "connection", "cancelled": "cancelled"}
    assert [row.outcome for row in await LLM(ds).usage_records()] == [outcomes[end]]
    assert provider.counts.requests == 1  # the other prompt was refused, never sent


def test_an_amount_below_a_hundredth_of_a_cent_does_not_read_as_nothing() -> None:
    amounts = (0.0, 0.000046, 0.00012, 0.5, 1234.5)
    assert [usd(amount) for amount in amounts] == [
        "$0.0000",
        "$0.000046",
        "$0.0001",
        "$0.5000",
        "$1,234.50",
    ]


async def test_a_prompt_whose_retry_starts_in_a_new_period_holds_its_estimate_there(
    make_datasette: MakeDatasette, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wall clock, half a second before a UTC midnight. Three prompts are admitted on the
    # day ending; the provider rate-limits them for 1.5 s, so their retries start on the new
    # day, where they are charged (a row's time is when its attempt starts). Ten more prompts
    # start on the new day before those retries. The new day spends at most its budget and
    # one estimate: the retries are admitted there as new prompts are, not charged to a day
    # on which nothing held their estimate (then the day spent six prompts' worth).
    real = time.time
    offset = (real() // 86_400 + 1) * 86_400 - 0.5 - real()
    monkeypatch.setattr(time, "time", lambda: real() + offset)
    ds = make_datasette(config({"usd": 3 * ONE_PROMPT, "estimate_usd": ONE_PROMPT}))
    provider.script = [Reply(status=429, message="slow down", headers={"retry-after": "1.5"})] * 3
    model = await LLM(ds).model(purpose="summaries")

    async def one(number: int) -> str:
        return await (await model.prompt(f"prompt {number}")).text()

    ending_day = [asyncio.ensure_future(one(number)) for number in range(3)]
    await asyncio.sleep(1.0)  # the new day has begun
    new_day = period_start("day", time.time())
    assert new_day > real() + offset - 1.0
    outcomes = await asyncio.gather(*(one(number) for number in range(10)), return_exceptions=True)
    outcomes += await asyncio.gather(*ending_day, return_exceptions=True)
    await settled(ds)
    rows = await LLM(ds).usage_records()
    spent_new_day = sum(row.cost or 0.0 for row in rows if row.time >= new_day)
    assert spent_new_day <= 4 * ONE_PROMPT + 1e-12, spent_new_day / ONE_PROMPT
    assert all(isinstance(o, str | BudgetExceededError) for o in outcomes), outcomes
