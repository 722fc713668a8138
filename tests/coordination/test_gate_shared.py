"""Two Datasettes naming one Redis share each model's cool-down, ``rpm`` and ``concurrency``.

Each ``Datasette`` stands for one process: its own ``State``, its own coordinator, its own
mirror of the cool-downs it has learned. Real prompts go through ``LLM(ds).model(purpose=...)``
and llm's OpenAI plugin to the local provider (``tests/openai_server.py``), which measures
what reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from datasette.app import Datasette

from datasette_llm import LLM
from datasette_llm.coordination import close_coordination
from tests.conftest import MakeDatasette
from tests.openai_server import Provider, Reply, serve, write_extra_models
from tests.redis_server import RedisServer

PRIMARY: Final = "from the primary"
BACKUP: Final = "from the backup"

Processes = Callable[[dict[str, Any]], Awaitable[tuple[Datasette, Datasette]]]


@pytest.fixture
def providers(llm_user_dir: Path) -> Iterator[tuple[Provider, Provider]]:
    """``primary-gpt``'s provider and ``backup-gpt``'s, each answering which it is."""
    with serve(default=Reply(text=PRIMARY)) as primary, serve(default=Reply(text=BACKUP)) as backup:
        write_extra_models(llm_user_dir, {"primary-gpt": primary, "backup-gpt": backup})
        yield primary, backup


@pytest.fixture
async def processes(
    make_datasette: MakeDatasette, redis_server: RedisServer, prefix: str
) -> AsyncIterator[Processes]:
    """Make two Datasettes with the same configuration, sharing this test's Redis keys; their
    coordinators are closed after the test."""
    made: list[Datasette] = []

    async def make(config: dict[str, Any]) -> tuple[Datasette, Datasette]:
        shared = {**config, "coordination": {"redis": redis_server.url, "prefix": prefix}}
        first, second = make_datasette(shared), make_datasette(shared)
        made.extend((first, second))
        return first, second

    yield make
    for datasette in made:
        await close_coordination(datasette)  # as the shutdown hook does


async def prompt(ds: Datasette, purpose: str, text: str = "hi") -> str:
    model = await LLM(ds).model(purpose=purpose)
    return await (await model.prompt(text)).text()


def too_many(seconds: str) -> Reply:
    return Reply(
        status=429, message="Rate limit reached for requests", headers={"retry-after": seconds}
    )


def cool_downs(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """Each cool-down's start and end logged: its level, and its message up to the reason."""
    lines = [(r.levelname, r.getMessage().removeprefix("datasette-llm: ")) for r in caplog.records]
    return [
        (level, message.partition(" (")[0].partition(":")[0])
        for level, message in lines
        if message.startswith("model ") and "rate limit" in message
    ]


# Cool-downs


