"""The operator's view of resilient routing: each purpose's chain, its settings, and checks.

``/-/llm``, ``/-/llm.json``, ``datasette llm purposes`` and ``datasette llm check`` show the
routed model, then each fallback with whether the policy would admit it (or why not), and the
retries, timeout, deadline and fallback_on that apply, with where each is set.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import llm
import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from datasette.cli import cli

from datasette_llm import Purpose, Requirements
from datasette_llm._operator import report
from datasette_llm._operator.checks import validate
from datasette_llm.routing.models import build_registry
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import FreeModel, SyncStub, TestModelsPlugin
from tests.secrets_store import audit, store_secret

ROOT: Final = "plugins.datasette-llm"
TOOLS: Final = Requirements(tools=True)
PURPOSES: Final = [
    Purpose("enrichments", owner="datasette-enrichments-llm"),
    Purpose("agent", owner="datasette-agent", requires=TOOLS),
]

CONFIG: Final[dict[str, Any]] = {
    "default_model": "test-a",
    "blocked_models": ["test-fails"],
    "fallbacks": ["test-b"],
    "retries": 4,
    "purposes": {
        "enrichments": {
            "model": {"model": "test-a", "rpm": 60, "concurrency": 2},
            "fallbacks": ["test-b", "test-fails", "test-keyed", "test-bb", "test-a", "gpt-4o-mini"],
            "timeout": 30,
            "max_wait": 20,
        },
        "agent": {"model": "test-tools", "fallbacks": ["test-c", "test-tools-2"]},
    },
}


class ToolsModel(FreeModel):
    """A keyless model that supports tool calls."""

    supports_tools = True


class ToolsModelsPlugin:
    __test__ = False

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        for model_id in ("test-tools", "test-tools-2"):
            register(SyncStub(model_id), ToolsModel(model_id))


class ResiliencePurposes:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return PURPOSES


@pytest.fixture(autouse=True)
def models(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-shown")  # llm finds it: gpt-4o-mini
    register_plugin(ResiliencePurposes())
    llm.plugins.pm.register(ToolsModelsPlugin(), name="datasette-llm-test-tools-models")
    try:
        yield
    finally:
        llm.plugins.pm.unregister(name="datasette-llm-test-tools-models")


def as_root(datasette: Datasette) -> dict[str, Any]:
    datasette.root_enabled = True
    return {"cookies": {"ds_actor": datasette.client.actor_cookie({"id": "root"})}}


async def report_json(datasette: Datasette) -> dict[str, Any]:
    response = await datasette.client.get("/-/llm.json", **as_root(datasette))
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


def chains(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {purpose["name"]: purpose["chain"] for purpose in data["purposes"]}


def run(tmp_path: Path, *args: str, config: dict[str, Any] | None = None) -> Result:
    path = tmp_path / "datasette.json"
    path.write_text(json.dumps({"plugins": {"datasette-llm": config or CONFIG}}))
    return CliRunner().invoke(cli, [*args, "-c", str(path)], catch_exceptions=False)


# --- The chain in /-/llm.json ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_json_chain_lists_the_routed_model_then_each_fallback_and_why_it_is_not_tried(
    make_datasette: MakeDatasette,
) -> None:
    chain = chains(await report_json(make_datasette(CONFIG)))["enrichments"]
    shown = [
        (link["model_id"], link["role"], link["admitted"], link["refused_as"], link["refusal"])
        for link in chain["models"]
    ]
    assert shown == [
        ("test-a", "routed", True, None, None),
        ("test-b", "fallback", True, None, None),
        ("test-fails", "fallback", False, "blocked", "it is in blocked_models"),
        (
            "test-keyed",
            "fallback",
            False,
            "keyless",
            "it has no API key (set the secret TESTPROV_API_KEY)",
        ),
        ("test-bb", "fallback", False, "not_installed", "it is not installed"),
        (
            "test-a",
            "fallback",
            False,
            "routed_model",
            "it is the routed model: a failing model is retried (retries), not tried again as "
            "its own fallback",
        ),
        ("gpt-4o-mini", "fallback", True, None, None),
    ]
    paths = [link["path"] for link in chain["models"]]
    assert paths[0] is None
    assert paths[1:] == [
        f"plugins.datasette-llm.purposes.enrichments.fallbacks[{i}]" for i in range(6)
    ]


@pytest.mark.asyncio
async def test_each_link_shows_its_limits_its_key_its_tries_and_whether_its_client_is_adapted(
    make_datasette: MakeDatasette,
) -> None:
    links = chains(await report_json(make_datasette(CONFIG)))["enrichments"]["models"]
    routed, gpt = links[0], links[-1]
    assert (routed["rpm"], routed["concurrency"]) == (60, 2)
    assert (routed["adapted"], routed["client_retries"], routed["tries"]) == (False, 0, 5)
    assert routed["key"] == {"source": "not_needed", "secret_name": None, "available": True}
    # llm's OpenAI model is adapted: its client never retries by itself, so retries 4 is 5 tries.
    assert (gpt["adapted"], gpt["client_retries"], gpt["tries"]) == (True, 0, 5)
    assert gpt["key"] == {"source": "llm", "secret_name": None, "available": True}


@pytest.mark.asyncio
async def test_each_setting_says_whether_the_purpose_the_global_setting_or_the_default_sets_it(
    make_datasette: MakeDatasette,
) -> None:
    chain = chains(await report_json(make_datasette(CONFIG)))["enrichments"]
    names = ("retries", "timeout", "deadline", "fallback_on", "max_wait")
    assert {name: chain[name] for name in names} == {
        "retries": {"value": 4, "set_at": "plugins.datasette-llm.retries"},
        "timeout": {"value": 30, "set_at": "plugins.datasette-llm.purposes.enrichments.timeout"},
        "deadline": {"value": None, "set_at": None},
        "fallback_on": {
            "value": ["rate_limit", "timeout", "server_error", "connection"],
            "set_at": None,
        },
        "max_wait": {"value": 20, "set_at": "plugins.datasette-llm.purposes.enrichments.max_wait"},
    }


@pytest.mark.asyncio
async def test_a_purpose_without_fallbacks_of_its_own_and_calls_without_one_use_the_global_ones(
    make_datasette: MakeDatasette,
) -> None:
    config = {**CONFIG, "purposes": {}}
    data = await report_json(make_datasette(config))
    for chain in (chains(data)["enrichments"], data["default_chain"]):
        assert [(link["model_id"], link["path"]) for link in chain["models"]] == [
            ("test-a", None),
            ("test-b", "plugins.datasette-llm.fallbacks[0]"),
        ]


@pytest.mark.asyncio
async def test_a_fallback_lacking_what_the_purpose_requires_is_not_admitted(
    make_datasette: MakeDatasette,
) -> None:
    data = await report_json(make_datasette(CONFIG))
    [agent] = [purpose for purpose in data["purposes"] if purpose["name"] == "agent"]
    assert agent["requires"] == ["tools"]
    assert [
        (link["model_id"], link["refused_as"], link["refusal"]) for link in agent["chain"]["models"]
    ] == [
        ("test-tools", None, None),
        ("test-c", "lacks_requirement", "it does not support tools, which the call requires"),
        ("test-tools-2", None, None),
    ]


@pytest.mark.asyncio
async def test_a_hanging_filter_hook_leaves_the_fallbacks_unchecked_within_the_bound(
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class HangingFilter:
        @hookimpl
        def llm_filter_models(
            self, datasette: Datasette, models: list[Any], actor: Any, purpose: str | None
        ) -> Any:
            async def inner() -> list[Any]:
                await asyncio.sleep(3600)
                return models

            return inner()

    monkeypatch.setattr(report, "ROUTE_TIMEOUT_SECONDS", 0.2)
    register_plugin(HangingFilter())
    started = time.monotonic()
    data = await report_json(make_datasette(CONFIG))
    assert time.monotonic() - started < 5
    chain = chains(data)["enrichments"]
    assert {link["refused_as"] for link in chain["models"]} == {"unchecked"}
    assert chain["models"][0]["refusal"].startswith(
        "not checked: the policy did not answer in time"
    )


@pytest.mark.asyncio
async def test_checking_a_fallback_with_a_stored_key_does_not_record_a_use_of_the_secret(
    make_datasette: MakeDatasette, tmp_path: Path
) -> None:
    encryption_key = Fernet.generate_key().decode()
    config = {
        "plugins": {
            "datasette-secrets": {"encryption-key": encryption_key},
            "datasette-llm": {
                "default_model": "test-a",
                "fallbacks": [{"model": "test-keyed", "key": "STORED_KEY"}],
            },
        }
    }
    datasette = make_datasette(None, config=config, internal=str(tmp_path / "internal.db"))
    await datasette.invoke_startup()
    await store_secret(datasette, "STORED_KEY", "sk-stored-never-shown", encryption_key)
    response = await datasette.client.get("/-/llm.json", **as_root(datasette))
    [_, fallback] = response.json()["default_chain"]["models"]
    assert fallback["admitted"] is True
    assert fallback["key"] == {"source": "secret", "secret_name": "STORED_KEY", "available": True}
    assert "sk-stored-never-shown" not in response.text
    assert await audit(datasette, "STORED_KEY") == (None, "earlier-user")


# --- The HTML page --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_html_page_shows_each_chain_and_its_settings(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(CONFIG)
    html = (await datasette.client.get("/-/llm", **as_root(datasette))).text
    for text in (
        '<h2 id="fallbacks">Fallbacks and retries</h2>',
        "fallback at <code>plugins.datasette-llm.purposes.enrichments.fallbacks[1]</code>",
        '<span class="llm-tag llm-missing">never tried</span> '
        '<span class="llm-muted">it is in blocked_models</span>',
        "tries 5, one request per try (datasette-llm owns its client's retries)",
        "tries 5; rpm 60; concurrency 2",
        '<code>timeout</code>: 30 s\n<span class="llm-muted">'
        "(<code>plugins.datasette-llm.purposes.enrichments.timeout</code>)</span>",
        '<code>deadline</code>: none\n<span class="llm-muted">(default)</span>',
        '<code>max_wait</code>: 20 s\n<span class="llm-muted">'
        "(<code>plugins.datasette-llm.purposes.enrichments.max_wait</code>)</span>",
        '<code>max_wait</code>: 60 s\n<span class="llm-muted">(default)</span>',
        "requires: tools",
    ):
        assert text in html


@pytest.mark.asyncio
async def test_the_html_page_escapes_a_fallback_id(make_datasette: MakeDatasette) -> None:
    datasette = make_datasette({"default_model": "test-a", "fallbacks": ["<b>bold</b>"]})
    html = (await datasette.client.get("/-/llm", **as_root(datasette))).text
    assert "<b>bold</b>" not in html
    assert "<code>&lt;b&gt;bold&lt;/b&gt;</code>" in html


# --- The CLI --------------------------------------------------------------------------------

CHAIN_TEXT: Final = [
    "Fallbacks and retries (tried in order):",
    "  enrichments: retries 4 (plugins.datasette-llm.retries); timeout 30s "
    "(plugins.datasette-llm.purposes.enrichments.timeout); deadline none (default); "
    "fallback_on rate_limit, timeout, server_error, connection (default); max_wait 20s "
    "(plugins.datasette-llm.purposes.enrichments.max_wait)",
    "    1. test-a (routed): tries 5; rpm 60; concurrency 2",
    "    2. test-b (fallback, plugins.datasette-llm.purposes.enrichments.fallbacks[0]): tries 5",
    "    3. test-fails (fallback, plugins.datasette-llm.purposes.enrichments.fallbacks[1]): "
    "NOT TRIED: it is in blocked_models",
    "    4. test-keyed (fallback, plugins.datasette-llm.purposes.enrichments.fallbacks[2]): "
    "NOT TRIED: it has no API key (set the secret TESTPROV_API_KEY)",
    "    5. test-bb (fallback, plugins.datasette-llm.purposes.enrichments.fallbacks[3]): "
    "NOT TRIED: it is not installed",
    "    6. test-a (fallback, plugins.datasette-llm.purposes.enrichments.fallbacks[4]): "
    "NOT TRIED: it is the routed model: a failing model is retried (retries), not tried again "
    "as its own fallback",
    "    7. gpt-4o-mini (fallback, plugins.datasette-llm.purposes.enrichments.fallbacks[5]): "
    "tries 5, one request per try (datasette-llm owns its client's retries)",
    "  agent: retries 4 (plugins.datasette-llm.retries); timeout none (default); deadline none "
    "(default); fallback_on rate_limit, timeout, server_error, connection (default); "
    "max_wait 60s (default)",
    "    1. test-tools (routed): tries 5",
    "    2. test-c (fallback, plugins.datasette-llm.purposes.agent.fallbacks[0]): NOT TRIED: it "
    "does not support tools, which the call requires",
    "    3. test-tools-2 (fallback, plugins.datasette-llm.purposes.agent.fallbacks[1]): tries 5",
    "  (no purpose): retries 4 (plugins.datasette-llm.retries); timeout none (default); "
    "deadline none (default); fallback_on rate_limit, timeout, server_error, connection "
    "(default); max_wait 60s (default)",
    "    1. test-a (routed): tries 5; rpm 60; concurrency 2",
    "    2. test-b (fallback, plugins.datasette-llm.fallbacks[0]): tries 5",
]


def test_purposes_prints_each_chain_after_the_table(tmp_path: Path) -> None:
    result = run(tmp_path, "llm", "purposes")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index(CHAIN_TEXT[0])
    assert lines[start : start + len(CHAIN_TEXT)] == CHAIN_TEXT
    assert "sk-test-never-shown" not in result.output


def test_check_prints_each_chain_then_the_problems(tmp_path: Path) -> None:
    result = run(tmp_path, "llm", "check")
    lines = result.output.splitlines()
    assert lines[: len(CHAIN_TEXT) + 1] == [*CHAIN_TEXT, ""]
    assert lines[-1] == "0 errors, 5 warnings"


def test_check_json_gives_every_purposes_chain(tmp_path: Path) -> None:
    result = run(tmp_path, "llm", "check", "--json")
    data = json.loads(result.output)
    routes = {purpose["name"]: purpose for purpose in data["purposes"]}
    assert [link["model_id"] for link in routes["agent"]["chain"]["models"]] == [
        "test-tools",
        "test-c",
        "test-tools-2",
    ]
    assert routes["agent"]["requires"] == ["tools"]
    assert data["default_chain"]["retries"] == {
        "value": 4,
        "set_at": "plugins.datasette-llm.retries",
    }


def test_check_without_fallbacks_or_settings_prints_no_chains(tmp_path: Path) -> None:
    config = {"default_model": "test-a", "purposes": {"agent": {"model": "test-tools"}}}
    result = run(tmp_path, "llm", "check", config=config)
    assert (result.exit_code, result.output) == (
        0,
        "datasette-llm configuration OK: no problems found.\n",
    )


def test_check_warns_about_every_fallback_that_is_never_tried(tmp_path: Path) -> None:
    result = run(tmp_path, "llm", "check")
    problems = result.output.splitlines()[len(CHAIN_TEXT) + 1 : -1]
    assert problems == [
        "warning: plugins.datasette-llm.purposes.enrichments.fallbacks[3]: model 'test-bb' is "
        "not installed. Did you mean 'test-b'? Run 'llm models' to list installed models, or "
        "install the llm plugin that provides it.",
        "warning: plugins.datasette-llm.purposes.enrichments.fallbacks[4]: fallback 'test-a' is "
        "the model it stands behind for purpose 'enrichments' "
        "(plugins.datasette-llm.purposes.enrichments.model), so it is never tried as a "
        "fallback: a failing model is retried (retries), not fallen back to. Remove it from "
        "fallbacks, or list another model.",
        "warning: plugins.datasette-llm.purposes.enrichments.fallbacks[1]: fallback "
        "'test-fails' is never tried for purpose 'enrichments': it is in "
        "plugins.datasette-llm.blocked_models. Remove it from fallbacks, or from the blocklist.",
        "warning: plugins.datasette-llm.purposes.agent.fallbacks[0]: 'test-c' does not support "
        "tools, which purpose 'agent' requires (declared by datasette-agent), so it never serves "
        "that purpose. Choose a model that supports tools.",
        "warning: plugins.datasette-llm.purposes.enrichments.fallbacks[2]: fallback "
        "'test-keyed' is never tried for purpose 'enrichments': it has no API key (set the "
        "secret TESTPROV_API_KEY). Set the secret, or remove it from fallbacks (a fallback is "
        "only tried with its key, whatever require_keys says).",
    ]


# --- Validation (startup warnings, check problems) -----------------------------------------


PLAIN: Final = [PURPOSES[0], Purpose("extract", owner="datasette-extract")]
"""Purposes that require nothing."""


def validated(raw: dict[str, Any], purposes: list[Purpose] = PLAIN) -> list[tuple[str, str]]:
    validation = validate(raw, purposes, build_registry())
    return [(problem.path, problem.message) for problem in validation.problems]


def test_a_global_fallback_refused_for_several_purposes_is_one_warning_naming_each() -> None:
    raw = {
        "default_model": "test-a",
        "models": ["test-a", "test-b"],
        "fallbacks": ["test-c"],
        "purposes": {"extract": {"model": "test-b"}},
    }
    assert (
        f"{ROOT}.fallbacks[0]",
        "fallback 'test-c' is never tried for purpose 'enrichments', purpose 'extract' and calls "
        f"without a purpose: it is not in the allowlist. Add it to {ROOT}.models, or remove it "
        "from fallbacks.",
    ) in validated(raw)


def test_a_purposes_fallback_outside_its_allowlist_names_the_purposes_models_as_the_fix() -> None:
    raw = {
        "default_model": "test-a",
        "purposes": {"enrichments": {"models": ["test-a"], "fallbacks": ["test-b"]}},
    }
    assert validated(raw) == [
        (
            f"{ROOT}.purposes.enrichments.fallbacks[0]",
            "fallback 'test-b' is never tried for purpose 'enrichments': it is not in the "
            f"allowlist. Add it to {ROOT}.purposes.enrichments.models, or remove it from "
            "fallbacks.",
        )
    ]


def test_a_fallback_listed_twice_and_one_equal_to_the_default_model_are_warned_about() -> None:
    raw = {"default_model": "test-a", "fallbacks": ["test-b", "test-a", "test-b"]}
    assert validated(raw) == [
        (
            f"{ROOT}.fallbacks[1]",
            "fallback 'test-a' is the model it stands behind for calls without a purpose "
            f"({ROOT}.default_model), so it is never tried as a fallback: a failing model is "
            "retried (retries), not fallen back to. Remove it from fallbacks, or list another "
            "model.",
        ),
        (
            f"{ROOT}.fallbacks[2]",
            f"fallback 'test-b' is already listed at {ROOT}.fallbacks[0], so this entry is "
            "never tried. Remove one of them.",
        ),
    ]


def test_a_fallback_that_is_not_installed_suggests_the_nearest_installed_id() -> None:
    raw = {"default_model": "test-a", "purposes": {"enrichments": {"fallbacks": ["test-bb"]}}}
    [(path, message)] = validated(raw)
    assert path == f"{ROOT}.purposes.enrichments.fallbacks[0]"
    assert message.startswith("model 'test-bb' is not installed. Did you mean 'test-b'?")


def test_settings_under_a_purpose_nobody_registered_are_warned_about() -> None:
    raw = {"default_model": "test-a", "purposes": {"enrichment": {"fallbacks": ["test-b"]}}}
    [(path, message)] = validated(raw)
    assert path == f"{ROOT}.purposes.enrichment"
    assert message.startswith(
        "no installed plugin registers the purpose 'enrichment'. Did you mean 'enrichments'?"
    )


def test_every_configured_model_lacking_a_purposes_requirement_is_warned_about() -> None:
    raw = {
        "default_model": "test-a",
        "purposes": {"agent": {"models": ["test-tools", "test-b"], "fallbacks": ["test-c"]}},
    }
    problems = validated(raw, PURPOSES)
    lacking = [path for path, message in problems if "does not support tools" in message]
    assert lacking == [
        f"{ROOT}.purposes.agent.models[1]",
        f"{ROOT}.purposes.agent.fallbacks[0]",
        f"{ROOT}.default_model",  # the purpose has no model of its own: the default routes it
    ]
