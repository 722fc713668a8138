"""A real ``redis-server`` on a free local port (``tests/redis_server.py``), started and stopped
by the tests."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from datasette.app import Datasette

from datasette_llm.coordination import close_coordination
from datasette_llm.usage.ledger import flush_usage
from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_executable() -> str:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip(
            "redis-server is not installed: these tests run a real one "
            "(Debian: apt-get install redis-server)"
        )
    return executable


@pytest.fixture(scope="session")
def redis_server(
    redis_executable: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """One server for the session; each test keeps to its own ``prefix``."""
    server = RedisServer(redis_executable, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(redis_executable: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A server for one test, which may stop and start it."""
    server = RedisServer(redis_executable, tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """Keys of this test's own."""
    return f"test-{uuid.uuid4().hex[:8]}"


async def shut_down(datasette: Datasette) -> None:
    """Shut ``datasette`` down as ``datasette serve`` does when it stops: its ``shutdown``
    hooks; on Datasette 1.0a23, which has none, what datasette-llm's would do."""
    if hasattr(datasette, "invoke_shutdown"):
        await datasette.invoke_shutdown()
        return
    await flush_usage(datasette)
    await close_coordination(datasette)


CONFIG: Final[dict[str, Any]] = {"purposes": {"extract": {"model": "test-a"}}}
"""The datasette-llm section of the Datasettes ``started`` makes, before ``coordination``."""

Make = Callable[..., Awaitable[Datasette]]
"""``started``'s maker: ``make(redis, *files, usage=..., **options)``."""


def llm_config(redis: str | None, prefix: str, **usage: object) -> dict[str, Any]:
    """``CONFIG`` with ``coordination`` on the Redis at ``redis`` (none if ``None``) under
    ``prefix``, two processes sharing it, and the ``usage`` settings given."""
    config: dict[str, Any] = dict(CONFIG)
    if redis is not None:
        config["coordination"] = {"redis": redis, "prefix": prefix, "processes": 2}
    if usage:
        config["usage"] = usage
    return config


@pytest.fixture
async def started(prefix: str) -> AsyncIterator[Make]:
    """Make started Datasettes (as ``datasette serve`` starts them) of ``llm_config``, with the
    database ``files`` and the other ``Datasette`` options given; shut them down after."""
    made: list[Datasette] = []

    async def make(redis: str | None, *files: str, **options: Any) -> Datasette:
        usage = options.pop("usage", {})
        datasette = Datasette(
            list(files),
            memory=True,
            config={"plugins": {"datasette-llm": llm_config(redis, prefix, **usage)}},
            **options,
        )
        datasette.root_enabled = True
        await datasette.invoke_startup()
        made.append(datasette)
        return datasette

    yield make
    for datasette in made:
        await shut_down(datasette)
