"""The status that leads the routing page: what each purpose's calls are getting now.

Against a real Datasette and the suite's keyless models (one whose provider fails with a server
error), through ``/-/llm.json`` and the page as root: a purpose answered by its model is ``ok``;
one whose prompts a fallback answers is ``degraded``, naming the fallback and the last failure
(kind, time, redacted message, kept in the ledger); one whose budget is spent is
``over_budget``; one whose model has no key is ``no_key``, naming the secret and where its calls
go; and the recent failures are listed.
"""

from __future__ import annotations

from typing import Any

import pytest

from datasette_llm import LLM, BudgetExceededError
from datasette_llm.typing import Datasette
from tests.conftest import MakeDatasette
from tests.llm_models import BrokenModel

CONFIG: dict[str, Any] = {
    "pricing": {"test-a": {"input": 1_000_000, "output": 1_000_000}},
    "purposes": {
        "steady": {"model": "test-b"},
        "shaky": {"model": "test-broken", "fallbacks": ["test-c"], "retries": 0},
        "spent": {"model": "test-a", "budget": {"usd": 1, "per": "day"}},
        "keyless": {"model": "test-keyed"},
    },
    "default_model": "test-a",
}


def as_root(ds: Datasette) -> dict[str, str]:
    ds.root_enabled = True
    return {"ds_actor": ds.client.actor_cookie({"id": "root"})}


async def status_of(ds: Datasette) -> dict[str, Any]:
    document = (await ds.client.get("/-/llm.json", cookies=as_root(ds))).json()
    status: dict[str, Any] = document["status"]
    return status


async def test_each_purpose_shows_what_its_calls_are_getting(
    make_datasette: MakeDatasette, broken: None
) -> None:
    ds = make_datasette(CONFIG)
    for name in ("steady", "shaky", "shaky", "spent"):
        await (await (await LLM(ds).model(purpose=name)).prompt("hi")).text()
    with pytest.raises(BudgetExceededError):
        await (await LLM(ds).model(purpose="spent")).prompt("hi")
    status = await status_of(ds)
    by_name = {purpose["name"]: purpose for purpose in status["purposes"]}

    assert by_name["steady"]["status"] == "ok" and by_name["steady"]["reasons"] == []

    shaky = by_name["shaky"]
    assert (shaky["status"], shaky["model"], shaky["answering"]) == (
        "degraded",
        "test-broken",
        "test-c",
    )
    assert "'test-c' answers its prompts instead of 'test-broken'" in shaky["text"]
    failure = shaky["last_failure"]
    assert (failure["model"], failure["kind"]) == ("test-broken", "server_error")
    assert "the provider broke" in failure["message"]

    spent = by_name["spent"]
    assert spent["status"] == "over_budget"
    assert "its $1 budget for the day is spent: its prompts are refused" in spent["text"]

    keyless = by_name["keyless"]
    assert keyless["status"] == "no_key"
    assert "set the secret TESTPROV_API_KEY" in keyless["text"]
    assert "its calls go to 'test-a'" in keyless["text"]
    assert keyless["missing_secret"] == "TESTPROV_API_KEY"

    recent = status["recent_failures"]
    assert [(f["purpose"], f["kind"]) for f in recent] == [("shaky", "server_error")] * 2


async def test_a_purpose_is_ok_again_once_its_routed_model_answers(
    make_datasette: MakeDatasette, broken: None, register_plugin: Any
) -> None:
    ds = make_datasette(CONFIG)
    await (await (await LLM(ds).model(purpose="shaky")).prompt("hi")).text()
    assert {p["name"]: p["status"] for p in (await status_of(ds))["purposes"]}["shaky"] == (
        "degraded"
    )
    BrokenModel.failing = False  # the provider has recovered (the fixture sets it back)
    await (await (await LLM(ds).model(purpose="shaky")).prompt("hi")).text()
    shaky = {p["name"]: p for p in (await status_of(ds))["purposes"]}["shaky"]
    assert shaky["status"] == "ok" and shaky["answering"] is None


async def test_the_page_leads_with_the_status_and_the_recent_failures(
    make_datasette: MakeDatasette, broken: None
) -> None:
    ds = make_datasette(CONFIG)
    await (await (await LLM(ds).model(purpose="shaky")).prompt("<b>x</b>")).text()
    html = (await ds.client.get("/-/llm", cookies=as_root(ds))).text
    assert html.index('<h2 id="status">Status</h2>') < html.index('<h2 id="purposes">Purposes</h2>')
    row = '<tr class="llm-status-degraded"><td><a href="/-/llm/purposes/shaky">shaky</a></td>'
    assert row in html
    assert "<h3>Recent failures</h3>" in html and "server_error" in html


