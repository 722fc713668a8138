"""Live routing: overrides set on ``/-/llm`` over datasette.yaml, who may set them, and their
record."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import pytest

from datasette_llm import LLM
from datasette_llm.config.overrides import (
    RouteOverride,
    audit_entries,
    load_overrides,
    overrides_of,
)
from datasette_llm.routing.overlay import config_for
from datasette_llm.typing import Datasette
from tests.conftest import MakeDatasette
from tests.llm_models import TestModelsPlugin
from tests.routing_page import OVERRIDE_FORM

ESCAPED: Final = "<b>x</b>"

CONFIG: Final[dict[str, Any]] = {
    "blocked_models": ["test-fails"],
    "purposes": {
        "summaries": {"model": "test-a", "fallbacks": ["test-b"]},
        "frozen": {"model": "test-a", "locked": True},
        ESCAPED: {"model": "test-a"},
    },
}
PERMISSIONS: Final = {
    "permissions": {"llm-manage-routing": {"id": "alice"}, "llm-view-routing": {"id": "alice"}}
}


@pytest.fixture
def ds(test_models: TestModelsPlugin, make_datasette: MakeDatasette) -> Datasette:
    datasette = make_datasette(CONFIG, config=PERMISSIONS)
    datasette.root_enabled = True
    return datasette


def cookies_of(ds: Datasette, actor_id: str | None) -> dict[str, str]:
    return {} if actor_id is None else {"ds_actor": ds.client.actor_cookie({"id": actor_id})}


def edit_path(purpose: str) -> str:
    return "/-/llm/purposes/" + quote(purpose, safe="")


async def forms(ds: Datasette) -> tuple[dict[str, tuple[str, int]], dict[str, str], str]:
    """Each form's token and version by action, the page's cookies, and the page, as root."""
    page = await ds.client.get("/-/llm", cookies=cookies_of(ds, "root"))
    assert page.status_code == 200
    found = {
        unescape(a): (token, int(version)) for a, token, version in OVERRIDE_FORM.findall(page.text)
    }
    return found, dict(page.cookies), page.text


async def post(
    ds: Datasette,
    purpose: str,
    actor_id: str | None = "root",
    *,
    version: int | None = None,
    **fields: str,
) -> Any:
    """Submit the purpose's form on the routing page, as a browser would."""
    found, page_cookies, _ = await forms(ds)
    token, current = found[edit_path(purpose)]
    data = {
        "csrftoken": token,
        "version": str(current if version is None else version),
        "model": "",
        "fallbacks": "",
        "options": "",
        **fields,
    }
    cookies = {**page_cookies, **cookies_of(ds, actor_id)}
    return await ds.client.post(edit_path(purpose), data=data, cookies=cookies)


async def routed(ds: Datasette, purpose: str) -> str:
    return (await LLM(ds).model(purpose=purpose)).model_id


# Taking effect


async def test_an_override_takes_effect_on_the_very_next_model_call(ds: Datasette) -> None:
    assert await routed(ds, "summaries") == "test-a"
    response = await post(ds, "summaries", model="test-b")
    assert response.status_code == 302
    assert await routed(ds, "summaries") == "test-b"


async def test_fallbacks_and_key_value_options_are_laid_over_datasette_yaml(
    ds: Datasette,
) -> None:
    response = await post(
        ds, "summaries", model="test-b", fallbacks="test-c\ntest-a", options="temperature=0.5"
    )
    assert response.status_code == 302
    purpose = config_for(ds).purposes["summaries"]
    assert purpose.model is not None
    assert (purpose.model.model_id, dict(purpose.model.options)) == ("test-b", {"temperature": 0.5})
    assert [ref.model_id for ref in purpose.fallbacks or ()] == ["test-c", "test-a"]


async def test_a_value_left_as_datasette_yaml_has_it_is_not_an_override(ds: Datasette) -> None:
    await post(ds, "summaries", model="test-a", fallbacks="test-b", options='{"style": "short"}')
    assert overrides_of(ds)["summaries"].override == RouteOverride(options={"style": "short"})


async def test_revert_returns_the_purpose_to_datasette_yaml(ds: Datasette) -> None:
    await post(ds, "summaries", model="test-b")
    response = await post(ds, "summaries", action="revert")
    assert response.status_code == 302
    assert await routed(ds, "summaries") == "test-a"
    assert overrides_of(ds)["summaries"].override.empty


# Who may write


