"""The routing page ``/-/llm`` and ``/-/llm.json``: what it shows and who may see it."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest
from syrupy.assertion import SnapshotAssertion

from datasette_llm import Purpose
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import TestModelsPlugin
from tests.served import free_port, wait_until_up

SECRET_VALUE: Final = "sk-this-value-must-never-be-shown"

PURPOSES: Final = [
    Purpose(
        "enrichments",
        owner="datasette-enrichments-llm",
        description="Run a prompt against every row of a table",
        default_model="test-b",
    ),
    Purpose(
        "extract",
        owner="datasette-extract",
        description="Extract structured data from text",
        default_model="test-keyed-2",
    ),
    Purpose("agent", owner="datasette-agent", description="Answer questions with tools"),
]

CONFIG: Final[dict[str, Any]] = {
    "default_model": "test-a",
    "blocked_models": ["test-fails"],
    "purposes": {
        "enrichments": {
            "model": {"model": "test-keyed", "key": "ENRICHMENTS_KEY"},
            "models": ["test-keyed", "test-b", "test-bb"],
        },
        "agent": {"model": "test-fails"},
        "enrichment": {"model": "test-c"},
    },
}


class RoutingPurposes:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return PURPOSES


class CollidingPurposes:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return [Purpose("extract", owner="datasette-other", description="Another extract")]


@pytest.fixture
def routed(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
    monkeypatch: pytest.MonkeyPatch,
) -> Datasette:
    monkeypatch.setenv("DATASETTE_SECRETS_ENRICHMENTS_KEY", SECRET_VALUE)
    register_plugin(RoutingPurposes())
    register_plugin(CollidingPurposes())  # registered second: its 'extract' is ignored
    datasette = make_datasette(
        CONFIG, config={"permissions": {"llm-view-routing": {"id": "alice"}}}
    )
    datasette.root_enabled = True
    return datasette


def as_actor(datasette: Datasette, actor_id: str | None) -> dict[str, Any]:
    if actor_id is None:
        return {}
    return {"cookies": {"ds_actor": datasette.client.actor_cookie({"id": actor_id})}}


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/-/llm", "/-/llm.json"])
@pytest.mark.parametrize("actor_id", [None, "bob"])
async def test_anonymous_and_non_granted_actors_get_403(
    routed: Datasette, path: str, actor_id: str | None
) -> None:
    response = await routed.client.get(path, **as_actor(routed, actor_id))
    assert response.status_code == 403
    assert "llm-view-routing" in response.text
    assert "enrichments" not in response.text


@pytest.mark.asyncio
async def test_the_json_403_is_json(routed: Datasette) -> None:
    response = await routed.client.get("/-/llm.json")
    assert response.json()["ok"] is False


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/-/llm", "/-/llm.json"])
async def test_an_actor_granted_in_datasette_yaml_may_view(routed: Datasette, path: str) -> None:
    response = await routed.client.get(path, **as_actor(routed, "alice"))
    assert response.status_code == 200


@pytest.mark.asyncio
async def test_root_may_view_when_root_is_enabled_and_nobody_is_granted(
    test_models: TestModelsPlugin, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette({})
    assert (await datasette.client.get("/-/llm", **as_actor(datasette, "root"))).status_code == 403
    datasette.root_enabled = True
    assert (await datasette.client.get("/-/llm", **as_actor(datasette, "root"))).status_code == 200
    assert (await datasette.client.get("/-/llm", **as_actor(datasette, "alice"))).status_code == (
        403
    )


@pytest.mark.asyncio
async def test_the_json_report_shows_every_purpose_route_and_problem(
    routed: Datasette, snapshot: SnapshotAssertion
) -> None:
    response = await routed.client.get("/-/llm.json", **as_actor(routed, "root"))
    assert response.status_code == 200
    data = response.json()
    assert data.pop("installed_model_count") >= 6  # depends on the llm plugins installed
    assert data == snapshot


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/-/llm", "/-/llm.json"])
async def test_key_values_are_never_shown_only_secret_names(routed: Datasette, path: str) -> None:
    response = await routed.client.get(path, **as_actor(routed, "root"))
    assert SECRET_VALUE not in response.text
    assert "ENRICHMENTS_KEY" in response.text


@pytest.mark.asyncio
async def test_the_html_page_uses_datasettes_base_template_and_lists_purposes(
    routed: Datasette,
) -> None:
    response = await routed.client.get("/-/llm", **as_actor(routed, "root"))
    html = response.text
    assert "<title>LLM routing</title>" in html
    assert 'class="not-footer"' in html  # Datasette's base.html
    for text in (
        "enrichments",
        "datasette-enrichments-llm",
        "chosen by purposes.enrichments.model",
        "key set</span> <code>ENRICHMENTS_KEY</code>",
        "did you mean <code>enrichments</code>?",
        "<code>test-bb</code> at <code>plugins.datasette-llm.purposes.enrichments.models[2]</code>",
        "<strong>extract</strong> is registered by <code>datasette-extract</code> (kept)",
    ):
        assert text in html


@pytest.mark.asyncio
async def test_a_purpose_that_resolves_to_no_model_shows_why(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
) -> None:
    register_plugin(RoutingPurposes())
    datasette = make_datasette({"purposes": {"agent": {"model": "test-a"}}})
    datasette.root_enabled = True
    data = (await datasette.client.get("/-/llm.json", **as_actor(datasette, "root"))).json()
    routes = {purpose["name"]: purpose["resolved"] for purpose in data["purposes"]}
    assert routes["agent"]["model_id"] == "test-a"
    assert routes["extract"]["model_id"] is None
    assert routes["extract"]["error"].startswith(
        "No model could be routed for purpose 'extract': every candidate was refused.\n"
        "  - Purpose('extract').default_model recommends 'test-keyed-2', skipped because it has "
        "no API key (set the secret TESTPROV_API_KEY)"
    )


@pytest.mark.asyncio
async def test_hook_menu_links_links_to_the_page_for_allowed_actors_only(
    routed: Datasette,
) -> None:
    link = '<a href="/-/llm">LLM routing</a>'
    assert link in (await routed.client.get("/", **as_actor(routed, "root"))).text
    assert link not in (await routed.client.get("/", **as_actor(routed, "bob"))).text


@pytest.mark.asyncio
async def test_a_configuration_broken_after_startup_is_shown_as_problems(
    test_models: TestModelsPlugin, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette({"default_model": "test-a"})
    datasette.root_enabled = True
    await datasette.invoke_startup()
    assert datasette.config is not None
    datasette.config["plugins"]["datasette-llm"] = {"default_model": ["test-a"]}
    data = (await datasette.client.get("/-/llm.json", **as_actor(datasette, "root"))).json()
    assert data["ok"] is False
    assert [problem["path"] for problem in data["problems"]] == [
        "plugins.datasette-llm.default_model"
    ]
    html = (await datasette.client.get("/-/llm", **as_actor(datasette, "root"))).text
    assert "<code>plugins.datasette-llm.default_model</code>: expected a model id string" in html


# --- Rendered in a real browser -------------------------------------------------------------

PLUGIN_SOURCE: Final = """
from datasette import hookimpl
from datasette_llm import Purpose


