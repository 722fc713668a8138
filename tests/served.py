"""For tests that run a server of their own: a free port on 127.0.0.1, and waiting for it.

Also several ``datasette serve`` processes of one site (``start_served``), each loading a small
plugin that prompts through datasette-llm (``PROMPT_PLUGIN``).

Standard library only: ``benchmarks/coordination.py`` loads this file by its path.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until ``url`` answers, failing if ``process`` exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"datasette exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    raise AssertionError(f"datasette did not answer {url} within {timeout}s")


# Several ``datasette serve`` processes of one site, each prompting through a plugin of its own.

PROMPT_PLUGIN: Final = '''\
"""GET /-/test-prompt?purpose=P&prompt=TEXT: one prompt through datasette-llm, answered as JSON.

{"ok": true, "text": ..., "model_id": <the model that answered>}, or, when datasette-llm raised,
{"ok": false, "error": <its class>, "kind": <its kind>, "model_id": ..., "message": ...}.
"""

from datasette import hookimpl
from datasette.utils.asgi import Response

from datasette_llm import LLM, BudgetExceededError, ProviderError


async def test_prompt(datasette, request):
    purpose = request.args.get("purpose") or None
    try:
        model = await LLM(datasette).model(purpose=purpose, actor=request.actor)
        response = await model.prompt(request.args.get("prompt", "hello"))
        text = await response.text()
    except ProviderError as error:
        failed = {"error": "ProviderError", "kind": error.kind, "model_id": error.model_id}
        return Response.json({"ok": False, **failed, "message": str(error)})
    except BudgetExceededError as error:
        failed = {"error": "BudgetExceededError", "kind": "budget", "model_id": None}
        return Response.json({"ok": False, **failed, "message": str(error)})
    return Response.json({"ok": True, "text": text, "model_id": response.model.model_id})


@hookimpl
def register_routes():
    return [(r"^/-/test-prompt$", test_prompt)]
'''
"""The source of a plugin as a user of datasette-llm writes one, for ``--plugins-dir``: a page
that routes a purpose, prompts, and answers JSON (``ServedProcess.prompt`` reads it)."""


def write_prompt_plugin(directory: Path) -> Path:
    """Write ``PROMPT_PLUGIN`` into ``directory`` (made if missing); return the directory, for
    ``datasette serve --plugins-dir``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "test_prompt.py").write_text(PROMPT_PLUGIN)
    return directory


@dataclass
class ServedProcess:
    """A ``datasette serve`` subprocess on 127.0.0.1 loading ``PROMPT_PLUGIN``.

    Attributes:
        base: Its URL, ``http://127.0.0.1:PORT``.
        process: The subprocess.
        log: The file its stderr goes to (what datasette-llm logs, through Python's logging).
    """

    base: str
    process: subprocess.Popen[bytes]
    log: Path

    def prompt(self, purpose: str, text: str = "hello", timeout: float = 120) -> dict[str, Any]:
        """Send one prompt of ``purpose`` through ``/-/test-prompt``; return its JSON answer, or
        ``{"ok": False, "error": "HTTP 500", ...}`` (or the connection's error) when it had none.
        """
        query = urllib.parse.urlencode({"purpose": purpose, "prompt": text})
        try:
            with urllib.request.urlopen(f"{self.base}/-/test-prompt?{query}", timeout=timeout) as r:
                answer: dict[str, Any] = json.loads(r.read())
                return answer
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")
            return {"ok": False, "error": f"HTTP {error.code}", "kind": None, "message": body}
        except (urllib.error.URLError, OSError) as error:
            return {"ok": False, "error": type(error).__name__, "kind": None, "message": str(error)}

    def stderr(self) -> str:
        """What it has written to stderr so far."""
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Stop it (SIGTERM: Datasette's shutdown hooks run), waiting at most 30 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_served(
    count: int,
    config: Path,
    directory: Path,
    env: Mapping[str, str],
    *,
    internal: Path | None = None,
    secret: str = "served-test-secret",
    datasette: Path | None = None,
) -> list[ServedProcess]:
    """Start ``count`` ``datasette serve`` processes with the configuration ``config``, each on
    a free port and loading ``PROMPT_PLUGIN``; return them once each answers.

    Args:
        directory: Where the plugin and each process's stderr (``serve-N.log``) are written.
        env: Their environment (``LLM_USER_PATH`` among it, to find their models).
        internal: One internal database file they all share (``--internal``), so that an
            override saved through one routes the others; they then start one after the other,
            as Datasette's own setup of a new file fails with "database is locked" when two
            processes create it at once. ``None``: each keeps its own in memory, and they start
            together.
        secret: Their ``--secret``, to sign actors' cookies with.
        datasette: The ``datasette`` command; by default the one beside this Python.
    """
    command = datasette or Path(sys.executable).with_name("datasette")
    plugins = write_prompt_plugin(directory / "plugins")
    started: list[ServedProcess] = []
    try:
        for number in range(count):
            port = free_port()
            arguments = [
                *(str(command), "serve", "--memory", "-c", str(config), "--secret", secret),
                *("--plugins-dir", str(plugins), "--host", "127.0.0.1", "--port", str(port)),
                *(() if internal is None else ("--internal", str(internal))),
            ]
            log = directory / f"serve-{number}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    arguments, env=dict(env), stdout=subprocess.DEVNULL, stderr=output
                )
            started.append(ServedProcess(f"http://127.0.0.1:{port}", process, log))
            if internal is not None:
                _up(started[-1])
        for served in started:
            _up(served)
    except BaseException:
        stop_served(started)
        raise
    return started


def _up(served: ServedProcess) -> None:
    try:
        wait_until_up(f"{served.base}/-/versions.json", served.process)
    except AssertionError as error:
        raise AssertionError(f"{error}:\n{served.stderr()}") from None


def stop_served(served: Sequence[ServedProcess]) -> None:
    """Stop every process of ``served``."""
    for each in served:
        each.stop()