async def test_a_rate_limit_seen_by_one_process_sends_the_others_to_the_fallback_or_waits_them(
    processes: Processes,
    providers: tuple[Provider, Provider],
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, backup = providers
    first, second = await processes(
        {
            "purposes": {
                # Falls back on rate_limit (by default), and may not wait 2 s for the primary.
                "summaries": {"model": "primary-gpt", "fallbacks": ["backup-gpt"], "max_wait": 1},
                # No fallback: waits for the primary's cool-down to end.
                "patient": {"model": "primary-gpt", "max_wait": 5},
            }
        }
    )
    caplog.set_level(logging.INFO, logger="datasette_llm")
    primary.script = [too_many("2")]
    assert await prompt(first, "summaries") == BACKUP
    [limited] = primary.received_at()

    # The second process never saw the 429, and sends the primary nothing while it cools.
    assert await prompt(second, "summaries") == BACKUP
    assert await prompt(second, "summaries") == BACKUP
    assert len(primary.requests) == 1
    assert len(backup.requests) == 3

    # A prompt that may not fall back waits until the Retry-After has passed, then probes.
    assert await prompt(second, "patient") == PRIMARY
    sent = primary.received_at()
    assert len(sent) == 2
    # The cool-down began once the 429 came back, after its request arrived: 2 s from then.
    assert sent[1] - limited >= 2 - 0.01

    # Each process says why its fallback answers: the first saw the 429, the second only
    # learned that the primary cools down.
    reasons = [
        r.getMessage().partition(" (")[2].partition(")")[0]
        for r in caplog.records
        if "instead of their routed model" in r.getMessage()
    ]
    assert reasons == ["it failed with rate_limit", "it is cooling down after rate limits"]

    # Each change is logged once, by the process that saw it: the first, then the second.
    assert cool_downs(caplog) == [
        ("WARNING", "model 'primary-gpt' is rate limited by its provider and cools down for 2 s"),
        ("INFO", "model 'primary-gpt' answers again after its rate limits"),
    ]


async def test_a_process_that_never_saw_the_rate_limit_shows_the_cool_down_in_its_status(
    processes: Processes, providers: tuple[Provider, Provider]
) -> None:
    primary, _ = providers
    purpose = {"model": "primary-gpt", "fallbacks": ["backup-gpt"], "max_wait": 1}
    config = {"purposes": {"summaries": purpose}}
    first, second = await processes(config)
    primary.script = [too_many("30")]
    assert await prompt(first, "summaries") == BACKUP
    second.root_enabled = True
    cookies = {"ds_actor": second.client.actor_cookie({"id": "root"})}
    document = (await second.client.get("/-/llm.json", cookies=cookies)).json()
    [status] = [p for p in document["status"]["purposes"] if p["name"] == "summaries"]
    assert status["status"] == "degraded"
    assert "'primary-gpt' cools down after rate limits until" in status["text"]


# rpm


async def test_requests_of_both_processes_leave_no_faster_than_the_shared_rpm(
    processes: Processes, providers: tuple[Provider, Provider]
) -> None:
    primary, _ = providers
    rpm = 600  # ten a second
    first, second = await processes(
        {"purposes": {"p": {"model": {"model": "primary-gpt", "rpm": rpm}}}}
    )
    # Each process's first prompt pays for what a process does once (imports, its first
    # connections): a request that left its turn that late would arrive with the next one.
    assert list(await asyncio.gather(prompt(first, "p"), prompt(second, "p"))) == [PRIMARY] * 2
    started = time.monotonic()
    answers = await asyncio.gather(
        *(prompt(ds, "p", f"{n}") for n in range(12) for ds in (first, second))
    )
    assert answers == [PRIMARY] * 24
    assert len(primary.received_at(since=started)) == 24
    # Each alone would send 20 a second.
    assert primary.busiest_second(since=started) <= rpm / 60 + 1
    assert time.monotonic() - started >= 23 * 60 / rpm * 0.9


# concurrency


async def test_both_processes_together_hold_no_more_places_than_the_shared_concurrency(
    processes: Processes, providers: tuple[Provider, Provider]
) -> None:
    primary, _ = providers
    primary.default = Reply(text=PRIMARY, delay=0.3)  # each request takes 0.3 s
    first, second = await processes(
        {"purposes": {"p": {"model": {"model": "primary-gpt", "concurrency": 2}}}}
    )
    started = time.monotonic()
    answers = await asyncio.gather(
        *(prompt(ds, "p", f"{n}") for n in range(4) for ds in (first, second))
    )
    assert answers == [PRIMARY] * 8
    # A place comes back once its answer has completed, at least 0.3 s after its request
    # arrived: no window shorter than that sees more requests arrive than there are places.
    received = primary.received_at()
    busiest = max(sum(1 for at in received if start <= at < start + 0.25) for start in received)
    assert busiest == 2  # each alone would hold 2: 4 at once
    assert time.monotonic() - started >= 4 * 0.3


async def test_tries_waiting_for_a_shared_place_do_not_go_to_a_model_that_started_to_cool(
    processes: Processes, providers: tuple[Provider, Provider]
) -> None:
    """Through Redis, three prompts at once under ``concurrency: 1``: the first is answered
    429 with a Retry-After beyond ``max_wait``; its cool-down is recorded before its place is
    given back, so the two waiting for that place go to the fallback."""
    primary, backup = providers
    primary.default = Reply(
        status=429, message="slow down", headers={"retry-after": "30"}, delay=0.1
    )
    limited = {"model": "primary-gpt", "concurrency": 1}
    purpose = {"model": limited, "fallbacks": ["backup-gpt"], "max_wait": 1}
    first, _ = await processes({"purposes": {"summaries": purpose}})
    answers = await asyncio.gather(*(prompt(first, "summaries", f"p{n}") for n in range(3)))
    assert answers == [BACKUP] * 3
    assert (len(primary.requests), len(backup.requests)) == (1, 3)
