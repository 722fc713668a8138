"""API keys: where they come from, in which order, that they reach the model, and that they
never leak.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import llm
import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from datasette.app import Datasette
from datasette.cli import cli

from datasette_llm import (
    LLM,
    ConfigurationError,
    Group,
    KeyStatus,
    ModelNotFoundError,
    PromptResult,
    Purpose,
)
from datasette_llm.config.parser import parse_config
from datasette_llm.testing import FakeModelRouter
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import TestModelsPlugin
from tests.secrets_store import audit, store_secret

pytestmark = pytest.mark.usefixtures("test_models")


async def reply(datasette: Any, **kwargs: Any) -> str:
    model = await LLM(datasette).model(**kwargs)
    return await (await model.prompt("hi")).text()


async def test_purpose_reference_key_comes_first(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_PURPOSE_KEY", "p" * 11)
    monkeypatch.setenv("DATASETTE_SECRETS_DEFAULT_KEY", "d" * 12)
    monkeypatch.setenv("DATASETTE_SECRETS_TESTPROV_API_KEY", "t" * 13)
    datasette = make_datasette(
        {
            "default_model": {"model": "test-keyed", "key": "DEFAULT_KEY"},
            "purposes": {"p": {"model": {"model": "test-keyed", "key": "PURPOSE_KEY"}}},
        }
    )
    assert (await LLM(datasette).resolve(purpose="p")).key == KeyStatus("secret", "PURPOSE_KEY")
    assert "key-length=11" in await reply(datasette, purpose="p")
    assert (await LLM(datasette).resolve()).key == KeyStatus("secret", "DEFAULT_KEY")
    assert "key-length=12" in await reply(datasette)


async def test_default_model_key_applies_to_a_purpose_using_the_same_model(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_DEFAULT_KEY", "d" * 12)
    datasette = make_datasette(
        {
            "default_model": {"model": "test-keyed", "key": "DEFAULT_KEY"},
            "purposes": {"p": {"model": "test-keyed"}},
        }
    )
    assert "key-length=12" in await reply(datasette, purpose="p")


async def test_provider_secret_then_llm_key_store(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch, llm_user_dir: Any
) -> None:
    datasette = make_datasette({"default_model": "test-keyed"})
    (llm_user_dir / "keys.json").write_text(json.dumps({"testprov": "k" * 14}))
    assert (await LLM(datasette).resolve()).key == KeyStatus("llm")
    assert "key-length=14" in await reply(datasette)
    monkeypatch.setenv("DATASETTE_SECRETS_TESTPROV_API_KEY", "t" * 13)
    assert (await LLM(datasette).resolve()).key == KeyStatus("secret", "TESTPROV_API_KEY")
    assert "key-length=13" in await reply(datasette)


async def test_llm_get_key_is_looked_up_at_call_time_with_keywords(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llm

    calls: list[dict[str, Any]] = []

    def fake_get_key(**kwargs: Any) -> str:
        calls.append(kwargs)
        return "g" * 15

    monkeypatch.setattr(llm, "get_key", fake_get_key)
    assert "key-length=15" in await reply(make_datasette({"default_model": "test-keyed"}))
    # Ours is the first call; llm then calls it again itself with the key we pass.
    assert calls[0] == {"key_alias": "testprov", "env_var": "TESTPROV_KEY"}


async def test_an_empty_custom_secret_falls_back_to_the_provider_secret(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_TESTPROV_API_KEY", "t" * 13)
    datasette = make_datasette({"default_model": {"model": "test-keyed", "key": "UNSET_KEY"}})
    assert (await LLM(datasette).resolve()).key == KeyStatus("secret", "TESTPROV_API_KEY")


async def test_missing_key_names_the_secret_to_set(make_datasette: MakeDatasette) -> None:
    datasette = make_datasette(
        {"require_keys": False, "default_model": {"model": "test-keyed", "key": "TEAM_KEY"}}
    )
    assert (await LLM(datasette).resolve()).key == KeyStatus("missing", "TEAM_KEY")
    datasette = make_datasette({"require_keys": False, "default_model": "test-keyed"})
    status = (await LLM(datasette).resolve()).key
    assert status == KeyStatus("missing", "TESTPROV_API_KEY")
    assert not status.available


async def test_with_require_keys_a_model_without_a_key_is_not_routed_and_the_secret_is_named(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette({"default_model": {"model": "test-keyed", "key": "TEAM_KEY"}})
    with pytest.raises(ModelNotFoundError) as caught:
        await LLM(datasette).model()
    assert (
        "default_model chose 'test-keyed', skipped because it has no API key (set the secret "
        "TEAM_KEY)" in str(caught.value)
    )


async def test_register_secrets_lists_provider_keys_and_configured_key_names(
    make_datasette: MakeDatasette,
) -> None:
    from datasette_secrets import get_secrets

    datasette = make_datasette(
        {
            "default_model": {"model": "echo", "key": "DEFAULT_KEY"},
            "purposes": {"p": {"models": [{"model": "test-a", "key": "P_KEY"}]}},
        }
    )
    secrets = {secret.name: secret for secret in await get_secrets(datasette)}
    assert {"TESTPROV_API_KEY", "ECHO-NEEDS-KEY_API_KEY", "DEFAULT_KEY", "P_KEY"} <= set(secrets)
    assert secrets["P_KEY"].description == (
        "API key configured at plugins.datasette-llm.purposes.p.models[0]"
    )


async def test_a_blocked_models_provider_key_is_not_asked_for_on_the_secrets_page(
    make_datasette: MakeDatasette,
) -> None:
    from datasette_secrets import get_secrets

    datasette = make_datasette({"blocked_models": ["echo-needs-key"]})
    names = {secret.name for secret in await get_secrets(datasette)}
    assert "TESTPROV_API_KEY" in names and "ECHO-NEEDS-KEY_API_KEY" not in names


async def test_a_provider_key_whose_name_has_a_dash_is_read_from_a_variable_a_shell_can_set(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DATASETTE_SECRETS_ECHO-NEEDS-KEY_API_KEY cannot be exported from a shell.
    monkeypatch.setenv("DATASETTE_SECRETS_ECHO_NEEDS_KEY_API_KEY", "k" * 11)
    model = await LLM(make_datasette()).model("echo-needs-key")
    assert await (await model.prompt("hi")).text()


async def test_an_explicit_key_argument_wins_over_the_resolved_key(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_TESTPROV_API_KEY", "t" * 13)
    model = await LLM(make_datasette()).model("test-keyed")
    assert "key-length=3" in await (await model.prompt("hi", key="abc")).text()


VALUE: Final = "sk-env-9f8e7d6c5b4a3210-value"
"""The key's value: it must appear nowhere but in the prompt sent to the model."""


