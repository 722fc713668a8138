"""Overrides shared through one internal database file: every process and every Datasette
sharing it routes by a write within a second, for at most one small read a second each.

In one process, two real ``Datasette`` instances share a file; across processes, two real
``datasette serve`` processes do, and an edit is made through the routing page's form.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from html import unescape
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import pytest
from datasette.app import Datasette

from datasette_llm import LLM
from datasette_llm.config.overrides import (
    AUDIT_TABLE,
    REFRESH_SECONDS,
    SCHEMA,
    RouteOverride,
    freshness_of,
    load_overrides,
    overrides_of,
    save_override,
)
from tests.conftest import MakeDatasette
from tests.routing_page import OVERRIDE_FORM
from tests.served import free_port, wait_until_up

pytestmark = pytest.mark.usefixtures("test_models")

CONFIG: Final[dict[str, Any]] = {
    "purposes": {
        "summaries": {"model": "test-a", "fallbacks": ["test-c"]},
        "extract": {"model": "test-a"},
    }
}
# How long a write may take to reach another Datasette: a check a second, and the read.
WITHIN: Final = 1.5


@pytest.fixture
def internal(tmp_path: Path) -> str:
    return str(tmp_path / "internal.db")


@pytest.fixture
def sharing(make_datasette: MakeDatasette, internal: str) -> Iterator[MakeDatasette]:
    """Make Datasette instances that share one internal database file; close them afterwards."""
    made: list[Datasette] = []

    def make() -> Datasette:
        made.append(make_datasette(CONFIG, internal=internal))
        return made[-1]

    yield make
    for datasette in made:
        if hasattr(datasette, "close"):
            datasette.close()


async def routed(ds: Datasette, purpose: str) -> str:
    return (await LLM(ds).model(purpose=purpose)).model_id


async def until_routed(ds: Datasette, purpose: str, model_id: str) -> float:
    """Route ``purpose`` every 20ms until ``model_id`` serves it; return how long that took."""
    started = time.monotonic()
    while await routed(ds, purpose) != model_id:
        waited = time.monotonic() - started
        assert waited < WITHIN, f"{purpose!r} is not routed to {model_id!r} after {waited:.2f}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


# Within one process


async def test_a_write_through_one_datasette_is_routed_by_another_within_a_second(
    sharing: MakeDatasette,
) -> None:
    writer, reader = sharing(), sharing()
    await load_overrides(writer)
    await load_overrides(reader)
    assert await routed(reader, "summaries") == "test-a"
    await save_override(
        writer, "summaries", RouteOverride(model="test-b"), based_on=0, actor_id="alice"
    )
    assert await routed(writer, "summaries") == "test-b"
    await until_routed(reader, "summaries", "test-b")
    assert freshness_of(reader).reloads == 1


async def test_a_burst_of_calls_checks_the_database_at_most_once_a_second(
    sharing: MakeDatasette,
) -> None:
    ds = sharing()
    await load_overrides(ds)
    await asyncio.sleep(REFRESH_SECONDS)  # what is held is now due for a check
    before = freshness_of(ds)
    started = time.monotonic()
    for _ in range(500):
        overrides_of(ds)
        await asyncio.sleep(0.001)  # lets the check run, as requests between calls would
    assert time.monotonic() - started < 2 * REFRESH_SECONDS
    after = freshness_of(ds)
    assert 1 <= after.checks - before.checks <= 2
    assert after.reloads == before.reloads  # nothing was written: nothing read again


async def test_a_datasette_that_is_not_called_does_not_check(sharing: MakeDatasette) -> None:
    ds = sharing()
    await load_overrides(ds)
    checks = freshness_of(ds).checks
    await asyncio.sleep(REFRESH_SECONDS * 1.5)
    assert freshness_of(ds).checks == checks


async def test_loading_the_overrides_when_due_waits_for_the_check(
    sharing: MakeDatasette,
) -> None:
    # What the routing page and the edit form read: the current version, not the one held.
    writer, reader = sharing(), sharing()
    await load_overrides(reader)
    await load_overrides(writer)
    stored = await save_override(
        writer, "extract", RouteOverride(model="test-c"), based_on=0, actor_id="alice"
    )
    await asyncio.sleep(REFRESH_SECONDS)
    assert (await load_overrides(reader))["extract"] == stored


async def test_a_write_here_does_not_hide_an_earlier_write_there(
    sharing: MakeDatasette,
) -> None:
    here, there = sharing(), sharing()
    await load_overrides(here)
    await load_overrides(there)
    await save_override(
        there, "summaries", RouteOverride(model="test-b"), based_on=0, actor_id=None
    )
    # ``here`` has not checked yet: its own write must not make it skip the one above.
    await save_override(here, "extract", RouteOverride(model="test-c"), based_on=0, actor_id=None)
    assert await routed(here, "extract") == "test-c"
    await until_routed(here, "summaries", "test-b")
    assert await routed(here, "extract") == "test-c"
    assert freshness_of(here).stamp == 2  # both writes: its own, and the one made there


async def test_a_failing_check_is_logged_once_never_raised_and_retried(
    sharing: MakeDatasette, internal: str, caplog: pytest.LogCaptureFixture
) -> None:
    ds = sharing()
    await load_overrides(ds)
    own = sqlite3.connect(internal)
    try:
        own.execute(f"DROP TABLE {AUDIT_TABLE}")
        own.commit()
        with caplog.at_level(logging.WARNING, logger="datasette_llm"):
            deadline = time.monotonic() + 2.5 * REFRESH_SECONDS
            while time.monotonic() < deadline:
                assert await routed(ds, "summaries") == "test-a"
                await asyncio.sleep(0.02)
        failed = freshness_of(ds)
        assert failed.failing
        assert failed.checks >= 2
        assert [record.getMessage() for record in caplog.records] == [
            "datasette-llm: cannot check the routing overrides for writes by other processes "
            f"(retried every {REFRESH_SECONDS:g}s): no such table: {AUDIT_TABLE}"
        ]
        own.executescript(SCHEMA)
    finally:
        own.close()
    started = time.monotonic()
    while freshness_of(ds).failing:
        assert time.monotonic() - started < WITHIN
        overrides_of(ds)
        await asyncio.sleep(0.02)


# Across processes: two `datasette serve` sharing `--internal shared.db`

SECRET: Final = "shared-overrides-test-secret"
SERVED_CONFIG: Final[dict[str, Any]] = {
    "permissions": {
        "llm-view-routing": {"id": "editor"},
        "llm-manage-routing": {"id": "editor"},
    },
    "plugins": {
        "datasette-llm": {
            # llm-echo's keyless ``echo``, and ``echo-needs-key`` with its key in the
            # environment of both processes.
            "purposes": {"summaries": {"model": "echo", "fallbacks": ["echo"]}},
        }
    },
}


class Served:
    """A ``datasette serve`` process, and requests to it as the actor ``editor``."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = {"ds_actor": Datasette(secret=SECRET).sign({"a": {"id": "editor"}}, "actor")}

    def request(self, path: str, form: Mapping[str, str] | None = None) -> str:
        """GET ``path``, or POST ``form`` to it; keep the cookies set; return the body."""
        data = None if form is None else urlencode(form).encode()
        cookie = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        request = urllib.request.Request(self.base + path, data=data, headers={"Cookie": cookie})
        with urllib.request.urlopen(request, timeout=30) as response:
            for header in response.headers.get_all("Set-Cookie") or []:
                jar: SimpleCookie = SimpleCookie()
                jar.load(header)
                self.cookies.update({name: morsel.value for name, morsel in jar.items()})
            body: bytes = response.read()
            return body.decode()

    def routed(self, purpose: str) -> str | None:
        """The model ``/-/llm.json`` says serves ``purpose``."""
        report = json.loads(self.request("/-/llm.json"))
        (found,) = [item for item in report["purposes"] if item["name"] == purpose]
        model_id: str | None = found["resolved"]["model_id"]
        return model_id

    def edit(self, purpose: str, **fields: str) -> None:
        """Submit the purpose's form on ``/-/llm``, as a browser would."""
        forms = {unescape(a): (t, v) for a, t, v in OVERRIDE_FORM.findall(self.request("/-/llm"))}
        action = f"/-/llm/purposes/{purpose}"
        token, version = forms[action]
        blank = {"model": "", "fallbacks": "", "options": ""}
        self.request(action, {"csrftoken": token, "version": version, **blank, **fields})


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    config = tmp_path / "datasette.yaml"
    config.write_text(json.dumps(SERVED_CONFIG))
    internal = tmp_path / "shared.db"
    datasette = Path(sys.executable).with_name("datasette")
    env = {**os.environ, "LLM_ECHO_NEEDS_KEY_KEY": "echo-key"}
    started: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    try:
        # One after the other: Datasette's own migrations of a new internal database file fail
        # with "database is locked" when two processes start on it at once.
        for number in range(2):
            port = free_port()
            command = [
                *(str(datasette), "serve", "--memory", "-c", str(config)),
                *("--internal", str(internal), "--secret", SECRET),
                *("--host", "127.0.0.1", "--port", str(port)),
            ]
            log = tmp_path / f"server-{number}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=output
                )
            started.append(process)
            bases.append(f"http://127.0.0.1:{port}")
            try:
                wait_until_up(f"{bases[-1]}/-/versions.json", process)
            except AssertionError as error:
                raise AssertionError(f"{error}:\n{log.read_text()}") from None
        yield Served(bases[0]), Served(bases[1])
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=30)


def test_an_edit_on_one_served_datasette_is_routed_by_another_within_a_second(
    two_servers: tuple[Served, Served],
) -> None:
    first, second = two_servers
    assert first.routed("summaries") == second.routed("summaries") == "echo"
    first.edit("summaries", model="echo-needs-key")
    written = time.monotonic()
    assert first.routed("summaries") == "echo-needs-key"
    while (seen := second.routed("summaries")) != "echo-needs-key":
        waited = time.monotonic() - written
        assert waited < 2.0, f"the second process still routes to {seen!r} after {waited:.2f}s"
        time.sleep(0.05)
