"""The failure matrix: every path of a prompt against every way a provider fails, or its caller
cancels, asserting what docs/resilience.md and docs/usage.md say happens.

Against llm's own OpenAI plugin and two local providers (``tests/openai_server.py``) that answer
as the real service does: the ``openai`` client keeps its default options, and no header that
only tests send tells it anything. The primary fails as the cell says, once; the
backup (its fallback) answers. Every cell checks the ledger against the providers' request logs
(rows for a model = requests its provider received) and that the call ended in bounded time.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

import pytest
from datasette.app import Datasette

from datasette_llm import LLM, ProviderError, UsageRecord
from tests.conftest import MakeDatasette
from tests.openai_server import Provider, Reply, serve, write_extra_models

PRIMARY: Final = "from the primary"
BACKUP: Final = "from the backup"
WORDS: Final = " ".join(f"w{n}" for n in range(12))
PATHS: Final = ["prompt", "chain text", "chain responses", "conversation", "group", "group chain"]


def too_many(retry_after: str | None) -> Reply:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    return Reply(status=429, message="Rate limit reached for requests", headers=headers)


def http_date(seconds: float) -> str:
    return email.utils.format_datetime(
        datetime.now(timezone.utc) + timedelta(seconds=seconds), usegmt=True
    )


@dataclass(frozen=True)
class Cell:
    """A failure of the primary's first request and what the call then does.

    Attributes:
        reply: The primary's first answer (then it answers ``PRIMARY``).
        settings: The purpose's resilience settings for the cell.
        answer: The text the call ends with, or ``None``: it raises ``ProviderError``.
        kind: The kind of the primary's failed attempt (its ledger row's outcome).
        waited: The least the call takes (it waited for the primary), in seconds.
        cools: Whether the primary cools down after: the next prompt goes to the backup.
        raised: The kind of ``ProviderError`` raised by the paths in ``raises``.
        raises: The paths that raise ``raised`` instead of answering.
    """

    reply: Reply
    settings: dict[str, Any] = field(default_factory=dict)
    answer: str = BACKUP
    kind: str = "rate_limit"
    waited: float = 0.0
    cools: bool = False
    raised: str | None = None
    raises: tuple[str, ...] = ()


CELLS: Final = {
    # Retry-After within what the prompt may wait: the same model again, after it.
    "429 retry-after small": Cell(too_many("0.2"), answer=PRIMARY, waited=0.2),
    # Longer than the attempt's timeout, but the client does not sleep through it any more.
    "429 retry-after > timeout": Cell(
        too_many("0.6"), {"timeout": 0.3}, answer=PRIMARY, waited=0.6
    ),
    # Longer than what is left of the deadline: the fallback at once; the primary cools down.
    "429 retry-after > deadline": Cell(too_many("5"), {"deadline": 2}, cools=True),
    # Longer than max_wait (no deadline): the same.
    "429 retry-after huge": Cell(too_many("86400"), cools=True),
    # As an HTTP date, 30 s ahead: longer than max_wait, read as a date.
    "429 retry-after http date": Cell(too_many(http_date(3600)), {"max_wait": 1}, cools=True),
    # None (an exhausted quota answers so): with a fallback left, the fallback at once and the
    # primary cools down; with none, the same model again after its cool-down (1 s).
    "429 no retry-after": Cell(too_many(None), cools=True),
    "429 no retry-after, no fallback": Cell(
        too_many(None), {"fallbacks": []}, answer=PRIMARY, waited=1.0
    ),
    # A 500 with tries left: the same model again, after the backoff (0.5 s and jitter).
    "500": Cell(
        Reply(status=500, message="The server had an error"),
        answer=PRIMARY,
        kind="server_error",
        waited=0.5,
    ),
    "500, no retries": Cell(
        Reply(status=500, message="The server had an error"), {"retries": 0}, kind="server_error"
    ),
    "dropped connection": Cell(Reply(drop=True), {"retries": 0}, kind="connection"),
    # Cut after 2 chunks: retried where no text has reached the caller yet; a chain streaming
    # its text has given the caller its first chunk, so it ends.
    "stream cut": Cell(
        Reply(text=WORDS, cut_after=2),
        {"retries": 0},
        kind="connection",
        raised="connection",
        raises=("chain text", "group chain"),
    ),
}


@dataclass
class Providers:
    primary: Provider
    backup: Provider


@pytest.fixture
def providers(llm_user_dir: Path) -> Iterator[Providers]:
    with (
        serve(default=Reply(text=PRIMARY)) as primary,
        serve(default=Reply(text=BACKUP)) as backup,
    ):
        write_extra_models(llm_user_dir, {"primary-gpt": primary, "backup-gpt": backup})
        yield Providers(primary, backup)


def config(**settings: Any) -> dict[str, Any]:
    purpose = {"model": "primary-gpt", "fallbacks": ["backup-gpt"], **settings}
    return {"purposes": {"summaries": purpose}}


async def call(ds: Datasette, path: str, prompt: str = "hi") -> str:
    """Send ``prompt`` for the purpose along ``path``; return the text it ends with."""
    if path == "group":
        async with LLM(ds).group(purpose="summaries") as grouped:
            return await (await grouped.prompt(prompt)).text()
    if path == "group chain":  # the group reads its responses to their end as it ends
        async with LLM(ds).group(purpose="summaries") as grouped:
            return await grouped.chain(prompt).text()
    model = await LLM(ds).model(purpose="summaries")
    if path == "prompt":
        return await (await model.prompt(prompt)).text()
    if path == "chain text":
        return await model.chain(prompt).text()
    if path == "chain responses":
        return "".join([await r.text() async for r in model.chain(prompt).responses()])
    conversation = model.conversation()
    return await (await conversation.prompt(prompt)).text()


async def rows(ds: Datasette) -> list[UsageRecord]:
    return await LLM(ds).usage_records()


async def books_balance(ds: Datasette, providers: Providers) -> list[UsageRecord]:
    """Assert: the ledger's rows for each model = the requests its provider received."""
    await asyncio.sleep(0.05)  # the providers run in threads of their own
    made = await rows(ds)
    pairs = (("primary-gpt", providers.primary), ("backup-gpt", providers.backup))
    for model_id, provider in pairs:
        mine = [row.outcome for row in made if row.model == model_id]
        assert len(mine) == provider.counts.requests, (model_id, mine)
    return made


