"""Usage exactness: under injected faults, the ledger holds exactly one row per attempt.

Hundreds of concurrent prompts go through a purpose with a fallback, both models on the local
provider (``tests/openai_server.py``), while 10% of its requests fail: dropped, answered after
the attempt's ``timeout``, cut mid-stream, or answered 500, drawn with a seed. What each prompt
says it did (``PromptResult.attempts`` and ``.usage``, seen by an ``llm_prompt_context`` hook,
and ``ProviderError.attempts`` for a prompt that failed) is compared with the rows written.

datasette-llm turns off the ``openai`` client's own retries, so every request is an attempt of
ours and one row: ``retries`` counts them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from datasette.app import Datasette

from datasette_llm import LLM, PromptResult, ProviderError, UsageRecord
from datasette_llm.provider_errors import Attempt
from datasette_llm.typing import hookimpl
from datasette_llm.usage.ledger import COLUMNS, TABLE, ledger_for, record_of
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.openai_server import Provider, Reply, serve, write_extra_models

PROMPTS: Final = 1000
CONCURRENCY: Final = 50  # the 1,000 concurrent prompts, 50 at a time (one event loop)
FAULTS: Final = {
    "drops": 0.025,
    "timeouts": 0.025,
    "cuts": 0.025,
    "server_errors": 0.025,
    "timeout_delay": 4.0,
    "seed": 20240611,
}
_LIMITS: Final = {"timeout": 1.5, "deadline": 5.0}
PURPOSES: Final = {
    # One try of each model, then it fails: faults fall back at once.
    "summaries": {"model": "primary-gpt", "fallbacks": ["backup-gpt"], "retries": 0, **_LIMITS},
    # Three tries of each model: a model is retried before the prompt falls back.
    "retried": {"model": "backup-gpt", "fallbacks": ["primary-gpt"], "retries": 2, **_LIMITS},
}
# Prompts that fail at once: auth is neither retried nor a reason to fall back.
REFUSED: Final = 5


class Results:
    """Keep each prompt's ``PromptResult`` (one object for all its attempts), by prompt text."""

    def __init__(self) -> None:
        self.by_prompt: dict[str, PromptResult] = {}

    @hookimpl
    def llm_prompt_context(
        self, prompt: str
    ) -> Callable[[PromptResult], AbstractAsyncContextManager[object]]:
        @asynccontextmanager
        async def around(result: PromptResult) -> AsyncIterator[None]:
            assert self.by_prompt.setdefault(prompt, result) is result
            yield

        return around


@dataclass(frozen=True)
class Ended:
    """How one prompt ended, as it reports it."""

    prompt: str
    attempts: tuple[Attempt, ...]
    usage: tuple[UsageRecord, ...]
    error: ProviderError | None


@pytest.fixture
def provider(llm_user_dir: Path) -> Iterator[Provider]:
    with serve(**FAULTS) as running:
        write_extra_models(llm_user_dir, running, primary_gpt=None, backup_gpt=None)
        yield running


async def prompt_all(datasette: Datasette, results: Results) -> list[Ended]:
    """Make every prompt, at most ``CONCURRENCY`` at once; return how each ended."""
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(number: int) -> Ended:
        prompt = f"prompt {number}"
        error: ProviderError | None = None
        async with semaphore:
            purpose = "retried" if number % 2 else "summaries"
            model = await LLM(datasette).model(purpose=purpose)
            try:
                await (await model.prompt(prompt)).text()
            except ProviderError as raised:
                error = raised
        result = results.by_prompt[prompt]
        if error is not None:
            assert error.attempts == tuple(result.attempts), prompt
        return Ended(prompt, tuple(result.attempts), tuple(result.usage), error)

    return await asyncio.gather(*(one(number) for number in range(PROMPTS)))


async def table_rows(datasette: Datasette) -> list[UsageRecord]:
    """Every row of the usage table, read with SQL (duplicates and all)."""
    ledger = ledger_for(datasette)
    db = ledger.database_object()
    rows = (await db.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE}")).rows
    return [record_of(row) for row in rows]


