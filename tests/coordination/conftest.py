"""A real ``redis-server`` on a free local port, started and stopped by the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from datasette.app import Datasette

from datasette_llm.coordination import close_coordination
from datasette_llm.usage.ledger import flush_usage


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` process on 127.0.0.1, keeping nothing on disk.

    Attributes:
        port: Its port, the same across ``stop`` and ``start``.
        url: ``redis://127.0.0.1:PORT/0``.
    """

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it, and wait until it accepts connections."""
        self._process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Stop it (its data is gone, as after a crash without persistence)."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            process.wait(10)


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