async def timed(work: Awaitable[str]) -> tuple[str | ProviderError, float]:
    began = time.monotonic()
    try:
        outcome: str | ProviderError = await asyncio.wait_for(work, 20)
    except ProviderError as error:
        outcome = error
    return outcome, time.monotonic() - began


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(CELLS))
async def test_a_failure_of_the_provider(
    make_datasette: MakeDatasette, providers: Providers, name: str, path: str
) -> None:
    cell = CELLS[name]
    providers.primary.script = [cell.reply]
    ds = make_datasette(config(**cell.settings))
    outcome, took = await timed(call(ds, path))
    if path in cell.raises:
        assert isinstance(outcome, ProviderError), outcome
        assert (outcome.kind, outcome.model_id) == (cell.raised, "primary-gpt")
        # Every attempt, the last one with the failure it ended with (a chain cut mid-stream
        # had been answering).
        assert outcome.attempts, outcome
        assert (outcome.attempts[-1].model_id, outcome.attempts[-1].error) == (
            "primary-gpt",
            cell.raised,
        )
    else:
        assert outcome == cell.answer
    assert cell.waited <= took < cell.waited + 5  # bounded: no sleeping through Retry-After
    made = await books_balance(ds, providers)
    assert next(row.outcome for row in made if row.model == "primary-gpt") == cell.kind
    # The cool-down: the next prompt skips the primary for its fallback, or finds it recovered.
    asked = providers.primary.counts.requests
    assert await call(ds, "prompt") == (BACKUP if cell.cools else PRIMARY)
    assert providers.primary.counts.requests == asked + (not cell.cools)
    await books_balance(ds, providers)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


CANCELS: Final = ["before the request", "during the request", "mid-stream"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("moment", CANCELS)
async def test_a_cancellation(
    make_datasette: MakeDatasette, providers: Providers, moment: str, path: str
) -> None:
    primary = providers.primary
    slow = Reply(delay=30) if moment == "during the request" else Reply(text=WORDS, interval=0.1)
    primary.script = [slow]
    ds = make_datasette(config())
    began = time.monotonic()
    task = asyncio.ensure_future(call(ds, path))
    if moment == "during the request":
        await until(lambda: primary.counts.requests == 1)
        await asyncio.sleep(0.1)
    elif moment == "mid-stream":
        await until(lambda: primary.counts.requests == 1)
        await asyncio.sleep(0.35)  # about three chunks of twelve
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - began < 5
    primary.script = []  # not sent, when cancelled before the request
    made = await books_balance(ds, providers)
    if moment == "before the request":
        assert made == []
    else:
        [row] = made
        assert (row.model, row.outcome) == ("primary-gpt", "cancelled")
        if moment == "mid-stream":  # charged for what it received
            assert row.output_tokens is not None and row.output_tokens >= 1
    # A cancellation is not the provider's failure: the primary answers the next prompt.
    assert await call(ds, "prompt") == PRIMARY
    await books_balance(ds, providers)
