"""The plugin author's path, installed as a user installs it: ``examples/datasette-summarize``
(written as the README says: ``from datasette_llm.typing import Datasette, hookimpl`` at the top
of its module) and datasette-llm, each built into a wheel and installed with pip into a fresh
venv, then ``datasette plugins`` and ``datasette serve`` with it, asked for one of its pages.

Datasette imports plugins while ``datasette.app`` is still importing: a plugin importing
``Datasette`` at the top of its module must not break that (it did: an ImportError naming a
partially initialized module). The venv sees this venv's other packages (Datasette, llm,
llm-echo) through symlinks, as ``tests/suites/test_typing.py`` builds its environments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.served import free_port, wait_until_up
from tests.suites.test_typing import ROOT, copy_source, environment, run

EXAMPLE = ROOT / "examples" / "datasette-summarize"
# Ours, as the editable install of this venv has them: the venv gets the wheels instead.
OURS = ("datasette_llm", "__editable__", "_datasette_llm", "datasette_summarize")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv with datasette-llm's and the example's wheels installed by pip; its python."""
    directory = tmp_path_factory.mktemp("installed")
    out = directory / "wheels"
    sources = [copy_source(ROOT, directory / "datasette-llm")]
    sources.append(copy_source(EXAMPLE, directory / "datasette-summarize"))
    wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out)]
    run([*wheel, *map(str, sources)])
    yield environment(directory / "venv", without=OURS, wheels=tuple(out.glob("*.whl")))


def datasette(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # From a directory of its own: the checkout must not shadow the installed packages.
    return subprocess.run(
        [str(python), "-m", "datasette", *args], capture_output=True, text=True, cwd=cwd
    )


def test_datasette_lists_the_installed_plugin_and_datasette_llm(
    installed: Path, tmp_path: Path
) -> None:
    result = datasette(installed, "plugins", "--all", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = {plugin["name"] for plugin in json.loads(result.stdout)}
    assert {"datasette-llm", "datasette-summarize"} <= names


def test_the_installed_plugin_answers_through_the_model_the_operator_routes_it_to(
    installed: Path, tmp_path: Path
) -> None:
    config = tmp_path / "datasette.yaml"
    config.write_text(
        "plugins:\n  datasette-llm:\n    purposes:\n      summarize:\n        model: echo\n"
    )
    port = free_port()
    command = [str(installed), "-m", "datasette", "serve", "-p", str(port), "-c", str(config)]
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path / "llm")}
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/-/versions.json", server)
        with urllib.request.urlopen(f"{base}/-/summarize?text=hello") as answer:
            body = json.loads(answer.read())
        assert "hello" in body["summary"]  # llm-echo echoes the prompt it was sent
    finally:
        server.terminate()
        server.wait(10)