async def test_the_overview_shows_each_purposes_spend_today_and_links_to_every_section(
    make_datasette: MakeDatasette, broken: None
) -> None:
    ds = make_datasette(CONFIG)
    await (await (await LLM(ds).model(purpose="spent")).prompt("hi")).text()
    html = (await ds.client.get("/-/llm", cookies=as_root(ds))).text
    overview = html[html.index('<table class="rows-and-columns llm-status">') :]
    overview = overview[: overview.index("</table>")]
    spent = overview[overview.index('<a href="/-/llm/purposes/spent">') :]
    spent = spent[: spent.index("</tr>")]
    assert '<td class="llm-spend">$' in spent and "(1 attempt)" in spent
    steady = overview[overview.index('<a href="/-/llm/purposes/steady">') :]
    assert '<td class="llm-spend"><span class="llm-muted">none</span>' in steady
    # The table of contents: every link goes to a heading on the page.
    toc = html[html.index('<nav class="llm-toc">') :]
    toc = toc[: toc.index("</nav>")]
    anchors = [part.split('"')[0] for part in toc.split('href="#')[1:]]
    assert {"status", "purposes", "usage", "fallbacks", "globals"} <= set(anchors)
    for anchor in anchors:
        assert f'<h2 id="{anchor}">' in html, anchor
    # A missing key's status row is the way to the secret's form (datasette-secrets).
    keyless = overview[overview.index('<a href="/-/llm/purposes/keyless">') :]
    keyless = keyless[: keyless.index("</tr>")]
    link = '<a class="llm-set-secret" href="/-/secrets/TESTPROV_API_KEY">Set TESTPROV_API_KEY</a>'
    assert link in keyless


async def test_a_failed_attempt_keeps_its_error_in_short_in_the_ledger(
    make_datasette: MakeDatasette, broken: None
) -> None:
    ds = make_datasette(CONFIG)
    await (await (await LLM(ds).model(purpose="shaky")).prompt("hi")).text()
    rows = await LLM(ds).usage_records()
    [failed] = [row for row in rows if row.outcome != "ok"]
    assert failed.error is not None and "the provider broke" in failed.error
    assert [row.error for row in rows if row.outcome == "ok"] == [None]


async def test_a_ledger_table_written_by_an_earlier_version_gains_the_error_column(
    make_datasette: MakeDatasette, broken: None, tmp_path: Any
) -> None:
    import sqlite3

    from datasette_llm.usage.ledger import COLUMNS, TABLE

    internal = tmp_path / "internal.db"
    earlier = [name for name in COLUMNS if name != "error"]
    with sqlite3.connect(internal) as conn:
        conn.execute(f"CREATE TABLE {TABLE} ({', '.join(earlier)})")
        conn.execute(f"INSERT INTO {TABLE} (id, time, outcome) VALUES ('old', 1.0, 'ok')")
    ds = make_datasette(CONFIG, internal=str(internal))
    await (await (await LLM(ds).model(purpose="shaky")).prompt("hi")).text()
    rows = await LLM(ds).usage_records(since=0)
    assert {row.id for row in rows} >= {"old"}
    [failed] = [row for row in rows if row.outcome == "server_error"]
    assert failed.error is not None and "the provider broke" in failed.error


def test_check_with_internal_warns_of_a_purpose_over_its_budget(
    make_datasette: MakeDatasette, broken: None, tmp_path: Any
) -> None:
    import asyncio
    import json

    from click.testing import CliRunner
    from datasette.cli import cli

    internal = str(tmp_path / "internal.db")

    async def spend() -> None:
        ds = make_datasette(CONFIG, internal=internal)
        await (await (await LLM(ds).model(purpose="spent")).prompt("hi")).text()
        await LLM(ds).usage_records()  # written

    asyncio.run(spend())
    config_file = tmp_path / "datasette.json"
    config_file.write_text(json.dumps({"plugins": {"datasette-llm": CONFIG}}))
    arguments = ["llm", "check", "--json", "-c", str(config_file), "--internal", internal]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    problems = json.loads(result.stdout)["problems"]
    [over] = [p for p in problems if "over budget" in p["message"]]
    assert over["path"].endswith("purposes.spent") and over["severity"] == "warning"


async def test_each_purpose_has_a_page_with_its_status_routing_usage_and_override(
    make_datasette: MakeDatasette, broken: None
) -> None:
    ds = make_datasette(CONFIG, config={"permissions": {"llm-view-routing": {"id": "viewer"}}})
    model = await LLM(ds).model(purpose="shaky", actor={"id": "alice"})
    await (await model.prompt("hi")).text()
    page = await ds.client.get("/-/llm/purposes/shaky", cookies=as_root(ds))
    assert page.status_code == 200
    html = page.text
    assert "<h1>Purpose shaky</h1>" in html
    assert '<p class="llm-status-degraded">' in html and "server_error" in html
    assert "<code>test-broken</code>" in html and "<code>test-c</code>" in html  # its chain
    assert "<code>alice</code>" in html  # its usage by actor
    by_model = html[html.index("By model") : html.index("By actor")]
    assert "<code>test-broken</code>" in by_model and "<code>test-c</code>" in by_model
    assert 'class="llm-override-form"' in html and "Test this route" in html
    viewer = {"ds_actor": ds.client.actor_cookie({"id": "viewer"})}
    seen = await ds.client.get("/-/llm/purposes/shaky", cookies=viewer)
    assert seen.status_code == 200 and "llm-override-form" not in seen.text
    assert (await ds.client.get("/-/llm/purposes/shaky")).status_code == 403
    missing = await ds.client.get("/-/llm/purposes/shakey", cookies=as_root(ds))
    assert missing.status_code == 404 and "Did you mean 'shaky'?" in missing.text
