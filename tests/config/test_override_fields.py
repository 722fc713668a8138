"""An override is a field-level patch of datasette.yaml: what the editor did not change keeps the
YAML's value with everything it carries, limits stay with their model, and a write based on a
version that is not the current one never breaks the store or loses the other editor's fields.

Against a real Datasette, its internal database and the routing form as a browser submits it
(the form's hidden fields included).
"""

from __future__ import annotations

import json
import re
from html import unescape
from typing import Any, Final
from urllib.parse import quote

import llm
import pytest

from datasette_llm import LLM
from datasette_llm.config.overrides import RouteOverride, overrides_of, save_override
from datasette_llm.routing.models import current_registry
from datasette_llm.routing.overlay import config_for
from datasette_llm.routing.policy import policy_for
from datasette_llm.typing import Datasette
from tests.conftest import MakeDatasette
from tests.llm_models import SyncStub, TestModelsPlugin

FORM: Final = re.compile(
    r'<form class="llm-override-form" method="post" action="([^"]+)">(.*?)</form>', re.S
)
HIDDEN: Final = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
TEXTAREA: Final = re.compile(r'<textarea name="([^"]+)"[^>]*>([^<]*)</textarea>')
SELECTED: Final = re.compile(r'<select name="model">.*?<option value="([^"]*)"[^>]*selected', re.S)


# Each Datasette's cookies, as a browser keeps them: the CSRF token a form carries must match
# the cookie set with the page it came from.
JARS: dict[int, dict[str, str]] = {}


def root(ds: Datasette) -> dict[str, str]:
    ds.root_enabled = True
    jar = JARS.setdefault(id(ds), {})
    return {**jar, "ds_actor": ds.client.actor_cookie({"id": "root"})}


def keep(ds: Datasette, response: Any) -> Any:
    JARS.setdefault(id(ds), {}).update(dict(response.cookies))
    return response


async def loaded_form(ds: Datasette, purpose: str, page: str = "/-/llm") -> dict[str, str]:
    """The purpose's form as the page has it, every field a browser would send."""
    response = keep(ds, await ds.client.get(page, cookies=root(ds)))
    return form_in(response.text, purpose)


def form_in(html: str, purpose: str) -> dict[str, str]:
    action = "/-/llm/purposes/" + quote(purpose, safe="")
    for found_action, body in FORM.findall(html):
        if unescape(found_action) != action:
            continue
        fields = {name: unescape(value) for name, value in HIDDEN.findall(body)}
        fields.update({name: unescape(value) for name, value in TEXTAREA.findall(body)})
        selected = SELECTED.search(body)
        fields["model"] = unescape(selected.group(1)) if selected else ""
        return fields
    raise AssertionError(f"no form for {purpose!r}")


async def submit(ds: Datasette, purpose: str, fields: dict[str, str], **changes: str) -> Any:
    """Send the form ``fields`` (as loaded) with ``changes`` made, as the browser that loaded
    it would."""
    data = {**fields, **changes, "action": "save"}
    path = "/-/llm/purposes/" + quote(purpose, safe="")
    return keep(ds, await ds.client.post(path, data=data, cookies=root(ds)))


# 1. A field the editor did not change keeps the YAML's value, with what it carries