def as_root(datasette: Datasette) -> dict[str, Any]:
    datasette.root_enabled = True
    return {"cookies": {"ds_actor": datasette.client.actor_cookie({"id": "root"})}}


ENV_CONFIG: Final[dict[str, Any]] = {
    "purposes": {
        "summaries": {"model": {"model": "test-keyed", "key": {"$env": "SUMMARIES_PROVIDER_KEY"}}}
    }
}


async def test_a_key_from_env_is_used_and_every_surface_names_the_variable_not_the_value(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SUMMARIES_PROVIDER_KEY", VALUE)
    datasette = make_datasette(ENV_CONFIG)
    client = LLM(datasette)
    model = await client.model(purpose="summaries")
    assert (await (await model.prompt("hi")).text()).endswith(f"key-length={len(VALUE)}")

    resolution = await client.resolve(purpose="summaries")
    assert resolution.key == KeyStatus("env", "SUMMARIES_PROVIDER_KEY")
    assert VALUE not in repr(resolution) and VALUE not in repr(model)

    page = await datasette.client.get("/-/llm", **as_root(datasette))
    assert page.status_code == 200
    assert "<code>$env</code>" in page.text and "SUMMARIES_PROVIDER_KEY" in page.text
    report = await datasette.client.get("/-/llm.json", **as_root(datasette))
    assert report.status_code == 200
    assert VALUE not in page.text and VALUE not in report.text
    assert '"source": "env"' in json.dumps(report.json())


def test_the_cli_names_the_variable_of_a_key_from_env_not_the_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SUMMARIES_PROVIDER_KEY", VALUE)
    config = tmp_path / "datasette.yaml"
    config.write_text(json.dumps({"plugins": {"datasette-llm": ENV_CONFIG}}))
    for command in (["llm", "purposes"], ["llm", "purposes", "--json"], ["llm", "check"]):
        result = CliRunner().invoke(cli, [*command, "-c", str(config)], catch_exceptions=False)
        assert VALUE not in result.output, command
        assert result.exit_code == 0, (command, result.output)
    purposes = CliRunner().invoke(cli, ["llm", "purposes", "-c", str(config)])
    assert "$env SUMMARIES_PROVIDER_KEY" in purposes.output


async def test_a_key_pasted_into_key_is_refused_without_repeating_it(
    make_datasette: MakeDatasette,
) -> None:
    pasted = "gsk_3fXq9ZkL2mN8pR4tV6wY0aB"
    with pytest.raises(ConfigurationError) as refused:
        await LLM(make_datasette({"default_model": {"model": "test-keyed", "key": pasted}})).model()
    message = str(refused.value)
    assert pasted not in message
    assert "plugins.datasette-llm.default_model.key" in message
    assert "$env" in message  # says how to give a key instead


async def test_a_value_from_env_is_never_quoted_in_an_error(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key's variable given where a model id belongs: the model is "not installed".
    monkeypatch.setenv("WRONG_PLACE", VALUE)
    raw = {"default_model": {"$env": "WRONG_PLACE"}, "models": {"$env": "WRONG_PLACE"}}
    with pytest.raises(ConfigurationError) as malformed:
        await LLM(make_datasette(raw)).model()
    assert VALUE not in str(malformed.value)
    assert "(the value of $env WRONG_PLACE)" in str(malformed.value)

    datasette = make_datasette({"default_model": {"$env": "WRONG_PLACE"}})
    with pytest.raises(llm.UnknownModelError) as unknown:
        await LLM(datasette).model()
    assert VALUE not in str(unknown.value)
    assert "(the value of $env WRONG_PLACE)" in str(unknown.value)


def test_check_never_quotes_a_value_from_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WRONG_PLACE", VALUE)
    config = tmp_path / "datasette.yaml"
    raw = {"default_model": {"$env": "WRONG_PLACE"}}
    config.write_text(json.dumps({"plugins": {"datasette-llm": raw}}))
    check = CliRunner().invoke(cli, ["llm", "check", "-c", str(config)])
    assert VALUE not in check.output
    assert "(the value of $env WRONG_PLACE)" in check.output


# datasette-secrets' encrypted store

ENCRYPTION_KEY: Final = Fernet.generate_key().decode()
STORED: Final = "sk-stored-0a1b2c3d4e5f6789-secret"


async def store_datasette(make_datasette: MakeDatasette) -> Datasette:
    datasette = make_datasette(
        {"purposes": {"summaries": {"model": {"model": "test-keyed", "key": "STORED_KEY"}}}},
        config={"plugins": {"datasette-secrets": {"encryption-key": ENCRYPTION_KEY}}},
    )
    await datasette.invoke_startup()
    await store_secret(datasette, "STORED_KEY", STORED, ENCRYPTION_KEY)
    return datasette


async def test_looking_at_routing_is_not_a_use_of_a_stored_secret_and_a_prompt_is(
    make_datasette: MakeDatasette,
) -> None:
    datasette = await store_datasette(make_datasette)
    client = LLM(datasette)
    before = await audit(datasette, "STORED_KEY")
    assert before == (None, "earlier-user")

    assert (await client.resolve(purpose="summaries")).key == KeyStatus("secret", "STORED_KEY")
    listed = await client.models(purpose="summaries")
    assert listed[0].model_id == "test-keyed"
    for path in ("/-/llm", "/-/llm.json"):
        response = await datasette.client.get(path, **as_root(datasette))
        assert response.status_code == 200, path
        assert STORED not in response.text
    assert await audit(datasette, "STORED_KEY") == before

    model = await client.model(purpose="summaries", actor={"id": "ann"})
    assert (await (await model.prompt("hi")).text()).endswith(f"key-length={len(STORED)}")
    used_at, used_by = await audit(datasette, "STORED_KEY")
    assert used_by == "ann" and used_at is not None


async def test_datasette_secrets_pages_answer_with_the_encrypted_store_configured(
    make_datasette: MakeDatasette,
) -> None:
    datasette = await store_datasette(make_datasette)
    for path in ("/-/secrets", "/-/llm", "/"):
        response = await datasette.client.get(path, **as_root(datasette))
        assert response.status_code == 200, (path, response.text[:500])


STORE_CONFIG: Final = {
    "plugins": {
        "datasette-secrets": {"encryption-key": ENCRYPTION_KEY},
        "datasette-llm": {
            "purposes": {"summaries": {"model": {"model": "test-keyed", "key": "STORED_KEY"}}}
        },
    }
}


def audit_in(internal: Path) -> tuple[object, object]:
    async def read() -> tuple[object, object]:
        datasette = Datasette(memory=True, internal=str(internal), config=STORE_CONFIG)
        return await audit(datasette, "STORED_KEY")

    return asyncio.run(read())


@pytest.fixture
def store(tmp_path: Path, test_models: TestModelsPlugin) -> Path:
    """An internal database holding STORED_KEY, as ``datasette serve --internal`` keeps it."""
    internal = tmp_path / "internal.db"

    async def write() -> None:
        datasette = Datasette(memory=True, internal=str(internal), config=STORE_CONFIG)
        await datasette.invoke_startup()
        await store_secret(datasette, "STORED_KEY", STORED, ENCRYPTION_KEY)

    asyncio.run(write())
    return internal


def check(tmp_path: Path, *arguments: str) -> Result:
    config = tmp_path / "datasette.json"
    config.write_text(json.dumps(STORE_CONFIG))
    return CliRunner().invoke(
        cli, ["llm", "check", "--json", "-c", str(config), *arguments], catch_exceptions=False
    )


def test_check_with_internal_finds_a_stored_key_and_does_not_record_a_use(
    tmp_path: Path, store: Path
) -> None:
    result = check(tmp_path, "--internal", str(store))
    assert STORED not in result.output
    data = json.loads(result.output)
    [summaries] = data["purposes"]
    assert (summaries["model_id"], summaries["key"]["source"]) == ("test-keyed", "secret")
    assert data["errors"] == 0 and result.exit_code == 0  # only 'summaries' is unregistered
    assert audit_in(store) == (None, "earlier-user")


def test_check_without_the_store_says_the_purpose_cannot_be_served(
    tmp_path: Path, store: Path
) -> None:
    result = check(tmp_path)
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["problems"][0]["path"] == "plugins.datasette-llm.purposes.summaries"
    assert "set the secret STORED_KEY" in data["problems"][0]["message"]


CANARY: Final = "canary-5ee7b3d1"
"""Shared by every canary key, so one search finds any of them."""
ENV_KEY: Final = f"sk-{CANARY}-provider-secret"
CUSTOM_KEY: Final = f"sk-{CANARY}-custom-key-reference"
KEYS_JSON_KEY: Final = f"sk-{CANARY}-llm-keys-json"

CONFIG: Final[dict[str, Any]] = {
    "default_model": "test-keyed",
    "blocked_models": ["test-c"],
    "purposes": {
        "custom": {"model": {"model": "test-keyed-2", "key": "CUSTOM_KEY"}},
        "keys-json": {"model": "echo-needs-key"},
        "broken": {"model": "test-fails"},
        "refused": {"model": "test-keyed"},
        "orphan": {"blocked_models": ["test-keyed"]},
    },
}
PURPOSES: Final = [
    Purpose("custom", owner="secrets-test", default_model="test-keyed-2"),
    Purpose("keys-json", owner="secrets-test"),
    Purpose("broken", owner="secrets-test"),
    Purpose("refused", owner="secrets-test"),
    Purpose("orphan", owner="secrets-test"),
]


class Refused(Exception):
    pass


class Observer:
    """Register the purposes and keep the repr of everything the hooks are handed."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def register_llm_purposes(self) -> list[Purpose]:
        return PURPOSES

    @hookimpl
    def llm_prompt_context(
        self, model_id: str, prompt: str, purpose: str | None, actor: Any
    ) -> Callable[[PromptResult], AbstractAsyncContextManager[object]]:
        self.seen.append(repr((model_id, prompt, purpose, actor)))

        @asynccontextmanager
        async def around(result: PromptResult) -> AsyncIterator[None]:
            self.seen.append(repr(result))
            if purpose == "refused":
                raise Refused(f"budget exhausted for {result!r}")
            yield
            self.seen.extend([repr(result), repr(result.group)])

        return around

    @hookimpl
    def llm_filter_models(self, models: list[Any]) -> None:
        self.seen.append(repr([str(model) for model in models]))

    @hookimpl
    def llm_group_exit(self, group: Group) -> None:
        self.seen.append(repr(group))


@pytest.fixture
def canaries(
    test_models: Any, llm_user_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("DATASETTE_SECRETS_TESTPROV_API_KEY", ENV_KEY)
    monkeypatch.setenv("DATASETTE_SECRETS_CUSTOM_KEY", CUSTOM_KEY)
    (llm_user_dir / "keys.json").write_text(json.dumps({"echo-needs-key": KEYS_JSON_KEY}))
    yield


@pytest.fixture
def observer(register_plugin: RegisterPlugin) -> Observer:
    plugin = register_plugin(Observer(), name="secrets-observer")
    assert isinstance(plugin, Observer)
    return plugin


@pytest.fixture
def datasette(canaries: None, observer: Observer, make_datasette: MakeDatasette) -> Datasette:
    datasette = make_datasette(CONFIG)
    datasette.root_enabled = True
    return datasette


def assert_no_canary(outputs: list[str], where: str) -> None:
    leaks = [output for output in outputs if CANARY in output]
    assert not leaks, f"the canary key leaked through {where}: {leaks[0][:500]!r}"


def log_text(caplog: pytest.LogCaptureFixture) -> list[str]:
    texts = [caplog.text]
    for record in caplog.records:
        texts.extend([record.getMessage(), repr(record.args), str(record.exc_text)])
    return texts


async def test_keys_are_used_but_no_object_exception_or_log_line_shows_them(
    datasette: Datasette, observer: Observer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = LLM(datasette)
    outputs: list[str] = [repr(client), repr(client.config), repr(parse_config(CONFIG))]
    actor = {"id": "alice"}

    for purpose, key in ((None, ENV_KEY), ("custom", CUSTOM_KEY)):
        model = await client.model(purpose=purpose, actor=actor)
        response = await model.prompt("hello", system="be brief")
        text = await response.text()
        assert f"key-length={len(key)}" in text, "the canary key was used"
        conversation = model.conversation()
        await conversation.prompt("again")
        chain = model.chain("chained")
        outputs.extend([repr(chain), text, await chain.text(), repr(chain)])
        outputs.extend([repr(model), repr(model.resolution), repr(model.resolution.key)])
        outputs.extend([repr(conversation), str(model.resolution)])
        outputs.append(repr(await client.resolve(purpose=purpose, actor=actor)))

    echoing = await client.model(purpose="keys-json", actor=actor)
    echoed = await (await echoing.prompt("hello")).text()
    assert KEYS_JSON_KEY in echoed, "llm-echo's echo-needs-key prints the key it was given"
    outputs.extend([repr(echoing), repr(echoing.resolution)])

    async with client.group(purpose="custom", actor=actor) as grouped:
        await grouped.prompt("one")
        await grouped.prompt("two")
        outputs.extend([repr(grouped), repr(grouped.group)])

    for purpose_name in (None, "custom", "keys-json"):
        models = await client.models(purpose=purpose_name, actor=actor)
        outputs.extend(str(model) for model in models)

    errors: list[BaseException] = []
    try:
        await client.model("not-installed")
    except Exception as unknown:
        errors.append(unknown)
    try:
        await client.model(purpose="orphan", actor=actor)
    except Exception as not_found:
        errors.append(not_found)
    for purpose_name in ("broken", "refused"):
        try:
            await (await client.model(purpose=purpose_name, actor=actor)).prompt("x")
        except Exception as failed:
            errors.append(failed)
    try:
        async with client.group(purpose="refused", actor=actor) as grouped:
            await grouped.prompt("x")
    except Refused as refused:
        errors.append(refused)
    assert [type(error).__name__ for error in errors] == [
        "UnknownModelError",
        "ModelNotFoundError",
        "RuntimeError",
        "Refused",
        "Refused",
    ]
    for error in errors:
        outputs.extend([str(error), repr(error), repr(error.__context__), repr(error.args)])

    assert_no_canary(outputs, "objects, responses' text or exceptions")
    assert_no_canary(observer.seen, "what hooks are handed")
    assert_no_canary(log_text(caplog), "log records")


async def test_the_routing_page_and_its_json_do_not_show_keys(
    datasette: Datasette, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cookies = {"ds_actor": datasette.client.actor_cookie({"id": "root"})}
    pages = []
    for path in ("/-/llm", "/-/llm.json"):
        response = await datasette.client.get(path, cookies=cookies)
        assert response.status_code == 200, response.text
        pages.append(response.text)
    assert "CUSTOM_KEY" in pages[1], "the page names the secret, so it was looked at"
    assert_no_canary(pages, "the routing page")
    assert_no_canary(log_text(caplog), "log records")


async def test_a_broken_configuration_on_the_routing_page_does_not_show_keys(
    canaries: None, observer: Observer, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(CONFIG)
    datasette.root_enabled = True
    await datasette.invoke_startup()
    assert datasette.config is not None
    broken = {**CONFIG, "purposes": {"custom": {"model": {"model": "test-keyed-2", "key": 7}}}}
    datasette.config["plugins"]["datasette-llm"] = broken
    cookies = {"ds_actor": datasette.client.actor_cookie({"id": "root"})}
    pages = [
        (await datasette.client.get(path, cookies=cookies)).text
        for path in ("/-/llm", "/-/llm.json")
    ]
    assert "plugins.datasette-llm.purposes.custom.model.key" in pages[1]
    assert_no_canary(pages, "the routing page of a broken configuration")


def test_the_cli_does_not_print_keys(
    canaries: None, observer: Observer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "datasette.json"
    path.write_text(json.dumps({"plugins": {"datasette-llm": CONFIG}}))
    outputs = []
    for arguments in (["purposes"], ["purposes", "--json"], ["check"], ["check", "--strict"]):
        result = CliRunner().invoke(cli, ["llm", *arguments, "-c", str(path)])
        assert result.exception is None or isinstance(result.exception, SystemExit), result
        outputs.extend([result.output, repr(result.exception)])
    assert "CUSTOM_KEY" in outputs[2], "the JSON report names the secret"
    assert_no_canary(outputs, "the CLI")
    assert_no_canary(log_text(caplog), "log records")


async def test_the_fake_router_records_do_not_hold_keys(
    datasette: Datasette, fake_model_router: FakeModelRouter
) -> None:
    fake_model_router.add_response(text="ok", is_reusable=True)
    client = LLM(datasette)
    for purpose in (None, "custom", "keys-json"):
        model = await client.model(purpose=purpose, actor={"id": "alice"})
        assert await (await model.prompt("hello")).text() == "ok"
    calls = fake_model_router.calls
    assert len(calls) == 3
    assert_no_canary([repr(fake_model_router), repr(calls), *map(repr, calls)], "fake router")
