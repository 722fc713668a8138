"""A budget shared through Redis: the processes of one Datasette spend it together.

Each ``Datasette`` here stands for one process: its own ledger, its own coordinator, all
naming the same Redis (``coordination: {redis: ...}``). Real prompts, through llm's OpenAI
plugin, to the local provider (``tests/openai_server.py``), whose default answer costs
``ONE_PROMPT`` at the configured price.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Final

import pytest
from datasette.app import Datasette
from redis.asyncio import Redis

from datasette_llm import LLM, BudgetExceededError
from datasette_llm.coordination import Refused
from datasette_llm.usage.budgets import coordinator_of, period_start, settled
from datasette_llm.usage.ledger import flush_usage
from tests.openai_server import Provider, Reply, serve, write_extra_models
from tests.redis_server import RedisServer

PRICING: Final = {"primary-gpt": {"input": 2.0, "output": 8.0}}
ONE_PROMPT: Final = (3 * 2.0 + 5 * 8.0) / 1_000_000  # 3 tokens in, 5 out: the default reply

Processes = Callable[[int, float], Awaitable[list[Datasette]]]


@pytest.fixture
def provider(llm_user_dir: Path) -> Iterator[Provider]:
    with serve() as running:
        write_extra_models(llm_user_dir, running, primary_gpt=None)
        yield running


@pytest.fixture
async def processes(redis_server: RedisServer, prefix: str) -> AsyncIterator[Processes]:
    """Make Datasette instances sharing this test's Redis keys, each with a budget of ``usd``
    a day for 'summaries'; their coordinators are closed after the test."""
    made: list[Datasette] = []

    async def make(count: int, usd: float) -> list[Datasette]:
        coordination = {"redis": redis_server.url, "processes": count, "prefix": prefix}
        budget = {"usd": usd, "per": "day", "estimate_usd": ONE_PROMPT}
        section = {
            "pricing": PRICING,
            "coordination": coordination,
            "purposes": {"summaries": {"model": "primary-gpt", "budget": budget}},
        }
        config = {"plugins": {"datasette-llm": section}}
        fresh = [Datasette(memory=True, config=config) for _ in range(count)]
        made.extend(fresh)
        return fresh

    yield make
    for datasette in made:
        await settled(datasette)
        await coordinator_of(datasette).close()


async def spent(datasette: Datasette) -> float:
    """What the ledger of one process recorded."""
    return sum(row.cost or 0.0 for row in await LLM(datasette).usage_records())


async def shared(datasette: Datasette) -> Refused:
    """What every process sees spent and held today, once this one's holds and costs have
    reached Redis (asked as a prompt that a budget of nothing refuses)."""
    await settled(datasette)
    since = period_start("day", time.time())
    seen = await coordinator_of(datasette).reserve("summaries", since, 0.0, 0.0, 0.0)
    assert isinstance(seen, Refused)
    return seen


async def prompt(datasette: Datasette, text: str) -> object:
    model = await LLM(datasette).model(purpose="summaries")
    return await model.prompt(text)


async def test_concurrent_prompts_of_three_processes_spend_at_most_the_budget_and_one_estimate(
    processes: Processes, provider: Provider
) -> None:
    usd = 9.5 * ONE_PROMPT  # worth nine and a half prompts: the tenth may overspend
    trio = await processes(3, usd)
    provider.latency = 0.2  # every prompt is in flight at once
    prompts = (prompt(trio[number % 3], f"prompt {number}") for number in range(150))
    outcomes = await asyncio.gather(*prompts, return_exceptions=True)
    refused = [outcome for outcome in outcomes if isinstance(outcome, BudgetExceededError)]
    answered = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    assert (len(answered), len(refused)) == (10, 140)
    assert provider.counts.requests == 10
    spends = [await spent(datasette) for datasette in trio]
    assert sum(spends) <= usd + ONE_PROMPT
    assert sum(1 for spend in spends if spend) >= 2  # the budget was spent together
    assert "held by prompts in flight" in str(refused[0])
    for datasette in trio:  # every hold given back; the shared spend is the ledgers' sum
        seen = await shared(datasette)
        assert seen.reserved == 0
        assert seen.spent == pytest.approx(sum(spends))


async def test_what_one_process_spent_refuses_the_prompts_of_the_others(
    processes: Processes, provider: Provider
) -> None:
    first, second, third = await processes(3, 1.5 * ONE_PROMPT)
    await prompt(first, "one")
    await settled(first)  # its cost has reached Redis
    await prompt(second, "two")  # within: one prompt spent of one and a half
    await settled(second)
    with pytest.raises(BudgetExceededError) as raised:
        await prompt(third, "three")
    assert raised.value.spent == pytest.approx(2 * ONE_PROMPT)  # the others' spend
    assert await spent(third) == 0
    assert provider.counts.requests == 2


async def test_a_prompt_cancelled_in_one_process_is_charged_for_every_process(
    processes: Processes, provider: Provider
) -> None:
    first, second = await processes(2, 1.5 * ONE_PROMPT)
    provider.default = Reply(delay=30)
    task = asyncio.ensure_future(prompt(first, "slow"))
    while provider.counts.requests < 1:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    seen = await shared(first)  # charged at its estimate, its hold given back
    assert seen.spent == pytest.approx(ONE_PROMPT)
    assert seen.reserved == 0
    provider.default = Reply()
    await prompt(second, "within")  # one prompt spent of one and a half
    await settled(second)
    with pytest.raises(BudgetExceededError):
        await prompt(first, "over")
    assert provider.counts.requests == 2


async def test_a_redis_that_lost_its_data_starts_the_period_from_the_shared_ledger(
    redis_server: RedisServer, prefix: str, provider: Provider, tmp_path: Path
) -> None:
    """Two processes sharing one ``--internal`` file: after Redis lost its keys, the period's
    spend starts again from the table both write to, not from what the process that holds the
    next prompt recorded itself (docs/deploying.md, "When Redis fails")."""
    coordination = {"redis": redis_server.url, "processes": 2, "prefix": prefix}
    budget = {"usd": 2.5 * ONE_PROMPT, "per": "day", "estimate_usd": ONE_PROMPT / 10}
    section = {
        "pricing": PRICING,
        "coordination": coordination,
        "purposes": {"summaries": {"model": "primary-gpt", "budget": budget}},
    }
    internal = str(tmp_path / "internal.db")
    config = {"plugins": {"datasette-llm": section}}
    first, second = (Datasette(memory=True, internal=internal, config=config) for _ in range(2))
    try:
        await prompt(first, "one")  # the first has read, and keeps, its own spend: one prompt
        await prompt(second, "two")
        await prompt(second, "three")
        await flush_usage(second)  # three prompts in the shared table: the budget is spent
        await settled(first)
        await settled(second)
        redis = Redis.from_url(redis_server.url)
        try:
            for key in await redis.keys(f"{prefix}:*"):  # Redis restarted without its data
                await redis.delete(key)
        finally:
            await redis.aclose()
        with pytest.raises(BudgetExceededError) as raised:
            await prompt(first, "four")
        assert raised.value.spent == pytest.approx(3 * ONE_PROMPT)
        assert provider.counts.requests == 3
    finally:
        for datasette in (first, second):
            await settled(datasette)
            await coordinator_of(datasette).close()
