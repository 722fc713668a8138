"""The routing page shows the options configured for each purpose's model, never a secret."""

from __future__ import annotations

from typing import Any, Final

import pytest

from datasette_llm import Purpose
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import TestModelsPlugin

SECRET_STYLE: Final = "style-from-the-environment-never-shown"


class Purposes:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return [Purpose("enrichments", owner="plugin-a"), Purpose("plain", owner="plugin-a")]


@pytest.fixture
def configured(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
    monkeypatch: pytest.MonkeyPatch,
) -> Datasette:
    monkeypatch.setenv("STYLE_SECRET", SECRET_STYLE)
    register_plugin(Purposes())
    datasette = make_datasette(
        {
            "default_model": "test-a",
            "purposes": {
                "enrichments": {
                    "model": {
                        "model": "test-b",
                        "options": {"temperature": 0.2, "style": {"$env": "STYLE_SECRET"}},
                    }
                }
            },
        }
    )
    datasette.root_enabled = True
    return datasette


def as_root(datasette: Datasette) -> dict[str, Any]:
    return {"cookies": {"ds_actor": datasette.client.actor_cookie({"id": "root"})}}


@pytest.mark.asyncio
async def test_the_html_page_shows_each_purposes_configured_options(configured: Datasette) -> None:
    html = (await configured.client.get("/-/llm", **as_root(configured))).text
    row = html[html.index("<strong>enrichments</strong>") : html.index("<strong>plain</strong>")]
    assert '<span class="llm-muted">options:</span> <code>temperature: 0.2</code>' in row
    assert '<code>style: "(the value of $env STYLE_SECRET)"</code>' in row
    plain = html[html.index("<strong>plain</strong>") :].split("</tr>")[0]
    assert "options:" not in plain
    assert SECRET_STYLE not in html


@pytest.mark.asyncio
async def test_the_json_report_shows_options_naming_where_an_env_value_comes_from(
    configured: Datasette,
) -> None:
    response = await configured.client.get("/-/llm.json", **as_root(configured))
    assert SECRET_STYLE not in response.text
    options = {purpose["name"]: purpose["options"] for purpose in response.json()["purposes"]}
    assert options == {
        "enrichments": {"temperature": 0.2, "style": "(the value of $env STYLE_SECRET)"},
        "plain": {},
    }