def check_prompt(ended: Ended) -> None:
    """A prompt's records follow its attempts one for one: number, model, outcome."""
    numbers = [attempt.number for attempt in ended.attempts]
    assert numbers == list(range(1, len(numbers) + 1)), ended
    expected = [(a.number, a.model_id, a.error or "ok", a.fell_back_from) for a in ended.attempts]
    recorded = [(r.attempt, r.model, r.outcome, r.fell_back_from) for r in ended.usage]
    assert recorded == expected, ended.prompt
    outcomes = [record.outcome for record in ended.usage]
    if ended.error is None:
        assert outcomes[-1] == "ok" and "ok" not in outcomes[:-1], ended.prompt
    else:
        assert "ok" not in outcomes, ended.prompt
        # The error is the last attempt's, or a timeout that was no attempt: the deadline
        # passed before another try could be sent (nothing sent, so no row of its own).
        deadline_before_a_try = ended.error.kind == "timeout" and outcomes[-1] != "timeout"
        assert outcomes[-1] == ended.error.kind or deadline_before_a_try, ended.prompt


async def test_every_attempt_of_faulty_concurrent_prompts_is_exactly_one_row(
    make_datasette: MakeDatasette, provider: Provider, register_plugin: RegisterPlugin
) -> None:
    results = Results()
    register_plugin(results, name="usage-exactness-results")
    provider.script = [Reply(status=401, message="Incorrect API key provided")] * REFUSED
    ds = make_datasette({"purposes": PURPOSES})
    ended = await prompt_all(ds, results)
    for prompt in ended:
        check_prompt(prompt)

    ledger = ledger_for(ds)
    await ledger.flush()
    rows = await table_rows(ds)
    reported = {record.id: (prompt.prompt, record) for prompt in ended for record in prompt.usage}
    ids = Counter(row.id for row in rows)
    assert [id_ for id_, count in ids.items() if count > 1] == [], "no row twice"
    assert set(ids) - set(reported) == set(), "no row for an attempt no prompt reported"
    assert set(reported) - set(ids) == set(), "no attempt without its row"
    assert all(row == reported[row.id][1] for row in rows), "each row is the record reported"
    per_attempt = Counter((reported[row.id][0], row.attempt) for row in rows)
    expected = {(prompt.prompt, a.number) for prompt in ended for a in prompt.attempts}
    assert set(per_attempt) == expected and set(per_attempt.values()) == {1}
    assert (ledger.written, ledger.pending, ledger.dropped) == (len(rows), 0, 0)

    # The faults happened, and reached the ledger as failed attempts, fallbacks included.
    counts = provider.counts
    assert min(counts.drops, counts.cuts, counts.delayed, counts.server_errors) > 0, counts
    outcomes = Counter(row.outcome for row in rows)
    assert outcomes["ok"] == sum(prompt.error is None for prompt in ended)
    assert {"timeout", "connection", "auth"} <= set(outcomes), outcomes
    assert any(prompt.error is not None for prompt in ended)
    assert any(row.fell_back_from is not None for row in rows), "a prompt fell back"
    assert any(row.attempt > 1 and row.fell_back_from is None for row in rows), "one retried"


def synthetic(number: int) -> UsageRecord:
    return UsageRecord(
        id=f"synthetic-{number}",
        time=1_700_000_000.0 + number,
        purpose="summaries",
        requested_model="primary-gpt",
        model="primary-gpt",
        actor_id=None,
        input_tokens=3,
        output_tokens=5,
        cached_tokens=None,
        duration=0.25,
        first_token=0.1,
        outcome="ok",
        attempt=1,
        fell_back_from=None,
        cost=None,
    )


@pytest.mark.skipif(
    not hasattr(Datasette, "invoke_shutdown"), reason="Datasette has no invoke_shutdown"
)
async def test_datasettes_shutdown_writes_the_rows_still_pending(tmp_path: Path) -> None:
    internal = str(tmp_path / "internal.db")
    plugins: dict[str, Any] = {"plugins": {"datasette-llm": {}}}
    first = Datasette(memory=True, internal=internal, config=plugins)
    ledger = ledger_for(first)
    for number in range(1000):
        ledger.record(synthetic(number))
    assert (ledger.pending, ledger.written) == (1000, 0)  # the writer has not run yet
    await first.invoke_shutdown()
    again = Datasette(memory=True, internal=internal, config=plugins)
    rows = await LLM(again).usage_records()
    assert [row.id for row in rows] == [f"synthetic-{number}" for number in range(1000)]
