"""Testing a route: ``POST /-/llm/test/<purpose>`` and ``datasette llm check --live``.

Each purpose's models are llm's OpenAI models pointing at the local provider of
``tests/openai_server.py`` (``down-gpt`` at a port where nothing listens), so a test prompt takes
the whole real path: routing, the openai client, retries, fallbacks and usage records.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from click.testing import CliRunner, Result
from datasette.cli import cli

from datasette_llm import Purpose
from datasette_llm._operator.live import try_route
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.openai_server import Provider, Reply, serve, write_extra_models

SECRET_VALUE: Final = "sk-live-test-secret-never-shown"
# Datasette 1.0a24 and later check Sec-Fetch-Site and Origin; before, asgi-csrf's token.
HEADER_CSRF: Final = importlib.util.find_spec("datasette.csrf") is not None

CONFIG: Final[dict[str, Any]] = {
    "purposes": {
        "summaries": {
            "model": {"model": "primary-gpt", "key": "SUMMARIES_KEY"},
            "fallbacks": ["backup-gpt"],
            "retries": 0,
        },
        "offline": {"model": "down-gpt"},
    },
}
PERMISSIONS: Final = {
    "llm-view-routing": {"id": ["alice", "carol"]},
    "llm-manage-routing": {"id": "carol"},
}


class LivePurposes:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return [Purpose("summaries", owner="test-live"), Purpose("offline", owner="test-live")]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def provider(
    llm_user_dir: Path, register_plugin: RegisterPlugin, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Provider]:
    monkeypatch.setenv("DATASETTE_SECRETS_SUMMARIES_KEY", SECRET_VALUE)
    register_plugin(LivePurposes())
    with serve() as running:
        down = f"http://127.0.0.1:{closed_port()}/v1"
        targets: dict[str, Provider | str] = {
            "primary-gpt": running,
            "backup-gpt": running,
            "down-gpt": down,
        }
        write_extra_models(llm_user_dir, targets, primary_gpt="local-key")
        yield running


@pytest.fixture
def datasette(provider: Provider, make_datasette: MakeDatasette) -> Datasette:
    ds = make_datasette(CONFIG, config={"permissions": PERMISSIONS})
    ds.root_enabled = True
    return ds


def upstream(provider: Provider) -> list[str]:
    return [str(seen.body["model"]).removesuffix("-upstream") for seen in provider.requests]


def actor_cookies(ds: Datasette, actor_id: str | None) -> dict[str, str]:
    return {} if actor_id is None else {"ds_actor": ds.client.actor_cookie({"id": actor_id})}


async def submit(
    ds: Datasette,
    purpose: str,
    actor_id: str | None = "root",
    *,
    as_json: bool = True,
    token: bool = True,
    headers: dict[str, str] | None = None,
) -> Any:
    """POST the "Test this route" form of the routing page, as a browser would."""
    cookies = actor_cookies(ds, actor_id)
    data = {}
    if token:
        page = await ds.client.get("/-/llm", cookies=actor_cookies(ds, "root"))
        found = re.search(r'action="/-/llm/test/[^"]+"><input[^>]+value="([^"]*)"', page.text)
        assert found is not None, "the page has no form with a token"
        data["csrftoken"] = found.group(1)
        cookies.update(dict(page.cookies))
    path = f"/-/llm/test/{purpose}" + ("?_format=json" if as_json else "")
    return await ds.client.post(path, data=data, cookies=cookies, headers=headers or {})


# The endpoint


async def test_a_route_test_answers_with_the_model_its_latency_and_tokens(
    datasette: Datasette, provider: Provider
) -> None:
    provider.script = [Reply(text="OK then")]
    response = await submit(datasette, "summaries")
    assert response.status_code == 200
    result = response.json()
    assert result["ok"] is True
    assert result["model"] == result["routed_model"] == "primary-gpt"
    assert result["latency"] > 0
    assert (result["input_tokens"], result["output_tokens"]) == (3, 2)
    assert [(a["model"], a["error"]) for a in result["attempts"]] == [("primary-gpt", None)]
    assert result["reply"] == "OK then"
    assert result["error"] is None
    assert provider.requests[0].body["messages"][-1]["content"] == "Reply with the word OK."


async def test_a_failing_primary_shows_its_attempt_and_the_fallback_that_answered(
    datasette: Datasette, provider: Provider
) -> None:
    provider.script = [Reply(status=500, message="broken"), Reply()]
    result = (await submit(datasette, "summaries")).json()
    assert result["ok"] is True
    assert (result["routed_model"], result["model"]) == ("primary-gpt", "backup-gpt")
    attempts = [(a["model"], a["error"]) for a in result["attempts"]]
    assert attempts == [("primary-gpt", "server_error"), ("backup-gpt", None)]
    assert upstream(provider) == ["primary-gpt", "backup-gpt"]


async def test_the_html_result_shows_the_attempts_and_the_fallback(
    datasette: Datasette, provider: Provider
) -> None:
    provider.script = [Reply(status=500, message="broken"), Reply()]
    response = await submit(datasette, "summaries", as_json=False)
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "answered by a fallback" in response.text
    assert "<code>backup-gpt</code>" in response.text
    assert "<code>server_error</code>" in response.text


async def test_a_provider_that_is_down_shows_the_error_kind(
    datasette: Datasette, provider: Provider
) -> None:
    result = (await submit(datasette, "offline")).json()
    assert result["ok"] is False
    assert result["error"] == "connection"
    assert result["model"] is None
    assert result["routed_model"] == "down-gpt"
    assert {(a["model"], a["error"]) for a in result["attempts"]} == {("down-gpt", "connection")}
    assert "down-gpt" in result["message"]


async def test_a_failure_message_never_shows_the_key(
    datasette: Datasette, provider: Provider
) -> None:
    provider.default = Reply(status=401, message=f"Incorrect API key provided: {SECRET_VALUE}")
    for as_json in (True, False):
        response = await submit(datasette, "summaries", as_json=as_json)
        assert response.status_code == 200
        assert "auth" in response.text
        assert SECRET_VALUE not in response.text
    assert provider.requests[0].headers["authorization"] == f"Bearer {SECRET_VALUE}"


async def test_the_reply_is_escaped_in_the_html_result(
    datasette: Datasette, provider: Provider
) -> None:
    provider.script = [Reply(text="<script>alert(1)</script>")]
    response = await submit(datasette, "summaries", as_json=False)
    assert "<script>alert(1)" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text


async def test_an_unknown_purpose_is_a_404_naming_the_nearest(
    datasette: Datasette, provider: Provider
) -> None:
    response = await submit(datasette, "summary")
    assert response.status_code == 404
    assert "did you mean 'summaries'?" in response.json()["error"]
    assert provider.requests == []


async def test_the_result_is_json_when_the_client_accepts_json(
    datasette: Datasette, provider: Provider
) -> None:
    response = await submit(
        datasette, "summaries", as_json=False, headers={"accept": "application/json"}
    )
    assert response.json()["model"] == "primary-gpt"


async def test_a_route_test_is_cut_off_after_its_timeout(
    datasette: Datasette, provider: Provider
) -> None:
    provider.default = Reply(delay=5)
    result = await try_route(datasette, "summaries", {"id": "root"}, timeout=0.3)
    assert (result.ok, result.error, result.model_id) == (False, "timeout", None)
    assert result.latency < 2
    assert result.message == "No answer within 0.3 seconds."


# Who may test a route, and how


@pytest.mark.parametrize("actor_id", [None, "bob", "alice"])
@pytest.mark.parametrize("as_json", [True, False])
async def test_anonymous_and_unpermitted_actors_get_403_and_nothing_is_sent(
    datasette: Datasette, provider: Provider, actor_id: str | None, as_json: bool
) -> None:
    response = await submit(datasette, "summaries", actor_id, as_json=as_json)
    assert response.status_code == 403
    assert "llm-manage-routing" in response.text
    assert provider.requests == []


async def test_root_and_an_actor_granted_llm_manage_routing_may_test(
    datasette: Datasette, provider: Provider
) -> None:
    for actor_id in ("root", "carol"):
        assert (await submit(datasette, "summaries", actor_id)).json()["ok"] is True
    assert upstream(provider) == ["primary-gpt", "primary-gpt"]


async def test_a_post_from_another_site_is_refused(
    datasette: Datasette, provider: Provider
) -> None:
    if HEADER_CSRF:
        cross_site = {"sec-fetch-site": "cross-site", "origin": "https://elsewhere.example"}
        response = await submit(datasette, "summaries", token=False, headers=cross_site)
    else:
        response = await submit(datasette, "summaries", token=False)
    assert response.status_code == 403
    assert "llm-manage-routing" not in response.text  # refused before the view
    assert provider.requests == []


async def test_a_get_sends_nothing(datasette: Datasette, provider: Provider) -> None:
    cookies = actor_cookies(datasette, "root")
    for path in ("/-/llm/test/summaries", "/-/llm/test/summaries?_format=json"):
        response = await datasette.client.get(path, cookies=cookies)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
    assert provider.requests == []


@pytest.mark.parametrize(("actor_id", "shown"), [("root", True), ("carol", True), ("alice", False)])
async def test_the_button_is_shown_only_to_actors_who_may_test(
    datasette: Datasette, provider: Provider, actor_id: str, shown: bool
) -> None:
    page = await datasette.client.get("/-/llm", cookies=actor_cookies(datasette, actor_id))
    assert page.status_code == 200
    assert ("Test this route" in page.text) is shown
    assert ('action="/-/llm/test/summaries"' in page.text) is shown


# datasette llm check --live


def check(tmp_path: Path, *args: str) -> Result:
    path = tmp_path / "datasette.yaml"
    path.write_text(json.dumps({"plugins": {"datasette-llm": CONFIG}}))
    return CliRunner().invoke(cli, ["llm", "check", "-c", str(path), *args], catch_exceptions=False)


def test_check_live_prints_each_purposes_answer_and_exits_1_when_one_fails(
    tmp_path: Path, provider: Provider
) -> None:
    result = check(tmp_path, "--live")
    assert result.exit_code == 1, result.output
    assert "datasette-llm configuration OK" in result.stdout
    lines = result.stdout.splitlines()
    summaries = next(line for line in lines if line.startswith("summaries "))
    assert summaries.split()[:3] == ["summaries", "ok", "primary-gpt"]
    assert "3 in, 5 out" in summaries
    offline = next(line for line in lines if line.startswith("offline "))
    assert offline.split()[:4] == ["offline", "FAILED", "(connection)", "-"]
    assert "1 of 2 purposes failed the live test." in result.stdout
    assert "Testing routes" in result.stderr
    assert "Testing routes" not in result.stdout


def test_check_live_for_one_purpose_tests_only_it_and_exits_0_when_it_answers(
    tmp_path: Path, provider: Provider
) -> None:
    provider.script = [Reply(status=500, message="broken")]
    result = check(tmp_path, "--live", "--purpose", "summaries")
    assert result.exit_code == 0, result.output
    assert "primary-gpt server_error" in result.stdout
    assert "backup-gpt ok" in result.stdout
    assert "offline" not in result.stdout
    assert "Every purpose answered (1 tested)." in result.stdout


def test_check_live_with_an_unknown_purpose_is_an_error_naming_the_nearest(
    tmp_path: Path, provider: Provider
) -> None:
    result = check(tmp_path, "--live", "--purpose", "summary")
    assert result.exit_code == 2
    assert "Unknown purpose 'summary' — did you mean 'summaries'?" in result.stderr
    assert provider.requests == []


def test_check_purpose_without_live_is_a_usage_error(tmp_path: Path, provider: Provider) -> None:
    result = check(tmp_path, "--purpose", "summaries")
    assert result.exit_code == 2
    assert "--purpose NAME needs --live" in result.stderr


def test_check_live_json_includes_the_results_and_no_progress_bar(
    tmp_path: Path, provider: Provider
) -> None:
    result = check(tmp_path, "--live", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["errors"] == 0
    assert data["live"]["failed"] == 1
    by_purpose = {entry["purpose"]: entry for entry in data["live"]["results"]}
    assert by_purpose["summaries"]["model"] == "primary-gpt"
    assert by_purpose["summaries"]["input_tokens"] == 3
    assert by_purpose["offline"]["error"] == "connection"
    assert SECRET_VALUE not in result.output


def test_check_without_live_sends_nothing(tmp_path: Path, provider: Provider) -> None:
    result = check(tmp_path)
    assert result.exit_code == 0
    assert "live" not in json.loads(check(tmp_path, "--json").stdout)
    assert provider.requests == []
