"""Spend and tokens per actor: the summary, ``/-/llm`` and its JSON, ``datasette llm usage --by``.

Prompts go through the suite's keyless models (``tests/llm_models.py``): a prompt of N characters
is N input tokens, and its reply ``<model>:<prompt>`` one output token a character. Every
expected figure is computed here from those lengths and the configured prices.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from pathlib import Path
from typing import Any, Final

import pytest
from click.testing import CliRunner
from datasette.app import Datasette as DatasetteApp
from datasette.cli import cli

from datasette_llm import LLM
from datasette_llm.routing.overlay import config_for
from datasette_llm.typing import Datasette
from datasette_llm.usage.ledger import SCHEMA, TABLE
from datasette_llm.usage.summary import ACTOR_SQL, ActorLine, UsageSummary, build_usage
from tests.conftest import MakeDatasette

# Per million tokens: test-a costs $1 an input token and $2 an output token, test-b $3 and $4.
PRICING: Final = {
    "test-a": {"input": 1_000_000, "output": 2_000_000},
    "test-b": {"input": 3_000_000, "output": 4_000_000},
}
CONFIG: Final[dict[str, Any]] = {
    "default_model": "test-a",
    "pricing": PRICING,
    "purposes": {"extract": {"model": "test-a"}, "summarise": {"model": "test-b"}},
}
MODELS: Final = {None: "test-a", "extract": "test-a", "summarise": "test-b"}
PROMPTS: Final[tuple[tuple[str | None, str | None, str], ...]] = (
    # (actor id, purpose, prompt): bob spends the most in one prompt, alice in three; without
    # an actor, "bye" ($23) costs more than "hi" ($20).
    ("alice", "extract", "one"),
    ("alice", "extract", "two two"),
    ("alice", "summarise", "three"),
    ("bob", "extract", "a much longer prompt than any of alice's"),
    (None, "extract", "hi"),
    (None, None, "bye"),
)


def tokens(purpose: str | None, prompt: str) -> tuple[int, int]:
    """The input and output tokens the test model reports for ``prompt``."""
    return len(prompt), len(f"{MODELS[purpose]}:{prompt}")


def cost(purpose: str | None, prompt: str) -> float:
    """US dollars at ``PRICING`` (per million tokens)."""
    price = PRICING[MODELS[purpose]]
    input_tokens, output_tokens = tokens(purpose, prompt)
    return (input_tokens * price["input"] + output_tokens * price["output"]) / 1_000_000


def by_hand(
    prompts: tuple[tuple[str | None, str | None, str], ...] = PROMPTS,
) -> dict[str | None, dict[str | None, tuple[int, int, int, float]]]:
    """Per actor and purpose: (attempts, input tokens, output tokens, cost), the slow way."""
    sums: dict[str | None, dict[str | None, tuple[int, int, int, float]]] = {}
    for actor, purpose, prompt in prompts:
        attempts, input_tokens, output_tokens, spent = sums.setdefault(actor, {}).get(
            purpose, (0, 0, 0, 0.0)
        )
        more_in, more_out = tokens(purpose, prompt)
        sums[actor][purpose] = (
            attempts + 1,
            input_tokens + more_in,
            output_tokens + more_out,
            spent + cost(purpose, prompt),
        )
    return sums


def actor_total(purposes: dict[str | None, tuple[int, int, int, float]]) -> tuple[int, int, int]:
    """An actor's attempts and tokens over all its purposes."""
    entries = purposes.values()
    return (
        sum(entry[0] for entry in entries),
        sum(entry[1] for entry in entries),
        sum(entry[2] for entry in entries),
    )


def spent_by(actor: str | None) -> float:
    return sum(entry[3] for entry in by_hand()[actor].values())