async def test_editing_fallbacks_keeps_the_yaml_fallbacks_key_options_and_limits(
    make_datasette: MakeDatasette, broken: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YAML_FALLBACK_KEY", "yaml-key")
    key = {"$env": "YAML_FALLBACK_KEY"}
    keyed = {"model": "test-keyed", "key": key, "options": {"temperature": 0.5}, "rpm": 600}
    purpose = {"model": "test-broken", "fallbacks": ["test-b", keyed], "retries": 0}
    ds = make_datasette({"purposes": {"summaries": purpose}})
    fields = await loaded_form(ds, "summaries")
    response = await submit(ds, "summaries", fields, fallbacks="test-keyed")
    assert response.status_code == 302, response.text
    [fallback] = config_for(ds).purposes["summaries"].fallbacks or ()
    assert (fallback.model_id, dict(fallback.options), fallback.rpm) == (
        "test-keyed",
        {"temperature": 0.5},
        600,
    )
    assert fallback.key is not None
    # The fallback still has its key: it answers, instead of being skipped as keyless.
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    text = await response.text()
    assert text == "test-keyed:hi options=[('temperature', 0.5)] key-length=8"  # its key


async def test_rerouting_one_purpose_never_lifts_a_models_limits_for_another(
    make_datasette: MakeDatasette, test_models: TestModelsPlugin
) -> None:
    purposes = {"x": {"model": {"model": "test-a", "concurrency": 1}}, "y": {"model": "test-a"}}
    ds = make_datasette({"purposes": purposes})
    assert (await submit(ds, "x", await loaded_form(ds, "x"), model="test-b")).status_code == 302
    assert (await LLM(ds).model(purpose="x")).model_id == "test-b"
    config = config_for(ds)
    policy = policy_for(ds, config, "y", current_registry(ds))
    assert policy.references["test-a"].concurrency == 1


# 3. Versions that cannot break the store


async def test_a_form_ahead_of_the_stored_version_is_a_409_and_stores_nothing(
    make_datasette: MakeDatasette, test_models: TestModelsPlugin
) -> None:
    # As after a restart without --internal: the page was loaded at version 3.
    ds = make_datasette({"purposes": {"summaries": {"model": "test-a"}}})
    fields = {**await loaded_form(ds, "summaries"), "version": "3"}
    response = await submit(ds, "summaries", fields, model="test-b")
    assert response.status_code == 409
    assert "version 0" in response.text and "--internal" in response.text
    assert "summaries" not in overrides_of(ds)
    assert (await LLM(ds).model(purpose="summaries")).model_id == "test-a"
    # The 409 page's form is based on the current version: sending it applies the edit.
    retry = form_in(response.text, "summaries")
    assert retry["version"] == "0" and retry["model"] == "test-b"
    assert (await submit(ds, "summaries", retry)).status_code == 302
    assert (await LLM(ds).model(purpose="summaries")).model_id == "test-b"


async def test_applying_a_conflicting_edit_again_changes_only_the_editors_fields(
    make_datasette: MakeDatasette, test_models: TestModelsPlugin
) -> None:
    ds = make_datasette({"purposes": {"summaries": {"model": "test-a", "fallbacks": ["test-b"]}}})
    mine = await loaded_form(ds, "summaries")  # loaded by me, at version 0
    theirs = await loaded_form(ds, "summaries")  # and by another editor
    assert (await submit(ds, "summaries", theirs, options="temperature=0.3")).status_code == 302
    refused = await submit(ds, "summaries", mine, fallbacks="none")
    assert refused.status_code == 409
    assert "<code>fallbacks</code> set to" in refused.text
    retry = form_in(refused.text, "summaries")
    assert retry["fallbacks"] == "none" and "0.3" in retry["options"]  # theirs kept
    assert (await submit(ds, "summaries", retry)).status_code == 302
    stored = overrides_of(ds)["summaries"].override
    assert stored == RouteOverride(fallbacks=(), options=stored.options)
    assert dict(stored.options or {}) == {"temperature": 0.3}


async def test_a_write_changes_only_the_fields_its_editor_changed(
    make_datasette: MakeDatasette, test_models: TestModelsPlugin
) -> None:
    ds = make_datasette({"purposes": {"summaries": {"model": "test-a"}}})
    await save_override(ds, "summaries", RouteOverride(model="test-c"), based_on=0, actor_id=None)
    fields = await loaded_form(ds, "summaries")
    assert fields["model"] == "test-c" and fields["was_model"] == "test-c"
    response = await submit(ds, "summaries", fields, options='{"temperature": 0.1}')
    assert response.status_code == 302
    stored = overrides_of(ds)["summaries"]
    assert stored.version == 2
    assert stored.override.model == "test-c" and dict(stored.override.options or {}) == {
        "temperature": 0.1
    }


# 2. An override is re-checked whenever what it lies over changes


class NoOptionsModel(llm.AsyncModel):
    """A keyless model that takes no options at all."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    async def execute(self, prompt: Any, stream: bool, response: Any, conversation: Any) -> Any:
        yield f"{self.model_id}:{prompt.prompt}"


class TemporaryPlugin:
    """Registers ``test-plain``, a model that takes no options."""

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        register(SyncStub("test-plain"), NoOptionsModel("test-plain"))


async def test_an_override_whose_options_the_yamls_new_model_rejects_is_ignored_with_the_reason(
    make_datasette: MakeDatasette, test_models: TestModelsPlugin, tmp_path: Any
) -> None:
    internal = str(tmp_path / "internal.db")
    before = make_datasette({"purposes": {"summaries": {"model": "test-a"}}}, internal=internal)
    options = RouteOverride(options={"temperature": 0.2})
    await save_override(before, "summaries", options, based_on=0, actor_id="alice")
    llm.plugins.pm.register(TemporaryPlugin(), name="test-temporary-models")
    try:
        # datasette.yaml now routes the purpose to a model that takes no options.
        after = make_datasette(
            {"purposes": {"summaries": {"model": "test-plain"}}}, internal=internal
        )
        response = await (await LLM(after).model(purpose="summaries")).prompt("hi")
        assert await response.text() == "test-plain:hi"  # by the YAML, no raw ValidationError
        report = (await after.client.get("/-/llm.json", cookies=root(after))).json()
        ignored = report["overrides"]["purposes"]["summaries"]["ignored"]
        assert "does not accept the option 'temperature'" in ignored
    finally:
        llm.plugins.pm.unregister(name="test-temporary-models")


async def test_an_override_naming_a_model_no_longer_installed_is_ignored_and_calls_use_the_yaml(
    make_datasette: MakeDatasette, test_models: TestModelsPlugin
) -> None:
    ds = make_datasette({"purposes": {"summaries": {"model": "test-a"}}})
    llm.plugins.pm.register(TemporaryPlugin(), name="test-temporary-models")
    try:
        override = RouteOverride(model="test-plain")
        await save_override(ds, "summaries", override, based_on=0, actor_id=None)
        assert (await LLM(ds).model(purpose="summaries")).model_id == "test-plain"
    finally:
        llm.plugins.pm.unregister(name="test-temporary-models")
    assert (await LLM(ds).model(purpose="summaries")).model_id == "test-a"
    report = (await ds.client.get("/-/llm.json", cookies=root(ds))).json()
    assert "is not installed" in report["overrides"]["purposes"]["summaries"]["ignored"]


# 5. datasette llm check validates what the calls will use


def test_check_with_internal_checks_the_stored_overrides_and_warns_of_an_ignored_one(
    tmp_path: Any, test_models: TestModelsPlugin
) -> None:
    import asyncio

    from click.testing import CliRunner
    from datasette.app import Datasette as Served
    from datasette.cli import cli

    internal = str(tmp_path / "internal.db")
    yaml = "plugins:\n  datasette-llm:\n    purposes:\n      summaries: {model: test-a}\n"
    yaml += "      digests: {model: test-a}\n"
    config_file = tmp_path / "datasette.yaml"
    config_file.write_text(yaml)

    async def store() -> None:
        ds = Served(
            internal=internal,
            config={
                "plugins": {
                    "datasette-llm": {
                        "purposes": {
                            "summaries": {"model": "test-a"},
                            "digests": {"model": "test-a"},
                        }
                    }
                }
            },
        )
        await ds.invoke_startup()
        await save_override(
            ds, "summaries", RouteOverride(model="test-c"), based_on=0, actor_id=None
        )
        bad = RouteOverride(options={"temprature": 0.2})
        await save_override(ds, "digests", bad, based_on=0, actor_id=None)

    asyncio.run(store())
    arguments = ["llm", "check", "--json", "-c", str(config_file), "--internal", internal]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    data = json.loads(result.output)
    routed = {purpose["name"]: purpose["model_id"] for purpose in data["purposes"]}
    assert routed["summaries"] == "test-c"  # the override in effect
    assert routed["digests"] == "test-a"  # the ignored one: by datasette.yaml
    [warning] = [p for p in data["problems"] if "is ignored" in p["message"]]
    assert warning["path"].endswith("purposes.digests") and warning["severity"] == "warning"
    assert "Did you mean 'temperature'?" in warning["message"]
    # Without --internal, only datasette.yaml: no override, no warning.
    plain = CliRunner().invoke(cli, arguments[:-2], catch_exceptions=False)
    routed = {
        purpose["name"]: purpose["model_id"] for purpose in json.loads(plain.output)["purposes"]
    }
    assert routed["summaries"] == "test-a"