@pytest.mark.parametrize("actor_id", [None, "bob"])
async def test_anonymous_and_unpermitted_actors_get_403_and_change_nothing(
    ds: Datasette, actor_id: str | None
) -> None:
    response = await post(ds, "summaries", actor_id, model="test-b")
    assert response.status_code == 403
    assert "llm-manage-routing" in response.text
    assert await routed(ds, "summaries") == "test-a"


async def test_an_actor_granted_llm_manage_routing_may_write(ds: Datasette) -> None:
    assert (await post(ds, "summaries", "alice", model="test-c")).status_code == 302
    assert await routed(ds, "summaries") == "test-c"


async def test_the_form_is_shown_only_to_actors_who_may_write(
    test_models: TestModelsPlugin, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(CONFIG, config={"permissions": {"llm-view-routing": {"id": "v"}}})
    page = await datasette.client.get("/-/llm", cookies=cookies_of(datasette, "v"))
    assert page.status_code == 200
    assert "llm-override-form" not in page.text
    assert '<h2 id="overrides">' in page.text


@pytest.mark.parametrize("actor_id", [None, "root"])
async def test_a_get_changes_nothing(ds: Datasette, actor_id: str | None) -> None:
    # A GET is the purpose's page (for actors allowed llm-view-routing): it changes nothing.
    response = await ds.client.get(edit_path("summaries"), cookies=cookies_of(ds, actor_id))
    assert response.status_code == (200 if actor_id else 403)
    assert "summaries" not in overrides_of(ds)


async def test_a_cross_site_post_without_the_csrf_token_is_refused(ds: Datasette) -> None:
    response = await ds.client.post(
        edit_path("summaries"),
        data={"version": "0", "model": "test-b"},
        cookies=cookies_of(ds, "root"),
        headers={"sec-fetch-site": "cross-site", "origin": "https://elsewhere.example"},
    )
    assert response.status_code == 403
    assert await routed(ds, "summaries") == "test-a"


async def test_a_locked_purpose_has_no_form_and_cannot_be_changed(ds: Datasette) -> None:
    found, page_cookies, page = await forms(ds)
    assert edit_path("frozen") not in found
    assert "locked in datasette.yaml" in page
    found_token = found[edit_path("summaries")][0]
    response = await ds.client.post(
        edit_path("frozen"),
        data={"csrftoken": found_token, "version": "0", "model": "test-b"},
        cookies={**page_cookies, **cookies_of(ds, "root")},
    )
    assert response.status_code == 403
    assert "locked: true" in response.text
    assert await routed(ds, "frozen") == "test-a"


# Refusals


async def test_a_blocked_model_is_refused_with_the_reason(ds: Datasette) -> None:
    _, _, page = await forms(ds)
    assert '<option value="test-fails"' not in page
    response = await post(ds, "summaries", model="test-fails")
    assert response.status_code == 400
    assert (
        "the model &#39;test-fails&#39; may not serve purpose &#39;summaries&#39;: it is in "
        "blocked_models" in response.text
    )
    assert await routed(ds, "summaries") == "test-a"
    assert "summaries" not in overrides_of(ds)


async def test_a_model_not_installed_is_refused_naming_the_nearest(ds: Datasette) -> None:
    response = await post(ds, "summaries", fallbacks="test-bb")
    assert response.status_code == 400
    assert "is not installed. Did you mean" in response.text


async def test_options_the_model_does_not_take_are_refused(ds: Datasette) -> None:
    response = await post(ds, "summaries", options='{"no_such_option": 1}')
    assert response.status_code == 400
    # Named with the model and the options it takes, with their types, never pydantic's text.
    text = unescape(response.text)
    assert "'test-a' does not accept the option 'no_such_option'" in text
    assert "Options it accepts: temperature (float or none), style (str or none)." in text
    assert "errors.pydantic.dev" not in text


# Conflicts


async def test_two_edits_from_the_same_version_conflict_and_the_first_is_kept(
    ds: Datasette,
) -> None:
    found, _, _ = await forms(ds)
    version = found[edit_path("summaries")][1]
    assert (await post(ds, "summaries", "alice", version=version, model="test-b")).status_code == (
        302
    )
    response = await post(ds, "summaries", "root", version=version, model="test-c")
    assert response.status_code == 409
    assert "alice" in response.text
    assert "test-b" in response.text and "test-c" in response.text  # theirs and mine
    assert await routed(ds, "summaries") == "test-b"
    current = overrides_of(ds)["summaries"]
    assert (current.version, current.updated_by) == (version + 1, "alice")
    retry = OVERRIDE_FORM.search(response.text)
    assert retry is not None and int(retry.group(3)) == version + 1


# The record


async def test_the_audit_list_records_who_when_before_and_after(ds: Datasette) -> None:
    await post(ds, "summaries", "alice", model="test-b")
    await post(ds, "summaries", "root", model="test-c")
    entries = await audit_entries(ds, "summaries")
    assert [(e.actor_id, e.before, e.after) for e in entries] == [
        ("root", RouteOverride(model="test-b"), RouteOverride(model="test-c")),
        ("alice", RouteOverride(), RouteOverride(model="test-b")),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", e.at) for e in entries)
    _, _, page = await forms(ds)
    assert "override by <strong>root</strong> at " + entries[0].at in page
    assert "<td>alice</td><td><code>summaries</code></td>" in page


async def test_overrides_survive_a_restart_with_an_internal_database_file(
    test_models: TestModelsPlugin, make_datasette: MakeDatasette, tmp_path: Path
) -> None:
    internal = str(tmp_path / "internal.db")
    first = make_datasette(CONFIG, config=PERMISSIONS, internal=internal)
    first.root_enabled = True
    assert (await post(first, "summaries", model="test-b")).status_code == 302
    restarted = make_datasette(CONFIG, config=PERMISSIONS, internal=internal)
    await restarted.invoke_startup()
    assert await routed(restarted, "summaries") == "test-b"
    assert overrides_of(restarted)["summaries"].updated_by == "root"


async def test_loading_is_awaitable_without_startup(
    test_models: TestModelsPlugin, make_datasette: MakeDatasette, tmp_path: Path
) -> None:
    internal = str(tmp_path / "internal.db")
    first = make_datasette(CONFIG, config=PERMISSIONS, internal=internal)
    first.root_enabled = True
    await post(first, "summaries", model="test-c")
    second = make_datasette(CONFIG, internal=internal)
    assert (await load_overrides(second))["summaries"].override.model == "test-c"
    assert await routed(second, "summaries") == "test-c"


async def test_an_override_datasette_yaml_no_longer_allows_is_not_in_effect(
    test_models: TestModelsPlugin, make_datasette: MakeDatasette, tmp_path: Path
) -> None:
    internal = str(tmp_path / "internal.db")
    first = make_datasette(CONFIG, config=PERMISSIONS, internal=internal)
    first.root_enabled = True
    await post(first, "summaries", model="test-b")
    blocking = {**CONFIG, "blocked_models": ["test-fails", "test-b"]}
    restarted = make_datasette(blocking, internal=internal)
    await restarted.invoke_startup()
    assert await routed(restarted, "summaries") == "test-a"


# Escaping


async def test_a_purpose_name_is_html_escaped_and_can_be_edited(ds: Datasette) -> None:
    _, _, page = await forms(ds)
    assert ESCAPED not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert (await post(ds, ESCAPED, model="test-c")).status_code == 302
    assert await routed(ds, ESCAPED) == "test-c"
    _, _, page = await forms(ds)
    assert ESCAPED not in page


async def test_a_refusal_page_escapes_what_was_submitted(ds: Datasette) -> None:
    response = await post(ds, ESCAPED, model="<i>m</i>", options="<s>=1")
    assert response.status_code == 400
    assert "<i>m</i>" not in response.text and "<s>" not in response.text
    assert ESCAPED not in response.text


async def test_an_unknown_purpose_is_a_404_and_its_name_escaped(ds: Datasette) -> None:
    found, page_cookies, _ = await forms(ds)
    token = found[edit_path("summaries")][0]
    response = await ds.client.post(
        edit_path("<i>summary</i>"),
        data={"csrftoken": token, "version": "0", "model": "test-b"},
        cookies={**page_cookies, **cookies_of(ds, "root")},
    )
    assert response.status_code == 404
    assert "<i>" not in response.text
    assert "No purpose is called &#39;&lt;i&gt;summary&lt;/i&gt;&#39;" in response.text


async def test_the_json_report_shows_each_values_layer_and_the_changes(ds: Datasette) -> None:
    assert (await post(ds, "summaries", model="test-b")).status_code == 302
    report = (await ds.client.get("/-/llm.json", cookies=cookies_of(ds, "root"))).json()
    overrides = report["overrides"]
    [model] = [
        layer
        for layer in overrides["purposes"]["summaries"]["layers"]
        if layer["setting"] == "model"
    ]
    assert (model["value"], model["source"], model["updated_by"]) == ("test-b", "override", "root")
    [change] = overrides["audit"]
    assert (change["purpose"], change["actor_id"], change["after"]) == (
        "summaries",
        "root",
        {"model": "test-b"},
    )