@hookimpl
def register_llm_purposes(datasette):
    return [
        Purpose("enrichments", owner="datasette-enrichments-llm",
                description="Run a prompt against every row of a table"),
        Purpose("extract", owner="datasette-extract",
                description="Extract structured data from text"),
    ]
"""

SERVER_CONFIG: Final = """
permissions:
  llm-view-routing: true
plugins:
  datasette-llm:
    default_model: echo
    purposes:
      enrichments:
        model: echo
      extract:
        models: [echo, echo-needs-key]
"""


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    chromium = shutil.which("chromium")
    assert chromium is not None
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (scripts/test.sh installs it; CI never skips this)",
)
def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "purposes.py").write_text(PLUGIN_SOURCE)
    config = tmp_path / "datasette.yaml"
    config.write_text(SERVER_CONFIG)
    port = free_port()
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path / "llm-user")}
    datasette = Path(sys.executable).with_name("datasette")
    server = subprocess.Popen(
        [
            *(str(datasette), "serve", "--memory", "-c", str(config)),
            *("--plugins-dir", str(plugins), "--host", "127.0.0.1", "--port", str(port)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/-/llm"
    try:
        wait_until_up(f"http://127.0.0.1:{port}/-/versions.json", server)
        dom = _chromium(tmp_path / "profile-dom", "--dump-dom", url).stdout.decode()
        screenshot = tmp_path / "routing.png"
        _chromium(
            tmp_path / "profile-shot",
            f"--screenshot={screenshot}",
            "--window-size=1200,900",
            url,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "<h1>LLM routing</h1>" in dom
    for name in ("enrichments", "extract", "datasette-enrichments-llm", "echo-needs-key"):
        assert name in dom
    data = screenshot.read_bytes()
    assert _png_size(data) == (1200, 900)
    assert len(data) > 20_000, "the screenshot looks blank"
