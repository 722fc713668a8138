"""The usage ledger: one row per attempt, never any text, priced, persistent, budgeted.

Against llm's own OpenAI plugin and the local provider (``tests/openai_server.py``), whose
answers report token usage, and the suite's own models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest
from datasette.app import Datasette

from datasette_llm import LLM, BudgetExceededError, PromptResult, ProviderError, UsageRecord
from datasette_llm.typing import PromptContextFactory, hookimpl
from datasette_llm.usage import ledger as ledger_module
from datasette_llm.usage.ledger import TABLE, Ledger, ledger_for
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.openai_server import Provider, Reply, serve, write_extra_models

PRICING: Final = {
    "primary-gpt": {"input": 2.0, "output": 8.0},
    "backup-gpt": {"input": 1.0, "output": 4.0, "cached_input": 0.5},
}


def config(**extra: Any) -> dict[str, Any]:
    purpose = {"model": "primary-gpt", "fallbacks": ["backup-gpt"]}
    return {"pricing": PRICING, "purposes": {"summaries": purpose}, **extra}


@pytest.fixture
def provider(llm_user_dir: Path) -> Iterator[Provider]:
    with serve() as running:
        write_extra_models(llm_user_dir, running, primary_gpt=None, backup_gpt=None)
        yield running


async def records(ds: Datasette, **filters: Any) -> list[UsageRecord]:
    return await LLM(ds).usage_records(**filters)


async def test_every_attempt_is_one_row_with_tokens_cost_and_outcome(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config(retries=0))
    provider.script = [
        Reply(status=500, message="broken"),
        Reply(text="one two three"),
    ]
    model = await LLM(ds).model(purpose="summaries", actor={"id": "alice"})
    response = await model.prompt("Summarize this")
    failed, answered = await records(ds)
    assert (failed.model, failed.outcome, failed.attempt, failed.cost) == (
        "primary-gpt",
        "server_error",
        1,
        None,
    )
    assert (answered.model, answered.outcome, answered.attempt) == ("backup-gpt", "ok", 2)
    assert answered.fell_back_from == "primary-gpt"
    assert (answered.requested_model, answered.purpose, answered.actor_id) == (
        "primary-gpt",
        "summaries",
        "alice",
    )
    usage = await response.usage()
    assert (answered.input_tokens, answered.output_tokens) == (usage.input, usage.output) == (3, 3)
    assert answered.cost == pytest.approx((3 * 1.0 + 3 * 4.0) / 1_000_000)
    assert answered.duration >= 0 and answered.first_token is not None
    assert answered.first_token <= answered.duration


async def test_no_row_holds_prompt_or_response_text(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config())
    provider.default = Reply(text="the secret answer")
    await (await LLM(ds).model(purpose="summaries")).prompt("the private question")
    await ledger_for(ds).flush()
    db = ledger_for(ds).database_object()
    dump = repr((await db.execute(f"select * from {TABLE}")).rows)
    assert "secret answer" not in dump and "private question" not in dump
    assert [column for column in (await db.execute(f"select * from {TABLE}")).columns] == [
        "id",
        "time",
        "purpose",
        "requested_model",
        "model",
        "actor_id",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "duration",
        "first_token",
        "outcome",
        "attempt",
        "fell_back_from",
        "cost",
        "error",  # a failed attempt's error in short, as the provider wrote it (keys redacted)
        "sent",  # whether the provider received the request
    ]


async def test_a_model_without_a_price_has_no_cost_not_zero(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette({"purposes": {"summaries": {"model": "primary-gpt"}}})
    await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    [row] = await records(ds)
    assert row.cost is None
    assert row.input_tokens == 3


class Reprices:
    """An ``llm_prompt_context`` plugin that gives Datasette a new configuration mid-prompt."""

    def __init__(self, datasette: Datasette, section: dict[str, Any]) -> None:
        self.datasette = datasette
        self.section = section

    @hookimpl
    def llm_prompt_context(self) -> PromptContextFactory:
        return self.reconfigure

    @asynccontextmanager
    async def reconfigure(self, result: PromptResult) -> AsyncIterator[None]:
        self.datasette.config["plugins"]["datasette-llm"] = self.section  # type: ignore[index]
        yield


@pytest.mark.usefixtures("test_models")
async def test_a_prompt_is_priced_under_the_configuration_that_routed_it(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    routed_under = {
        "pricing": {"test-a": {"input": 1.0, "output": 2.0}},
        "purposes": {"summaries": {"model": "test-a"}},
    }
    ds = make_datasette(routed_under)
    model = await LLM(ds).model(purpose="summaries")
    repriced = {**routed_under, "pricing": {"test-a": {"input": 100.0, "output": 200.0}}}
    register_plugin(Reprices(ds, repriced))
    await model.prompt("Summarize this")
    [row] = await records(ds)
    assert (row.input_tokens, row.output_tokens) == (14, 21)  # the characters in and out
    assert row.cost == pytest.approx((14 * 1.0 + 21 * 2.0) / 1_000_000)
    assert LLM(ds).config.pricing["test-a"].input == 100.0  # the next prompt's price


async def test_replies_conversations_and_chain_steps_each_make_a_row(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config())
    model = await LLM(ds).model(purpose="summaries")
    first = await model.prompt("one")
    await first.reply("two")
    conversation = model.conversation()
    await conversation.prompt("three")
    await model.chain("four").text()
    rows = await records(ds)
    assert [row.outcome for row in rows] == ["ok"] * 4
    assert all(row.model == "primary-gpt" for row in rows)


async def test_hooks_and_listeners_see_the_records_of_the_prompt(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config())
    seen: list[UsageRecord] = []
    stop = LLM(ds).on_usage(seen.append)
    provider.script = [Reply(status=429, message="slow"), Reply()]
    await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    stop()
    await (await LLM(ds).model(purpose="summaries")).prompt("again")
    assert [record.outcome for record in seen] == ["rate_limit", "ok"]
    assert [record.id for record in seen] == [record.id for record in (await records(ds))[:2]]


async def test_rows_survive_a_restart_with_an_internal_database_file(
    tmp_path: Path, provider: Provider
) -> None:
    internal = str(tmp_path / "internal.db")
    plugins = {"plugins": {"datasette-llm": config()}}
    first = Datasette(memory=True, internal=internal, config=plugins)
    await (await LLM(first).model(purpose="summaries")).prompt("hi")
    await ledger_for(first).flush()  # what Datasette's shutdown hook does
    again = Datasette(memory=True, internal=internal, config=plugins)
    [row] = await LLM(again).usage_records()
    assert (row.model, row.outcome, row.purpose) == ("primary-gpt", "ok", "summaries")


async def test_usage_can_go_to_a_database_the_operator_names_or_nowhere(
    tmp_path: Path, provider: Provider
) -> None:
    path = tmp_path / "usage.db"
    named = {"plugins": {"datasette-llm": config(usage={"database": "usage"})}}
    ds = Datasette([str(path)], config=named)
    await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert len(await LLM(ds).usage_records()) == 1
    rows = (await ds.get_database("usage").execute(f"select count(*) from {TABLE}")).first()
    assert rows[0] == 1

    off = {"plugins": {"datasette-llm": config(usage={"enabled": False})}}
    quiet = Datasette(memory=True, config=off)
    await (await LLM(quiet).model(purpose="summaries")).prompt("hi")
    assert await LLM(quiet).usage_records() == []


async def test_a_spent_budget_refuses_or_falls_back(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    tiny = {"usd": 0.00001, "per": "day"}
    refusing = config()
    refusing["purposes"]["summaries"]["budget"] = {**tiny, "then": "refuse"}
    ds = make_datasette(refusing)
    provider.default = Reply(text="a b c d e f g h i j")
    await (await LLM(ds).model(purpose="summaries")).prompt("hi")  # spends 0.000086
    with pytest.raises(BudgetExceededError, match=r"has spent \$0.000086 of its \$1e-05 budget"):
        await (await LLM(ds).model(purpose="summaries")).prompt("hi")

    falling = config()
    falling["purposes"]["summaries"]["budget"] = {**tiny, "then": "fallback"}
    ds = make_datasette(falling)
    await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    provider.requests.clear()
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert response.model.model_id == "backup-gpt"
    assert [seen.body["model"] for seen in provider.requests] == ["backup-gpt-upstream"]


async def test_spend_from_an_earlier_run_counts_towards_the_budget(
    tmp_path: Path, provider: Provider
) -> None:
    internal = str(tmp_path / "internal.db")
    settings = config()
    settings["purposes"]["summaries"]["budget"] = {"usd": 0.00001, "per": "month"}
    plugins = {"plugins": {"datasette-llm": settings}}
    provider.default = Reply(text="a b c d e f g h i j")
    first = Datasette(memory=True, internal=internal, config=plugins)
    await (await LLM(first).model(purpose="summaries")).prompt("hi")
    await ledger_for(first).flush()
    again = Datasette(memory=True, internal=internal, config=plugins)
    with pytest.raises(BudgetExceededError):
        await (await LLM(again).model(purpose="summaries")).prompt("hi")


async def test_failed_attempts_without_a_fallback_are_recorded_before_the_error(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette({"pricing": PRICING, "purposes": {"summaries": {"model": "primary-gpt"}}})
    provider.default = Reply(status=401, message="bad key")
    with pytest.raises(ProviderError):
        await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    [row] = await records(ds)
    assert (row.outcome, row.input_tokens, row.cost) == ("auth", None, None)


def test_check_reports_prices_for_missing_models_and_budgets_that_cannot_count(
    provider: Provider,
) -> None:
    from datasette_llm._operator.checks import validate
    from datasette_llm.routing.models import build_registry

    raw = {
        "pricing": {"primary-gtp": {"input": 1, "output": 2}},
        "usage": {"enabled": False},
        "purposes": {"summaries": {"model": "primary-gpt", "budget": {"usd": 5}}},
    }
    problems = validate(raw, [], build_registry()).problems
    shown = {(problem.path, problem.severity): problem.message for problem in problems}
    assert shown[("plugins.datasette-llm.pricing.primary-gtp", "warning")] == (
        "model 'primary-gtp' is not installed, so this price is never used. "
        "Did you mean 'primary-gpt'?"
    )
    assert shown[("plugins.datasette-llm.purposes.summaries.budget", "error")].startswith(
        "a budget needs the usage ledger, which usage: {enabled: false} turns off"
    )
    raw["usage"] = {"enabled": True}
    problems = validate(raw, [], build_registry()).problems
    [budget] = [p for p in problems if p.path.endswith("summaries.budget")]
    assert budget.message.startswith(
        "'primary-gpt' has no price under plugins.datasette-llm.pricing"
    )


async def test_retention_deletes_rows_older_than_its_days(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config(usage={"retention_days": 30}))
    await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    [fresh] = await records(ds)
    ledger = ledger_for(ds)
    old = dataclasses.replace(fresh, id="old", time=time.time() - 31 * 86_400)
    kept = dataclasses.replace(fresh, id="kept", time=time.time() - 29 * 86_400)
    ledger.record(old)
    ledger.record(kept)
    await ledger.flush()
    assert sorted(row.id for row in await records(ds)) == sorted([fresh.id, "kept"])


async def test_the_ledger_keeps_its_waiting_rows_and_listeners_when_its_settings_change(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config())
    assert ledger_for(ds) is ledger_for(ds)  # the same settings: the same ledger
    await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    [row] = await records(ds)
    seen: list[UsageRecord] = []
    before = Ledger(ds, None, None)
    before.listen(seen.append)
    before.record(dataclasses.replace(row, id="waiting"))
    after = Ledger(ds, None, 30)
    after.take_over(before)
    after.record(dataclasses.replace(row, id="later"))
    await after.flush()
    assert before.pending == 0
    assert [record.id for record in seen] == ["waiting", "later"]
    assert sorted(r.id for r in await records(ds)) == sorted([row.id, "waiting", "later"])


def test_a_script_that_ends_without_flushing_still_writes_its_rows(tmp_path: Path) -> None:
    # A script's asyncio.run ends right after its prompt: the writer, still gathering rows,
    # is cancelled; the rows are written as the loop shuts down, not lost with it.
    internal = tmp_path / "internal.db"
    script = tmp_path / "script.py"
    script.write_text(
        "import asyncio\n"
        "from datasette.app import Datasette\n"
        "from datasette_llm import LLM\n"
        "async def main():\n"
        f"    ds = Datasette(memory=True, internal={str(internal)!r}, config={{'plugins': "
        "{'datasette-llm': {'purposes': {'notes': {'model': 'echo'}}}}})\n"
        "    await ds.invoke_startup()\n"
        "    model = await LLM(ds).model(purpose='notes')\n"
        "    await (await model.prompt('hello')).text()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, str(script)], check=True, cwd=tmp_path, timeout=60)
    with sqlite3.connect(internal) as conn:
        rows = conn.execute("SELECT purpose, model, outcome FROM datasette_llm_usage").fetchall()
    assert rows == [("notes", "echo", "ok")]


async def after_one_prompt(make_datasette: MakeDatasette) -> tuple[Datasette, UsageRecord, Ledger]:
    """A Datasette, the written row of its one prompt, and its ledger."""
    ds = make_datasette(config())
    await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    [first] = await records(ds)
    return ds, first, ledger_for(ds)


async def test_a_batch_larger_than_one_insert_is_written_whole_and_in_order(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds, first, ledger = await after_one_prompt(make_datasette)
    made = [
        dataclasses.replace(first, id=f"row-{number:04}", time=first.time + number, cost=number)
        for number in range(1, 301)  # several INSERTs' worth, and a partial last one
    ]
    for record in made:
        ledger.record(record)
    await ledger.flush()
    assert await records(ds) == [first, *made]


async def test_more_rows_than_one_write_takes_are_all_written_without_a_flush(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    _, first, ledger = await after_one_prompt(make_datasette)
    burst = 2 * ledger_module._BATCH + 10  # three writes' worth, and nothing made after them
    for number in range(burst):
        ledger.record(dataclasses.replace(first, id=f"burst-{number}"))
    for _ in range(200):  # the writer alone; no flush, no further record to wake it
        if not ledger.pending:
            break
        await asyncio.sleep(0.05)
    assert (ledger.pending, ledger.written) == (0, burst + 1)


async def test_a_busy_process_writes_its_rows_a_few_times_a_second_not_as_they_come(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds, first, ledger = await after_one_prompt(make_datasette)
    internal = ds.get_internal_database()
    stop = asyncio.Event()

    async def another_writer() -> None:
        # Datasette's write thread kept busy (another plugin's writes; in a busy process, the
        # GIL): each of the ledger's writes waits a while, and rows keep coming meanwhile.
        while not stop.is_set():
            await internal.execute_write_fn(lambda conn: time.sleep(0.02))

    competing = asyncio.create_task(another_writer())
    seen = {ledger.written}
    started = time.monotonic()
    number = 0
    while time.monotonic() - started < 1.0:  # a row every 2 ms
        number += 1
        ledger.record(dataclasses.replace(first, id=f"busy-{number}"))
        await asyncio.sleep(0.002)
        seen.add(ledger.written)
    stop.set()
    await competing
    await ledger.flush()
    assert ledger.written == number + 1
    writes = len(seen) - 1
    # One write per gathering; a writer that followed each write with the rows made during it
    # would write as often as the write thread lets it.
    assert 1 <= writes <= 1.0 / ledger_module._GATHER + 2, writes