async def make_prompts(
    ds: Datasette, prompts: tuple[tuple[str | None, str | None, str], ...] = PROMPTS
) -> None:
    """Send each prompt as its actor (or none) for its purpose (or none), and read the reply."""
    for actor, purpose, prompt in prompts:
        model = await LLM(ds).model(purpose=purpose, actor=None if actor is None else {"id": actor})
        response = await model.prompt(prompt)
        await response.text()
    assert len(await LLM(ds).usage_records()) == len(prompts)  # every row written


async def summary_of(ds: Datasette) -> UsageSummary:
    return await build_usage(ds, config_for(ds))


def as_root(ds: Datasette) -> dict[str, str]:
    ds.root_enabled = True
    return {"ds_actor": ds.client.actor_cookie({"id": "root"})}


# --- The summary ------------------------------------------------------------------------------


async def test_each_window_sums_attempts_tokens_and_spend_per_actor_and_purpose(
    make_datasette: MakeDatasette, test_models: object
) -> None:
    ds = make_datasette(CONFIG)
    await make_prompts(ds)
    summary = await summary_of(ds)
    assert [window.window.key for window in summary.windows] == ["24h", "7d", "30d"]
    for window in summary.windows:
        found = {
            actor.name: {
                line.name: (
                    line.totals.attempts,
                    line.totals.input_tokens,
                    line.totals.output_tokens,
                )
                for line in actor.purposes
            }
            for actor in window.actors
        }
        assert found == {
            actor: {purpose: entry[:3] for purpose, entry in purposes.items()}
            for actor, purposes in by_hand().items()
        }
        for actor in window.actors:
            for line in actor.purposes:
                assert line.totals.cost == pytest.approx(by_hand()[actor.name][line.name][3])
            totals = actor.totals
            expected = actor_total(by_hand()[actor.name])
            assert (totals.attempts, totals.input_tokens, totals.output_tokens) == expected
            assert totals.cost == pytest.approx(spent_by(actor.name))
            assert totals.ok == totals.priced == totals.attempts
        assert sum(actor.totals.attempts for actor in window.actors) == window.total.attempts
        assert sum(actor.totals.cost for actor in window.actors) == pytest.approx(window.total.cost)


async def test_actors_come_most_spent_first_and_so_do_each_actors_purposes(
    make_datasette: MakeDatasette, test_models: object
) -> None:
    ds = make_datasette(CONFIG)
    await make_prompts(ds)
    [day, *_] = (await summary_of(ds)).windows
    assert spent_by("bob") > spent_by("alice") > spent_by(None)
    assert [actor.name for actor in day.actors] == ["bob", "alice", None]
    alice: ActorLine = day.actors[1]
    assert [line.name for line in alice.purposes] == ["summarise", "extract"]
    assert alice.purposes[0].totals.cost > alice.purposes[1].totals.cost


async def test_an_actor_with_no_attempts_in_a_window_is_not_listed_in_it(
    make_datasette: MakeDatasette, test_models: object
) -> None:
    ds = make_datasette(CONFIG)
    await make_prompts(ds)
    summary = await build_usage(ds, config_for(ds), now=1_000.0)  # every window before them
    assert all(window.actors == () for window in summary.windows)


# --- /-/llm.json and /-/llm -------------------------------------------------------------------


async def test_llm_json_lists_each_windows_actors_with_their_purposes(
    make_datasette: MakeDatasette, test_models: object
) -> None:
    ds = make_datasette(CONFIG)
    await make_prompts(ds)
    response = await ds.client.get("/-/llm.json", cookies=as_root(ds))
    assert response.status_code == 200, response.text
    for window in response.json()["usage"]["windows"]:
        assert [actor["actor_id"] for actor in window["actors"]] == ["bob", "alice", None]
        for actor in window["actors"]:
            hand = by_hand()[actor["actor_id"]]
            attempts, input_tokens, output_tokens = actor_total(hand)
            assert (actor["attempts"], actor["input_tokens"], actor["output_tokens"]) == (
                attempts,
                input_tokens,
                output_tokens,
            )
            assert actor["cost_usd"] == pytest.approx(spent_by(actor["actor_id"]))
            assert {line["purpose"]: line["attempts"] for line in actor["purposes"]} == {
                purpose: entry[0] for purpose, entry in hand.items()
            }
            assert {line["purpose"]: line["cost_usd"] for line in actor["purposes"]} == {
                purpose: pytest.approx(entry[3]) for purpose, entry in hand.items()
            }


