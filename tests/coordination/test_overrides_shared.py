"""An override saved through one process routes every other's next call at once, when they
share one internal database file and one Redis.

Overrides live in the internal database: processes sharing its file (``datasette serve
--internal same.db``) see a write within a second by their own check of it. With
``coordination: {redis: ...}`` the process that saved one announces it on ``<prefix>:overrides``
and every other, listening there, reads its internal database at once. Two real ``Datasette``
instances stand for two processes, with one ``internal=`` file and one real ``redis-server``
(``tests/coordination/conftest.py``); the override is saved through the routing page's form.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from html import unescape
from pathlib import Path
from typing import Any, Final

import pytest
from datasette.app import Datasette
from redis.asyncio import Redis

from datasette_llm import LLM
from datasette_llm.config.overrides import REFRESH_SECONDS, freshness_of, refresh_overrides
from datasette_llm.coordination import (
    OVERRIDES_CHANNEL,
    RedisCoordinator,
    close_coordination,
    coordinator_for,
)
from datasette_llm.routing.overlay import config_for
from tests.coordination.conftest import Make
from tests.redis_server import RedisServer
from tests.routing_page import OVERRIDE_FORM

pytestmark = pytest.mark.usefixtures("test_models")

SOON: Final = 0.3
"""Well under ``REFRESH_SECONDS``: a write seen this soon was not seen by the check a second."""


@pytest.fixture
def sharing(started: Make, tmp_path: Path) -> Make:
    """Make started Datasettes sharing one internal database file (and the Redis at ``redis``,
    if given); shut down after the test."""

    async def make(redis: str | None) -> Datasette:
        return await started(redis, internal=str(tmp_path / "internal.db"))

    return make


async def listening(server: RedisServer, prefix: str, count: int) -> None:
    """Wait until ``count`` processes listen for overrides on the server."""
    client = Redis.from_url(server.url, decode_responses=True)
    channel = f"{prefix}:{OVERRIDES_CHANNEL}"
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            [(_, subscribers)] = await client.pubsub_numsub(channel)
            if subscribers == count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{count} processes do not listen on {channel} after 5 s")
    finally:
        await client.aclose()


def as_root(ds: Datasette) -> dict[str, str]:
    return {"ds_actor": ds.client.actor_cookie({"id": "root"})}


class Form:
    """The override form of one purpose on the routing page, loaded as root."""

    def __init__(self, ds: Datasette, action: str, token: str, version: str, cookies: Any):
        self.ds, self.action, self.token, self.version = ds, action, token, version
        self.cookies = {**dict(cookies), **as_root(ds)}

    @classmethod
    async def load(cls, ds: Datasette, purpose: str) -> Form:
        page = await ds.client.get("/-/llm", cookies=as_root(ds))
        assert page.status_code == 200
        for action, token, version in OVERRIDE_FORM.findall(page.text):
            if unescape(action) == f"/-/llm/purposes/{purpose}":
                return cls(ds, unescape(action), token, version, page.cookies)
        raise AssertionError(f"the routing page has no form for {purpose!r}")

    async def save(self, **fields: str) -> None:
        data = {"csrftoken": self.token, "version": self.version, "fallbacks": "", "options": ""}
        response = await self.ds.client.post(
            self.action, data={**data, **fields}, cookies=self.cookies
        )
        assert response.status_code == 302, response.text


async def routed(ds: Datasette, purpose: str) -> str:
    return (await LLM(ds).model(purpose=purpose)).model_id


async def routed_within(ds: Datasette, model_id: str, seconds: float) -> float | None:
    """Route ``extract`` every 10 ms until ``model_id`` serves it: how long that took, or
    ``None`` when it still did not after ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if await routed(ds, "extract") == model_id:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    return None


async def test_an_override_saved_through_one_process_routes_the_others_next_call_at_once(
    redis_server: RedisServer, sharing: Make, prefix: str
) -> None:
    writer, reader = await sharing(redis_server.url), await sharing(redis_server.url)
    await listening(redis_server, prefix, 2)
    assert await routed(reader, "extract") == "test-a"
    form = await Form.load(writer, "extract")
    await refresh_overrides(reader)  # its check a second is not due for a second now
    checked = time.monotonic()
    reloads = freshness_of(reader).reloads

    await form.save(model="test-b")

    took = await routed_within(reader, "test-b", SOON)
    assert took is not None, f"the reader does not route by the override after {SOON} s"
    assert time.monotonic() - checked < REFRESH_SECONDS  # so its check a second never ran
    assert freshness_of(reader).reloads == reloads + 1
    assert await routed(writer, "extract") == "test-b"


async def test_the_very_next_call_routes_by_it_even_before_the_notice_is_heard(
    redis_server: RedisServer, sharing: Make
) -> None:
    writer, reader = await sharing(redis_server.url), await sharing(redis_server.url)
    assert await routed(reader, "extract") == "test-a"
    form = await Form.load(writer, "extract")
    await refresh_overrides(reader)  # its check a second is not due for a second now
    coordinator = coordinator_for(reader, config_for(reader).coordination)
    assert isinstance(coordinator, RedisCoordinator)
    for task in coordinator.stop_listening():  # the notice will not be heard
        with contextlib.suppress(asyncio.CancelledError):
            await task

    await form.save(model="test-b")

    # No wait: the shared version of the overrides is ahead, so the call reads them first.
    assert await routed(reader, "extract") == "test-b"


async def test_without_redis_the_other_process_sees_it_only_at_its_check_a_second(
    sharing: Make,
) -> None:
    writer, reader = await sharing(None), await sharing(None)
    assert await routed(reader, "extract") == "test-a"
    form = await Form.load(writer, "extract")
    await refresh_overrides(reader)

    await form.save(model="test-b")

    assert await routed_within(reader, "test-b", SOON) is None  # what Redis makes immediate
    assert await routed_within(reader, "test-b", REFRESH_SECONDS + 0.5) is not None


async def test_redis_going_away_fails_no_edit_and_the_notices_resume_when_it_is_back(
    own_redis_server: RedisServer, sharing: Make, prefix: str
) -> None:
    server = own_redis_server
    writer, reader = await sharing(server.url), await sharing(server.url)
    await listening(server, prefix, 2)

    server.stop()
    form = await Form.load(writer, "extract")
    await form.save(model="test-b")  # announced to no one: the edit is saved all the same
    assert await routed_within(reader, "test-b", REFRESH_SECONDS + 0.5) is not None

    server.start()
    await listening(server, prefix, 2)  # each listener subscribed again by itself
    assert await routed(reader, "extract") == "test-b"
    form = await Form.load(writer, "extract")
    await refresh_overrides(reader)
    await form.save(model="test-c")
    assert await routed_within(reader, "test-c", SOON) is not None


async def test_shutdown_stops_listening(
    redis_server: RedisServer, sharing: Make, prefix: str
) -> None:
    first, second = await sharing(redis_server.url), await sharing(redis_server.url)
    await listening(redis_server, prefix, 2)
    await close_coordination(first)  # what the shutdown hook does
    await listening(redis_server, prefix, 1)
    assert await routed(second, "extract") == "test-a"
