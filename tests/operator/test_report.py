"""The routing page survives a failing plugin: one purpose's error never takes the page down."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import pytest

from datasette_llm import Purpose
from datasette_llm._operator import report
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import TestModelsPlugin

PURPOSES: Final = [
    Purpose("healthy", owner="plugin-a"),
    Purpose("broken", owner="plugin-b"),
    Purpose("stuck", owner="plugin-c"),
]


class Purposes:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return PURPOSES


class RaisingAndHangingDefaults:
    @hookimpl
    def llm_default_model(self, datasette: Datasette, purpose: str | None, actor: Any) -> Any:
        async def inner() -> str | None:
            if purpose == "broken":
                raise RuntimeError("the routing service is down")
            if purpose == "stuck":
                await asyncio.sleep(3600)
            return None

        return inner()


class FailingCatalog:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        raise RuntimeError("purpose registry unavailable")


def as_root(datasette: Datasette) -> dict[str, Any]:
    datasette.root_enabled = True
    return {"cookies": {"ds_actor": datasette.client.actor_cookie({"id": "root"})}}


@pytest.fixture
def failing(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
    monkeypatch: pytest.MonkeyPatch,
) -> Datasette:
    monkeypatch.setattr(report, "ROUTE_TIMEOUT_SECONDS", 0.2)
    register_plugin(Purposes())
    register_plugin(RaisingAndHangingDefaults())
    return make_datasette({"default_model": "test-a"})


@pytest.mark.asyncio
async def test_a_raising_and_a_hanging_llm_default_model_show_as_that_purposes_error_in_json(
    failing: Datasette,
) -> None:
    started = time.monotonic()
    response = await failing.client.get("/-/llm.json", **as_root(failing))
    assert time.monotonic() - started < 5
    assert response.status_code == 200
    routes = {purpose["name"]: purpose["resolved"] for purpose in response.json()["purposes"]}
    assert routes["healthy"]["model_id"] == "test-a"
    assert routes["broken"]["model_id"] is None
    assert routes["broken"]["error"].startswith(
        "Routing raised RuntimeError: the routing service is down."
    )
    assert routes["stuck"]["model_id"] is None
    assert routes["stuck"]["error"].startswith("Routing did not finish within 0.2 seconds")


@pytest.mark.asyncio
async def test_a_raising_and_a_hanging_llm_default_model_leave_the_html_page_up(
    failing: Datasette,
) -> None:
    response = await failing.client.get("/-/llm", **as_root(failing))
    assert response.status_code == 200
    assert "Routing raised RuntimeError: the routing service is down." in response.text
    assert "Routing did not finish within 0.2 seconds" in response.text
    assert "<strong><code>test-a</code></strong>" in response.text  # healthy still routes


def test_the_default_bound_for_a_hanging_hook_is_two_seconds() -> None:
    assert report.ROUTE_TIMEOUT_SECONDS == 2.0


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/-/llm", "/-/llm.json"])
async def test_a_failing_register_llm_purposes_is_a_problem_on_the_page_not_a_500(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
    path: str,
) -> None:
    datasette = make_datasette({"default_model": "test-a"})
    await datasette.invoke_startup()
    register_plugin(FailingCatalog())  # after startup, which would refuse it
    response = await datasette.client.get(path, **as_root(datasette))
    assert response.status_code == 200
    assert "register_llm_purposes" in response.text
    assert "purpose registry unavailable" in response.text
    if path.endswith(".json"):
        [problem] = response.json()["problems"]
        assert problem["path"] == "register_llm_purposes"
        assert problem["severity"] == "error"
        assert response.json()["default_resolved"]["model_id"] == "test-a"


@pytest.mark.asyncio
async def test_a_failing_register_llm_purposes_stops_startup_with_a_clear_error(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
) -> None:
    from datasette.utils import StartupError

    register_plugin(FailingCatalog())
    with pytest.raises(StartupError) as raised:
        await make_datasette({"default_model": "test-a"}).invoke_startup()
    assert str(raised.value).splitlines()[1] == (
        "  - register_llm_purposes: collecting the registered purposes failed: RuntimeError: "
        "purpose registry unavailable. Fix or uninstall the plugin whose register_llm_purposes "
        "fails; until then no purpose counts as registered."
    )