async def test_the_actor_sums_take_one_query_per_window_however_many_actors(
    make_datasette: MakeDatasette, test_models: object
) -> None:
    async def actor_queries(count: int) -> int:
        ds = make_datasette(CONFIG, settings={"trace_debug": True})
        await make_prompts(ds, tuple((f"actor-{n}", "extract", "hi") for n in range(count)))
        response = await ds.client.get("/-/llm.json?_trace=1", cookies=as_root(ds))
        [window, *_] = response.json()["usage"]["windows"]
        assert len(window["actors"]) == count
        traces = response.json()["_trace"]["traces"]
        return sum("GROUP BY actor_id" in str(trace.get("sql", "")) for trace in traces)

    assert await actor_queries(2) == await actor_queries(12) == 3  # 24 hours, 7 and 30 days


async def test_the_actor_sums_read_the_time_index(make_datasette: MakeDatasette) -> None:
    db = make_datasette({}).get_internal_database()
    await db.execute_write_script(SCHEMA)
    plan = await db.execute(f"EXPLAIN QUERY PLAN {ACTOR_SQL}", {"since": 0.0, "until": 1.0})
    assert f"USING INDEX {TABLE}_time" in " ".join(str(row["detail"]) for row in plan.rows)


def actor_table(page: str, window: str) -> str:
    """The "By actor" table of the window headed ``window`` on the page."""
    start = page.index(f"<h3>{window}</h3>")
    start = page.index(">By actor</caption>", start)
    return page[start : page.index("</table>", start)]


