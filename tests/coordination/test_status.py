"""Whether the processes share their limits, shown where operators look, and whose rows the
ledger holds.

Against a real ``redis-server`` (``tests/coordination/conftest.py``), a stopped one and a wrong
password: ``/-/llm`` (its "Coordination" section, linked from the table of contents),
``/-/llm.json`` (``coordination``), ``datasette llm purposes`` (one line) and ``datasette llm
check`` (a warning when Redis does not answer a ping now). The Usage section and ``datasette llm
usage`` say whose rows the ledger read holds: each process writes its own. No Redis password is
ever shown, logged or quoted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Final

import pytest
from click.testing import CliRunner, Result
from datasette.app import Datasette
from datasette.cli import cli
from redis.asyncio import Redis

from datasette_llm import LLM
from tests.coordination.conftest import Make, llm_config, shut_down
from tests.redis_server import RedisServer

pytestmark = pytest.mark.usefixtures("test_models")

PASSWORD: Final = "s3cret-redis-pass"


def as_root(ds: Datasette) -> dict[str, str]:
    return {"ds_actor": ds.client.actor_cookie({"id": "root"})}


async def document(ds: Datasette) -> dict[str, Any]:
    response = await ds.client.get("/-/llm.json", cookies=as_root(ds))
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


async def page(ds: Datasette) -> str:
    response = await ds.client.get("/-/llm", cookies=as_root(ds))
    assert response.status_code == 200
    return response.text


async def coordination_once(ds: Datasette, shared: bool) -> dict[str, Any]:
    """``coordination`` of ``/-/llm.json`` once it says ``shared`` (within 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        found: dict[str, Any] = (await document(ds))["coordination"]
        if found["shared"] is shared or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def require_password(server: RedisServer) -> None:
    client = Redis.from_url(server.url)
    try:
        await client.config_set("requirepass", PASSWORD)
    finally:
        await client.aclose()


def run(
    tmp_path: Path, llm: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> Result:
    config = tmp_path / "datasette.yaml"
    config.write_text(json.dumps({"plugins": {"datasette-llm": llm}}))
    return CliRunner().invoke(cli, ["llm", *args, "-c", str(config)], env=env)


# The routing page and its JSON


async def test_the_page_shows_limits_shared_through_redis_where_since_and_the_share(
    started: Make, redis_server: RedisServer, prefix: str
) -> None:
    before = time.time()
    ds = await started(redis_server.url)
    coordination = await coordination_once(ds, shared=True)
    assert coordination == {
        "backend": "redis",
        "shared": True,
        "where": redis_server.url,
        "prefix": prefix,
        "since": coordination["since"],
        "since_text": coordination["since_text"],
        "problem": None,
        "processes": 2,
        "share": "shared",
        "text": f"Coordination: shared through Redis at {redis_server.url} (since "
        f"{coordination['since_text']}): every process's limits, cool-downs and budgets; while "
        "Redis is down, each of the 2 processes keeps 1/2 of each model's rpm and concurrency.",
    }
    assert before - 1 <= coordination["since"] <= time.time()
    html = await page(ds)
    assert '<a href="#coordination">Coordination</a>' in html.split('<nav class="llm-toc">')[1]
    section = html.split('<h2 id="coordination">')[1].split("<h2")[0]
    assert "shared</span>" in section and redis_server.url in section
    assert "1/2 of each model&#39;s rpm and concurrency" in section


async def test_while_redis_is_down_the_page_says_so_with_the_problem_and_the_share(
    own_redis_server: RedisServer, started: Make
) -> None:
    ds = await started(own_redis_server.url)
    await coordination_once(ds, shared=True)
    stopped = time.time()
    own_redis_server.stop()
    coordination = await coordination_once(ds, shared=False)  # its listener noticed
    assert (coordination["shared"], coordination["share"]) == (False, "1/2")
    assert "ConnectionError" in coordination["problem"]
    assert coordination["since"] >= stopped - 0.5
    assert coordination["text"].startswith(
        f"Coordination: NOT shared (since {coordination['since_text']}): Redis at "
        f"{own_redis_server.url} cannot be reached (ConnectionError"
    )
    assert coordination["text"].endswith(
        "meanwhile this process keeps 1/2 of each model's rpm and concurrency, and its own "
        "cool-downs and budget holds."
    )
    section = (await page(ds)).split('<h2 id="coordination">')[1].split("<h2")[0]
    assert "not shared</span>" in section and "ConnectionError" in section
    # Prompts go on meanwhile, and once Redis is back it is shared again.
    assert await (await (await LLM(ds).model(purpose="extract")).prompt("hi")).text()
    own_redis_server.start()
    assert (await coordination_once(ds, shared=True))["share"] == "shared"


async def test_without_coordination_the_page_says_each_process_keeps_its_own(
    started: Make,
) -> None:
    ds = await started(None)
    coordination = (await document(ds))["coordination"]
    assert (coordination["backend"], coordination["shared"], coordination["share"]) == (
        "local",
        False,
        "all",
    )
    assert coordination["where"] is coordination["since"] is None
    assert '<h2 id="coordination">' in await page(ds)


async def test_a_redis_password_is_never_shown_logged_or_quoted(
    own_redis_server: RedisServer, started: Make, caplog: pytest.LogCaptureFixture
) -> None:
    await require_password(own_redis_server)
    port = own_redis_server.port
    right = await started(f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    wrong = await started(f"redis://default:{PASSWORD}-not@127.0.0.1:{port}/0")
    shared = await coordination_once(right, shared=True)
    refused = await coordination_once(wrong, shared=False)
    assert shared["where"] == f"redis://:***@127.0.0.1:{port}/0"
    assert refused["where"] == f"redis://default:***@127.0.0.1:{port}/0"
    assert refused["problem"]
    shown = [
        json.dumps(await document(right)),
        json.dumps(await document(wrong)),
        await page(right),
        await page(wrong),
        repr(right),
        caplog.text,
    ]
    assert any("redis://default:***@" in text for text in shown[-1:])  # the failure was logged
    for text in shown:
        assert PASSWORD not in text


# The commands


def test_purposes_says_in_one_line_whether_redis_answers(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    llm = llm_config("{$env}", prefix)
    llm["coordination"]["redis"] = {"$env": "REDIS_URL"}
    up = run(tmp_path, llm, "purposes", env={"REDIS_URL": redis_server.url})
    assert up.exit_code == 0, up.output
    [line] = [line for line in up.output.splitlines() if line.startswith("Coordination:")]
    assert line == (
        f"Coordination: shared through Redis at {redis_server.url} (just now): every "
        "process's limits, cool-downs and budgets; while Redis is down, each of the 2 processes "
        "keeps 1/2 of each model's rpm and concurrency."
    )
    down = run(tmp_path, llm, "purposes", "--json", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.exit_code == 0, down.output
    coordination = json.loads(down.stdout)["coordination"]
    assert (coordination["shared"], coordination["since"], coordination["share"]) == (
        False,
        None,
        "1/2",
    )
    assert coordination["text"].startswith(
        "Coordination: NOT shared (just now): Redis at redis://127.0.0.1:1/0 cannot be reached "
        "(ConnectionError: "
    )


def test_check_warns_when_redis_cannot_be_reached_now(
    tmp_path: Path, own_redis_server: RedisServer, prefix: str
) -> None:
    llm = llm_config(own_redis_server.url, prefix)
    llm["purposes"] = {}
    assert run(tmp_path, llm, "check").output == (
        "datasette-llm configuration OK: no problems found.\n"
    )
    own_redis_server.stop()
    started = time.monotonic()
    result = run(tmp_path, llm, "check")
    assert time.monotonic() - started < 5
    assert result.exit_code == 0  # a warning
    warning, count = result.output.splitlines()
    assert warning.startswith(
        f"warning: plugins.datasette-llm.coordination.redis: Redis at {own_redis_server.url} "
        "cannot be reached now (ConnectionError: "
    )
    assert warning.endswith(
        "): until it can, each process keeps 1/2 of each model's rpm and concurrency, and its "
        "own cool-downs and budget holds. Start it, or correct the URL."
    )
    assert count == "0 errors, 1 warning"
    strict = run(tmp_path, llm, "check", "--strict")
    assert strict.exit_code == 1


def test_check_never_quotes_a_redis_password(
    tmp_path: Path, own_redis_server: RedisServer, prefix: str
) -> None:
    asyncio.run(require_password(own_redis_server))
    url = f"redis://:{PASSWORD}-not@127.0.0.1:{own_redis_server.port}/0"
    result = run(tmp_path, llm_config(url, prefix), "check")
    assert "cannot be reached now" in result.output
    assert f"redis://:***@127.0.0.1:{own_redis_server.port}/0" in result.output
    assert PASSWORD not in result.output


# Whose rows the ledger holds


async def test_with_coordination_the_usage_section_says_other_processes_rows_are_elsewhere(
    started: Make, redis_server: RedisServer, tmp_path: Path
) -> None:
    internal = str(tmp_path / "internal.db")
    ds = await started(redis_server.url, internal=internal)
    await (await (await LLM(ds).model(purpose="extract")).prompt("hi")).text()
    ledger = (await document(ds))["usage"]["ledger"]
    assert ledger == {
        "database": None,
        "path": internal,
        "own": False,
        "text": f"The ledger read here holds the rows of every process started with --internal "
        f"{internal}. A process started with another internal database keeps its rows there: "
        "to read every process's rows here, start them all with this --internal file, or name "
        "a database file they all serve with usage: {database: ...}.",
    }
    usage = (await page(ds)).split('<h2 id="usage">')[1]
    assert "A process started with another internal database keeps its rows there" in usage


async def test_without_internal_the_rows_are_this_processs_own(
    started: Make, redis_server: RedisServer
) -> None:
    ds = await started(redis_server.url)
    ledger = (await document(ds))["usage"]["ledger"]
    assert (ledger["own"], ledger["path"]) == (True, None)
    assert ledger["text"] == (
        "The ledger read here holds this process's rows alone: its internal database is "
        "temporary (started without --internal), so they go when it stops. The other processes "
        "sharing its limits keep theirs in their own internal databases."
    )


async def test_a_usage_database_file_holds_the_rows_of_every_process_serving_it(
    started: Make, redis_server: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "usage.db"
    path.touch()
    ds = await started(redis_server.url, str(path), usage={"database": "usage"})
    ledger = (await document(ds))["usage"]["ledger"]
    assert (ledger["database"], ledger["path"], ledger["own"]) == ("usage", str(path), False)
    assert ledger["text"] == (
        f"The ledger read here holds the rows of every process serving {path} "
        "(usage: {database: usage})."
    )


def test_the_usage_command_says_whose_rows_it_read(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    internal = str(tmp_path / "internal.db")
    llm = llm_config(redis_server.url, prefix)

    async def prompt() -> None:
        ds = Datasette(memory=True, internal=internal, config={"plugins": {"datasette-llm": llm}})
        await ds.invoke_startup()
        await (await (await LLM(ds).model(purpose="extract")).prompt("hi")).text()
        await shut_down(ds)

    asyncio.run(prompt())
    result = run(tmp_path, llm, "usage", "--internal", internal)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Usage recorded in Datasette's internal database, as of ")
    assert lines[1].startswith(
        f"The ledger read here holds the rows of every process started with --internal "
        f"{internal}. A process started with another internal database keeps its rows there"
    )
    as_json = run(tmp_path, llm, "usage", "--internal", internal, "--json")
    assert json.loads(as_json.stdout)["ledger"]["path"] == internal


def test_nothing_is_logged_at_warning_by_a_healthy_redis(
    tmp_path: Path, redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="datasette_llm"):
        result = run(tmp_path, llm_config(redis_server.url, prefix), "purposes")
    assert result.exit_code == 0
    assert not [r for r in caplog.records if "Redis" in r.getMessage()]
