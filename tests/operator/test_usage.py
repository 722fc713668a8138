"""The usage summary: what ``/-/llm``, ``/-/llm.json`` and ``datasette llm usage`` say was spent.

Rows go into the ledger as the prompt path writes them (``ledger.record`` then ``flush``); every
expected figure is computed here by hand from those rows.
"""

from __future__ import annotations

import asyncio
import html as html_module
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

import pytest
from click.testing import CliRunner
from datasette.app import Datasette as DatasetteApp
from datasette.cli import cli
from datasette.utils import parse_metadata

from datasette_llm.typing import Datasette
from datasette_llm.usage.ledger import SCHEMA, TABLE, ledger_for
from datasette_llm.usage.records import UsageRecord
from datasette_llm.usage.summary import BUDGET_SQL, DAILY_SQL, WINDOW_SQL
from tests.conftest import MakeDatasette
from tests.served import free_port, wait_until_up

HOUR: Final = 3_600.0
DAY: Final = 86_400.0
WINDOWS: Final = {"24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
ROOT: Final = {"permissions": {"llm-view-routing": True}}
PRICED: Final[dict[str, Any]] = {
    "default_model": "test-a",
    "pricing": {"test-a": {"input": 1.0, "output": 2.0}, "test-b": {"input": 3.0, "output": 4.0}},
}
_ids = itertools.count()


def row(
    when: float,
    purpose: str | None,
    model: str,
    *,
    outcome: str = "ok",
    tokens: tuple[int | None, int | None, int | None] = (1_000, 200, 0),
    cost: float | None = None,
) -> UsageRecord:
    """An attempt at ``when``; ``cost`` is given by the test (the ledger stores what it gets)."""
    input_tokens, output_tokens, cached = tokens
    return UsageRecord(
        id=f"row-{next(_ids)}",
        time=when,
        purpose=purpose,
        requested_model=model,
        model=model,
        actor_id=None,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached,
        duration=0.5,
        first_token=None,
        outcome=outcome,  # type: ignore[arg-type]
        attempt=1,
        fell_back_from=None,
        cost=cost,
    )


async def write(datasette: Datasette, rows: Iterable[UsageRecord], *, flush: bool = True) -> None:
    ledger = ledger_for(datasette)
    for record in rows:
        ledger.record(record)
    if flush:
        await ledger.flush()


async def usage_json(datasette: Datasette) -> dict[str, Any]:
    response = await datasette.client.get("/-/llm.json")
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()["usage"]
    return usage


async def page(datasette: Datasette, period: str | None = None) -> str:
    """The routing page, showing the usage of ``period`` (by default the last 24 hours)."""
    response = await datasette.client.get("/-/llm" + (f"?period={period}" if period else ""))
    assert response.status_code == 200
    return response.text


def section(html: str, heading: str) -> str:
    """The HTML from ``<h3>heading</h3>`` to the next ``<h3>`` or ``<h2>``."""
    start = html.index(f"<h3>{heading}</h3>")
    rest = html[start + 4 :]
    ends = [index for index in (rest.find("<h3>"), rest.find("<h2")) if index != -1]
    return rest[: min(ends)] if ends else rest


def table(fragment: str, caption: str) -> str:
    """The table of ``fragment`` captioned ``caption``."""
    start = fragment.index(f">{caption}</caption>")
    return fragment[start : fragment.index("</table>", start)]


def spend_cells(table_html: str) -> dict[str, str]:
    """Map each row's first cell (as text) to its spend cell (as text)."""
    cells = re.findall(
        r"<tr>\s*<td>(.*?)</td>.*?<td class=\"llm-spend\">(.*?)</td>", table_html, re.S
    )
    return {text_of(name): text_of(spend) for name, spend in cells}


def text_of(fragment: str) -> str:
    return html_module.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def money(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


# --- Sums -----------------------------------------------------------------------------------


def by_hand(rows: Sequence[UsageRecord], since: float, key: str) -> dict[Any, dict[str, Any]]:
    """Sum ``rows`` from ``since`` per ``key`` (``"purpose"`` or ``"model"``), the slow way."""
    sums: dict[Any, dict[str, Any]] = {}
    for record in rows:
        if record.time < since:
            continue
        entry = sums.setdefault(
            getattr(record, key),
            {"attempts": 0, "ok": 0, "failures": {}, "input_tokens": 0, "output_tokens": 0},
        )
        entry["attempts"] += 1
        if record.outcome == "ok":
            entry["ok"] += 1
        else:
            entry["failures"][record.outcome] = entry["failures"].get(record.outcome, 0) + 1
        entry["input_tokens"] += record.input_tokens or 0
        entry["output_tokens"] += record.output_tokens or 0
        if record.cost is not None:
            entry["cost"] = entry.get("cost", 0.0) + record.cost
        elif record.outcome == "ok" or record.input_tokens is not None:
            entry["unpriced"] = entry.get("unpriced", 0) + 1
    return sums


@pytest.fixture
def ledger_rows() -> list[UsageRecord]:
    now = time.time()
    return [
        row(now - 1 * HOUR, "enrichments", "test-a", cost=0.0014),
        row(now - 2 * HOUR, "enrichments", "test-b", tokens=(500, 100, 100), cost=0.0019),
        row(now - 3 * HOUR, "enrichments", "echo"),  # no price
        row(now - 2 * DAY, "extract", "test-a", cost=0.25),
        row(now - 3 * DAY, "extract", "test-a", outcome="rate_limit", tokens=(None, None, None)),
        row(now - 6 * DAY, None, "test-b", cost=1.5),
        row(now - 20 * DAY, "extract", "test-b", cost=2.125),
        row(now - 25 * DAY, "enrichments", "test-a", outcome="timeout", tokens=(None, None, None)),
        row(now - 40 * DAY, "extract", "test-a", cost=100.0),  # outside every window
    ]


@pytest.mark.asyncio
async def test_spend_on_the_page_equals_a_sum_by_hand_of_the_ledger_rows(
    test_models: object, make_datasette: MakeDatasette, ledger_rows: list[UsageRecord]
) -> None:
    datasette = make_datasette(PRICED, config=ROOT)
    await write(datasette, ledger_rows)
    usage = await usage_json(datasette)
    assert usage["recorded"] is True
    assert [window["key"] for window in usage["windows"]] == list(WINDOWS)
    for window in usage["windows"]:
        since = window["since"]
        assert window["until"] - since == pytest.approx(WINDOWS[window["key"]])
        html = await page(datasette, window["key"])  # one window at a time, with a switch
        shown = section(html, window["label"])
        for key, lines in (("purpose", window["purposes"]), ("model", window["models"])):
            expected = by_hand(ledger_rows, since, key)
            assert [line[key] for line in lines] == sorted(
                expected, key=lambda name: (name is None, name or "")
            )
            cells = spend_cells(table(shown, f"By {key}"))
            for line in lines:
                hand = expected[line[key]]
                assert {name: line[name] for name in hand if name not in ("cost", "unpriced")} == {
                    name: value for name, value in hand.items() if name not in ("cost", "unpriced")
                }
                assert line["cost_usd"] == pytest.approx(hand.get("cost"))
                assert line["unpriced_attempts"] == hand.get("unpriced", 0)
                text = money(hand["cost"]) if "cost" in hand else "no price"
                unpriced = hand.get("unpriced", 0)
                if "cost" in hand and unpriced:
                    text += f" + {unpriced} attempt{'s' if unpriced > 1 else ''} without a price"
                name = "(no purpose)" if line[key] is None else line[key]
                assert cells[name] == text


@pytest.mark.asyncio
async def test_a_model_without_a_price_shows_no_price_never_zero_dollars(
    test_models: object, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette({"default_model": "echo"}, config=ROOT)
    await write(datasette, [row(time.time() - HOUR, "agent", "echo")])
    usage = await usage_json(datasette)
    [line] = usage["windows"][0]["models"]
    assert (line["model"], line["cost_usd"], line["spend"]) == ("echo", None, "no price")
    shown = section(await page(datasette), "Last 24 hours")
    assert spend_cells(shown) == {"agent": "no price", "echo": "no price", "(no actor)": "no price"}
    assert "$0" not in shown


@pytest.mark.asyncio
async def test_a_partly_priced_purpose_shows_the_priced_sum_and_how_many_had_no_price(
    test_models: object, make_datasette: MakeDatasette, ledger_rows: list[UsageRecord]
) -> None:
    datasette = make_datasette(PRICED, config=ROOT)
    await write(datasette, ledger_rows)
    cells = spend_cells(section(await page(datasette), "Last 24 hours"))
    assert cells["enrichments"] == "$0.0033 + 1 attempt without a price"


@pytest.mark.asyncio
async def test_failures_are_counted_by_kind(
    test_models: object, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(PRICED, config=ROOT)
    now, nothing = time.time(), (None, None, None)
    kinds = ["rate_limit", "rate_limit", "timeout", "server_error", "ok"]
    await write(datasette, [row(now - 60, "p", "test-a", outcome=k, tokens=nothing) for k in kinds])
    [line] = (await usage_json(datasette))["windows"][0]["purposes"]
    assert (line["attempts"], line["ok"]) == (5, 1)
    assert line["failures"] == {"rate_limit": 2, "server_error": 1, "timeout": 1}
    assert "2 <code>rate_limit</code>, 1 <code>server_error</code>, 1 <code>timeout</code>" in (
        await page(datasette)
    )


def cancelled_rows() -> list[UsageRecord]:
    now, nothing = time.time(), (None, None, None)
    outcomes = ["ok", "cancelled", "cancelled", "timeout"]
    return [row(now - 60, "p", "test-a", outcome=o, tokens=nothing) for o in outcomes]


@pytest.mark.asyncio
async def test_cancelled_attempts_are_counted_on_their_own_not_as_a_failure(
    test_models: object, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(PRICED, config=ROOT)
    await write(datasette, cancelled_rows())
    window = (await usage_json(datasette))["windows"][0]
    [line] = window["purposes"]
    assert (line["attempts"], line["ok"], line["cancelled"]) == (4, 1, 2)
    assert line["failures"] == {"timeout": 1}
    html = section(await page(datasette), "Last 24 hours")
    assert "4 attempts since " in html and ": 1 ok, 2 cancelled, 1 failed; spend:" in html
    assert '<th class="llm-number">Cancelled</th>' in table(html, "By purpose")
    assert "<code>cancelled</code>" not in html  # not one more kind of failure


def test_usage_prints_cancelled_attempts_in_their_own_column(
    test_models: object, tmp_path: Path
) -> None:
    config, internal = persisted(tmp_path, cancelled_rows())
    result = invoke("-c", str(config), "--internal", str(internal))
    assert result.exit_code == 0, result.output
    assert "4 attempts, 1 ok, 2 cancelled, 1 failed; spend" in result.output
    assert re.search(r"^p +4 +1 +2 +1 timeout +0 +0 +0 +no price$", result.output, re.M)


@pytest.mark.asyncio
@pytest.mark.parametrize("per", ["day", "week", "month"])
async def test_a_budget_shows_the_spend_of_the_current_utc_period_against_the_limit(
    test_models: object, make_datasette: MakeDatasette, per: str
) -> None:
    budget = {"usd": 2.0, "per": per, "then": "fallback"}
    config = {**PRICED, "purposes": {"extract": {"model": "test-a", "budget": budget}}}
    datasette = make_datasette(config, config=ROOT)
    now = time.time()
    today = datetime.fromtimestamp(now, timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    start = {
        "day": today,
        "week": today - timedelta(days=today.weekday()),
        "month": today.replace(day=1),
    }[per].timestamp()
    times = [now - 60, start + 1, start - 1, now - 3 * HOUR, now - 9 * DAY, now - 40 * DAY]
    rows = [row(when, "extract", "test-a", cost=0.5) for when in times]
    rows.append(row(now - 30, "other", "test-a", cost=7.0))  # another purpose
    rows.append(row(now - 30, "extract", "echo"))  # no price: not counted
    await write(datasette, rows)
    spent = sum(0.5 for when in times if start <= when <= now)
    [status] = (await usage_json(datasette))["budgets"]
    assert status["purpose"] == "extract"
    assert status["period_start"] == start
    assert status["spent_usd"] == pytest.approx(spent)
    assert status["remaining_usd"] == pytest.approx(max(0.0, 2.0 - spent))
    assert status["exceeded"] is (spent >= 2.0)
    assert status["unpriced_attempts"] == (1 if now - 30 >= start else 0)
    budgets = section(await page(datasette), "Budgets")
    assert f"{money(spent)} {'today' if per == 'day' else 'this ' + per}" in text_of(budgets)
    assert f"$2.00 per {per}" in budgets
    assert f"{100 * spent / 2.0:.0f}%" in budgets
    assert "prompts go to the fallbacks" in budgets


@pytest.mark.asyncio
async def test_with_no_ledger_table_the_page_says_no_usage_recorded_yet(
    test_models: object, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(PRICED, config=ROOT)
    assert "No usage recorded yet." in await page(datasette)
    usage = await usage_json(datasette)
    assert (usage["recorded"], usage["windows"], usage["daily"]) == (False, [], [])
    assert not await datasette.get_internal_database().table_exists(TABLE)


@pytest.mark.asyncio
async def test_the_page_counts_rows_still_waiting_to_be_written(
    test_models: object, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(PRICED, config=ROOT)
    await write(datasette, [row(time.time() - 5, "p", "test-a", cost=0.01)], flush=False)
    assert (await usage_json(datasette))["windows"][0]["total"]["attempts"] == 1


@pytest.mark.asyncio
async def test_the_ledger_in_a_named_database_is_read_there(
    test_models: object, make_datasette: MakeDatasette, tmp_path: Path
) -> None:
    config = {**PRICED, "usage": {"database": "usage"}}
    datasette = make_datasette(config, config=ROOT, files=[str(tmp_path / "usage.db")])
    await write(datasette, [row(time.time() - 5, "p", "test-a", cost=0.01)])
    usage = await usage_json(datasette)
    assert (usage["database"], usage["windows"][0]["total"]["attempts"]) == ("usage", 1)
    assert "in the database <code>usage</code>" in await page(datasette)


@pytest.mark.asyncio
async def test_the_page_still_needs_llm_view_routing(
    test_models: object, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(PRICED)
    await write(datasette, [row(time.time() - 5, "p", "test-a", cost=0.01)])
    for path in ("/-/llm", "/-/llm.json"):
        response = await datasette.client.get(path)
        assert response.status_code == 403
        assert "$0.0100" not in response.text


@pytest.mark.asyncio
async def test_a_purpose_name_with_html_is_escaped_in_the_tables_and_the_chart(
    test_models: object, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(PRICED, config=ROOT)
    await write(datasette, [row(time.time() - 5, "<b>x</b>", "test-a", cost=0.01)])
    html = await page(datasette)
    assert "<b>x</b>" not in html
    assert "<code>&lt;b&gt;x&lt;/b&gt;</code>" in html
    start = html.index('<svg class="llm-usage-chart"')
    chart = html[start : html.index("</svg>", start)]
    assert "&lt;b&gt;x&lt;/b&gt;: $0.0100 (1 attempt)</title>" in chart


@pytest.mark.asyncio
async def test_the_sums_are_sql_aggregates_over_the_time_and_purpose_indexes(
    make_datasette: MakeDatasette,
) -> None:
    db = make_datasette({}).get_internal_database()
    await db.execute_write_script(SCHEMA)
    params = {"since": 0.0, "until": 1.0, "purpose": "p"}

    async def plan(sql: str) -> str:
        rows = (await db.execute(f"EXPLAIN QUERY PLAN {sql}", params)).rows
        return " ".join(str(row["detail"]) for row in rows)

    assert f"USING INDEX {TABLE}_time" in await plan(WINDOW_SQL.format(column="purpose"))
    assert f"USING INDEX {TABLE}_time" in await plan(WINDOW_SQL.format(column="model"))
    assert f"USING INDEX {TABLE}_purpose_time" in await plan(BUDGET_SQL)
    assert f"USING INDEX {TABLE}_time" in await plan(DAILY_SQL)


# --- datasette llm usage ---------------------------------------------------------------------

CLI_CONFIG: Final = """
plugins:
  datasette-llm:
    default_model: test-a
    pricing:
      test-a: {input: 1, output: 2}
    purposes:
      extract:
        model: test-a
        budget: {usd: 5, per: month}
"""


def persisted(
    tmp_path: Path, rows: Sequence[UsageRecord], text: str = CLI_CONFIG
) -> tuple[Path, Path]:
    """Write ``rows`` through a Datasette with ``--internal``, then stop it; return its files."""
    config = tmp_path / "datasette.yaml"
    config.write_text(text)
    internal = tmp_path / "internal.db"

    async def run() -> None:
        datasette = DatasetteApp(memory=True, config=parse_metadata(text), internal=str(internal))
        await datasette.invoke_startup()
        await write(datasette, rows)

    asyncio.run(run())
    return config, internal


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, ["llm", "usage", *args], catch_exceptions=False)


def test_usage_prints_a_table_per_purpose_and_per_model_and_the_budgets(
    test_models: object, tmp_path: Path, ledger_rows: list[UsageRecord]
) -> None:
    config, internal = persisted(tmp_path, ledger_rows)
    result = invoke("-c", str(config), "--internal", str(internal))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Usage recorded in Datasette's internal database, as of ")
    assert [line.split(" (")[0] for line in lines if line.startswith("Last ")] == [
        "Last 24 hours",
        "Last 7 days",
        "Last 30 days",
    ]
    assert re.search(
        r"^PURPOSE +ATTEMPTS +OK +CANCELLED +FAILURES +INPUT +OUTPUT +CACHED +SPEND$",
        result.output,
        re.M,
    )
    assert re.search(
        r"^enrichments +3 +3 +0 +- +2,500 +500 +100 +\$0\.0033 \+ 1 attempt without a price$",
        result.output,
        re.M,
    )
    assert re.search(r"^echo +1 +1 +0 +- +1,000 +200 +0 +no price$", result.output, re.M)
    assert "Budgets:" in result.output
    assert re.search(
        r"^extract +\$\S+ +\$5\.00 per month +\d+% +this month \(since ", result.output, re.M
    )


def test_usage_since_a_duration_sums_that_span_only(
    test_models: object, tmp_path: Path, ledger_rows: list[UsageRecord]
) -> None:
    config, internal = persisted(tmp_path, ledger_rows)
    result = invoke("-c", str(config), "--internal", str(internal), "--since", "4d", "--json")
    assert result.exit_code == 0, result.output
    [window] = json.loads(result.output)["windows"]
    hand = by_hand(ledger_rows, window["since"], "purpose")
    assert window["label"] == "Last 4 days"
    assert window["until"] - window["since"] == pytest.approx(4 * DAY)
    assert {line["purpose"]: line["attempts"] for line in window["purposes"]} == {
        name: entry["attempts"] for name, entry in hand.items()
    }
    assert window["total"]["failures"] == {"rate_limit": 1}
    assert window["total"]["cost_usd"] == pytest.approx(0.0014 + 0.0019 + 0.25)


def test_usage_since_an_iso_date_starts_at_its_utc_midnight(
    test_models: object, tmp_path: Path, ledger_rows: list[UsageRecord]
) -> None:
    config, internal = persisted(tmp_path, ledger_rows)
    day = datetime.now(timezone.utc).date() - timedelta(days=10)
    midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
    result = invoke("-c", str(config), "--internal", str(internal), "--since", day.isoformat())
    assert result.exit_code == 0, result.output
    expected = sum(1 for record in ledger_rows if record.time >= midnight)
    assert f"Since {day.isoformat()} 00:00 UTC (since {day.isoformat()} 00:00 UTC): " in (
        result.output
    )
    assert f": {expected} attempts," in result.output


@pytest.mark.parametrize("since", ["yesterday", "7 days", "-3d", "2024-13-01"])
def test_usage_rejects_a_since_it_cannot_read_naming_the_accepted_forms(
    test_models: object, since: str
) -> None:
    result = CliRunner().invoke(cli, ["llm", "usage", "--since", since])
    assert result.exit_code == 2
    assert f"{since!r} is not a duration or a date: use a number of hours, days or weeks" in (
        " ".join(result.output.split())
    )
    assert "24h, 7d, 2w" in result.output


def test_usage_rejects_a_since_in_the_future(test_models: object) -> None:
    result = CliRunner().invoke(cli, ["llm", "usage", "--since", "2999-01-01"])
    assert result.exit_code == 2
    assert "is in the future" in result.output


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("200000w", "'200000w' reaches back before 1970-01-01 (UTC), earlier than any usage row"),
        ("9" * 400 + "h", "reaches back before 1970-01-01 (UTC)"),
        ("1900-01-01", "'1900-01-01' is before 1970-01-01 (UTC), earlier than any usage row"),
    ],
)
def test_usage_rejects_a_since_before_1970_with_a_click_error_not_a_traceback(
    test_models: object, tmp_path: Path, ledger_rows: list[UsageRecord], since: str, message: str
) -> None:
    config, internal = persisted(tmp_path, ledger_rows)
    result = invoke("-c", str(config), "--internal", str(internal), "--since", since)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    output = " ".join(result.output.split())
    assert "Invalid value for '--since'" in output
    assert message in output
    assert "leave out --since for the last 24 hours, 7 days and 30 days" in output
    assert "Traceback" not in result.output


def test_usage_without_a_ledger_says_no_usage_is_recorded_yet(test_models: object) -> None:
    result = invoke()
    assert result.exit_code == 0, result.output
    assert result.output.startswith("No usage recorded yet")


def test_rows_written_by_a_served_datasette_are_read_after_a_restart_by_a_new_process(
    test_models: object, tmp_path: Path, ledger_rows: list[UsageRecord]
) -> None:
    config, internal = persisted(tmp_path, ledger_rows)
    datasette = Path(sys.executable).with_name("datasette")
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path / "llm-user")}
    command = [str(datasette), "llm", "usage", "-c", str(config), "--internal", str(internal)]
    output = subprocess.run(
        [*command, "--json"], env=env, capture_output=True, check=True, timeout=120
    ).stdout
    windows = json.loads(output)["windows"]
    assert [window["total"]["attempts"] for window in windows] == [
        sum(1 for record in ledger_rows if record.time >= window["since"]) for window in windows
    ]


# --- The chart, rendered in a real browser ----------------------------------------------------

SERVED_CONFIG: Final = """
permissions:
  llm-view-routing: true
plugins:
  datasette-llm:
    default_model: echo
    pricing:
      echo: {input: 1, output: 2}
"""


def dump_dom(profile: Path, url: str) -> str:
    chromium = shutil.which("chromium")
    assert chromium is not None
    flags = (
        "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
        "--disable-background-networking --disable-component-update --disable-sync"
    ).split()
    result = subprocess.run(
        [chromium, *flags, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return result.stdout.decode()


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (scripts/test.sh installs it; CI never skips this)",
)
def test_the_chart_has_one_bar_per_day_with_usage_in_headless_chromium(tmp_path: Path) -> None:
    now = time.time()
    ages = [60.0, 90.0, 2 * DAY, 5 * DAY, 11 * DAY, 11 * DAY + 60, 28 * DAY, 45 * DAY]
    rows = [row(now - age, "<i>enrichments</i>", "echo", cost=0.01) for age in ages]
    rows.append(row(now - 5 * DAY, None, "echo", cost=0.02))
    _, internal = persisted(tmp_path, rows, SERVED_CONFIG)
    first_day = (int(now // DAY) - 29) * DAY
    expected = sorted(
        {
            datetime.fromtimestamp(record.time, timezone.utc).date().isoformat()
            for record in rows
            if record.time >= first_day
        }
    )
    port = free_port()
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path / "llm-user")}
    datasette = Path(sys.executable).with_name("datasette")
    server = subprocess.Popen(
        [
            *(str(datasette), "serve", "--memory", "-c", str(tmp_path / "datasette.yaml")),
            *("--internal", str(internal), "--host", "127.0.0.1", "--port", str(port)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/-/versions.json", server)
        dom = dump_dom(tmp_path / "profile", f"http://127.0.0.1:{port}/-/llm")
    finally:
        server.terminate()
        server.wait(timeout=30)
    start = dom.index('<svg class="llm-usage-chart"')
    chart = dom[start : dom.index("</svg>", start)]
    assert (
        '<title id="llm-usage-chart-title">Daily spend per purpose, last 30 days</title>' in chart
    )
    assert f"{len(expected)} of 30 days had usage" in chart
    assert re.findall(r'<g class="llm-bar" data-day="([0-9-]+)">', chart) == expected
    heights = [float(height) for height in re.findall(r'<rect [^>]*height="([0-9.]+)"', chart)]
    assert len(heights) == len(expected) + 1  # the day with both purposes has two segments
    assert all(height > 0 for height in heights)
    assert "&lt;i&gt;enrichments&lt;/i&gt;" in chart and "<i>" not in chart


@pytest.mark.asyncio
async def test_the_page_shows_one_period_at_a_time_with_a_switch(
    test_models: object, make_datasette: MakeDatasette, ledger_rows: list[UsageRecord]
) -> None:
    datasette = make_datasette(PRICED, config=ROOT)
    await write(datasette, ledger_rows)
    html = await page(datasette)
    assert "<h3>Last 24 hours</h3>" in html and "<h3>Last 7 days</h3>" not in html
    assert '<a href="/-/llm?period=7d#usage">Last 7 days</a>' in html
    week = await page(datasette, "7d")
    assert "<h3>Last 7 days</h3>" in week and "<h3>Last 24 hours</h3>" not in week
    assert '<a href="/-/llm?period=24h#usage">Last 24 hours</a>' in week
    assert "<h3>Last 24 hours</h3>" in await page(datasette, "no-such-period")