def cells(table: str) -> list[list[str]]:
    """Each row of ``table`` as the text of its cells."""
    return [
        [
            html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
        if "<td" in row
    ]


async def test_the_page_has_a_by_actor_table_per_window_each_actor_over_its_purposes(
    make_datasette: MakeDatasette, test_models: object
) -> None:
    ds = make_datasette(CONFIG)
    await make_prompts(ds)
    periods = {"24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}
    for period, window in periods.items():  # one window at a time, with a switch
        response = await ds.client.get(f"/-/llm?period={period}", cookies=as_root(ds))
        assert response.status_code == 200
        rows = cells(actor_table(response.text, window))
        names = [row[0] for row in rows]
        assert names == [
            "bob",
            "\u21b3 extract",
            "alice",
            "\u21b3 summarise",
            "\u21b3 extract",
            "(no actor)",
            "\u21b3 (no purpose)",
            "\u21b3 extract",
        ]
        alice = rows[names.index("alice")]
        attempts, input_tokens, output_tokens = actor_total(by_hand()["alice"])
        assert alice[1] == str(attempts)
        assert (alice[5], alice[6]) == (f"{input_tokens:,}", f"{output_tokens:,}")
        assert alice[-1] == f"${spent_by('alice'):,.2f}"


async def test_an_actor_id_with_html_is_escaped_on_the_page(
    make_datasette: MakeDatasette, test_models: object
) -> None:
    ds = make_datasette(CONFIG)
    await make_prompts(ds, (("<b>x</b>", "extract", "hi"),))
    page = (await ds.client.get("/-/llm", cookies=as_root(ds))).text
    table = actor_table(page, "Last 24 hours")
    assert "<code>&lt;b&gt;x&lt;/b&gt;</code>" in table
    assert "<b>x</b>" not in page


# --- datasette llm usage --by actor -----------------------------------------------------------


def persisted(tmp_path: Path) -> tuple[Path, Path]:
    """Make ``PROMPTS`` through a Datasette with ``--internal``; return its config and file."""
    config = tmp_path / "datasette.yaml"
    config.write_text(json.dumps({"plugins": {"datasette-llm": CONFIG}}))  # JSON is YAML
    internal = tmp_path / "internal.db"

    async def run() -> None:
        ds = DatasetteApp(
            memory=True, config={"plugins": {"datasette-llm": CONFIG}}, internal=str(internal)
        )
        await ds.invoke_startup()
        await make_prompts(ds)

    asyncio.run(run())
    return config, internal


def usage(config: Path, internal: Path, *args: str) -> str:
    command = ["llm", "usage", "-c", str(config), "--internal", str(internal), *args]
    result = CliRunner().invoke(cli, command, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def text_rows(output: str, label: str) -> list[list[str]]:
    """The rows of the first text table whose first column is ``label``, as their cells."""
    lines = output.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"{label} "))
    widths = [len(dashes) for dashes in lines[start + 1].split("  ")]
    rows = []
    for line in lines[start + 2 :]:
        if not line:
            break
        cells, offset = [], 0
        for width in widths:
            cells.append(line[offset : offset + width].rstrip())
            offset += width + 2
        rows.append(cells)
    return rows


def test_usage_by_actor_prints_each_actor_then_its_purposes_most_spent_first(
    test_models: object, tmp_path: Path
) -> None:
    config, internal = persisted(tmp_path)
    output = usage(config, internal, "--by", "actor")
    assert re.search(
        r"^ACTOR +ATTEMPTS +OK +CANCELLED +FAILURES +INPUT +OUTPUT +CACHED +SPEND$", output, re.M
    )
    assert not re.search(r"^(PURPOSE|MODEL) +ATTEMPTS", output, re.M)  # only the actor tables
    rows = text_rows(output, "ACTOR")
    assert [row[0] for row in rows] == [
        "bob",
        "  extract",
        "alice",
        "  summarise",
        "  extract",
        "(no actor)",
        "  (no purpose)",
        "  extract",
    ]
    attempts, input_tokens, output_tokens = actor_total(by_hand()["alice"])
    assert rows[2] == [
        "alice",
        str(attempts),
        str(attempts),
        "0",
        "-",
        f"{input_tokens:,}",
        f"{output_tokens:,}",
        "0",
        f"${spent_by('alice'):,.2f}",
    ]


def test_usage_by_default_prints_the_purpose_and_model_tables_and_no_actor_table(
    test_models: object, tmp_path: Path
) -> None:
    config, internal = persisted(tmp_path)
    headers = [
        line.split()[0] for line in usage(config, internal).splitlines() if "ATTEMPTS" in line
    ]
    assert headers == ["PURPOSE", "MODEL"] * 3  # 24 hours, 7 and 30 days
    every = usage(config, internal, "--by", "actor", "--by", "purpose", "--by", "model")
    headers = [line.split()[0] for line in every.splitlines() if "ATTEMPTS" in line]
    assert headers == ["PURPOSE", "MODEL", "ACTOR"] * 3


def test_usage_json_has_each_windows_actors_whatever_by_says(
    test_models: object, tmp_path: Path
) -> None:
    config, internal = persisted(tmp_path)
    for args in ((), ("--by", "purpose")):
        document = json.loads(usage(config, internal, *args, "--json"))
        for window in document["windows"]:
            assert {"purposes", "models", "actors"} <= window.keys()
            assert [actor["actor_id"] for actor in window["actors"]] == ["bob", "alice", None]
            bob = window["actors"][0]
            assert bob["cost_usd"] == pytest.approx(spent_by("bob"))
            assert [line["purpose"] for line in bob["purposes"]] == ["extract"]


def test_usage_by_rejects_an_unknown_grouping_naming_the_choices(test_models: object) -> None:
    result = CliRunner().invoke(cli, ["llm", "usage", "--by", "actors"])
    assert result.exit_code == 2
    assert "'actors' is not one of 'purpose', 'model', 'actor'" in result.output
