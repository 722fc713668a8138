"""Secrets never leak: a canary API key appears in no output of datasette-llm.

The canary reaches the models three ways: a datasette-secrets provider secret
(``DATASETTE_SECRETS_TESTPROV_API_KEY``), a custom ``key`` reference in configuration
(``DATASETTE_SECRETS_CUSTOM_KEY``) and llm's own ``keys.json``. Each test proves the key was
used, then scans what datasette-llm shows: the routing page and its JSON, the CLI, every log
record (at DEBUG), every exception message and the ``repr`` of every object it hands out, and
the fake router's records.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest
from click.testing import CliRunner
from datasette.app import Datasette
from datasette.cli import cli

from datasette_llm import LLM, Group, PromptResult, Purpose
from datasette_llm.config.parser import parse_config
from datasette_llm.testing import FakeModelRouter
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin

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
