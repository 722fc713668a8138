"""Caches are never stale: every change that can alter routing is seen by the next call.

datasette-llm caches llm's model registry, the registered purposes, the parsed configuration and
each hook's implementations. Each test warms a cache, changes one thing it depends on at run
time, and checks the very next call sees the change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import llm
import pytest

from datasette_llm import LLM, Actor, PromptResult, Purpose, get_purpose, get_purposes
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import FreeModel, SyncStub

pytestmark = pytest.mark.usefixtures("test_models")

ROUTED = {"purposes": {"summaries": {"model": "test-a"}}}


class Models:
    """An llm plugin registering keyless models with the given ids."""

    def __init__(self, *model_ids: str) -> None:
        self.model_ids = model_ids

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        for model_id in self.model_ids:
            register(SyncStub(model_id), FreeModel(model_id))


@pytest.fixture
def llm_plugins() -> Iterator[list[str]]:
    """Names registered on llm's plugin manager during the test; unregistered afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        if llm.plugins.pm.get_plugin(name) is not None:
            llm.plugins.pm.unregister(name=name)


def register_llm_plugin(names: list[str], plugin: object, name: str) -> None:
    llm.plugins.pm.register(plugin, name=name)
    names.append(name)


async def installed_ids(datasette: Datasette) -> list[str]:
    return [model.model_id for model in await LLM(datasette).models()]


def write_aliases(directory: Path, aliases: dict[str, str]) -> None:
    (directory / "aliases.json").write_text(json.dumps(aliases))


class Declares:
    def __init__(self, *names: str) -> None:
        self.purposes = [Purpose(name, owner="tests") for name in names]

    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return self.purposes


class DefaultModel:
    def __init__(self, answer: str) -> None:
        self.answer = answer

    @hookimpl
    def llm_default_model(self, purpose: str | None, actor: Actor | None) -> str:
        return self.answer


class OnlyModel:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    @hookimpl
    def llm_filter_models(self, models: list[Any]) -> list[Any]:
        return [model for model in models if model.model_id == self.model_id]


class Records:
    def __init__(self, label: str, log: list[str]) -> None:
        self.label = label
        self.log = log

    @hookimpl
    def llm_prompt_context(self, model_id: str) -> Any:
        @asynccontextmanager
        async def around(result: PromptResult) -> Any:
            self.log.append(self.label)
            yield

        return around


# llm's model registry (llm.plugins.pm, aliases.json, extra-openai-models.yaml, LLM_USER_PATH)


async def test_an_llm_plugin_registered_after_the_first_lookup_is_found(
    make_datasette: MakeDatasette, llm_plugins: list[str]
) -> None:
    datasette = make_datasette()
    await LLM(datasette).model("test-a")
    register_llm_plugin(llm_plugins, Models("late-model"), "late-models")
    assert (await LLM(datasette).model("late-model")).model_id == "late-model"
    assert "late-model" in await installed_ids(datasette)


async def test_an_unregistered_llm_plugin_s_models_are_gone_at_once(
    make_datasette: MakeDatasette, llm_plugins: list[str]
) -> None:
    datasette = make_datasette()
    register_llm_plugin(llm_plugins, Models("short-lived"), "short-lived")
    await LLM(datasette).model("short-lived")
    llm.plugins.pm.unregister(name="short-lived")
    with pytest.raises(llm.UnknownModelError, match="short-lived"):
        await LLM(datasette).model("short-lived")
    assert "short-lived" not in await installed_ids(datasette)


async def test_an_llm_plugin_re_registered_under_the_same_name_is_asked_again(
    make_datasette: MakeDatasette, llm_plugins: list[str]
) -> None:
    datasette = make_datasette()
    register_llm_plugin(llm_plugins, Models("first-model"), "same-name")
    assert "first-model" in await installed_ids(datasette)
    llm.plugins.pm.unregister(name="same-name")
    register_llm_plugin(llm_plugins, Models("second-model"), "same-name")
    ids = await installed_ids(datasette)
    assert "second-model" in ids
    assert "first-model" not in ids


async def test_an_alias_written_to_aliases_json_routes_at_once(
    make_datasette: MakeDatasette, llm_user_dir: Path
) -> None:
    datasette = make_datasette({"purposes": {"summaries": {"model": "fast"}}})
    with pytest.raises(llm.UnknownModelError):
        await LLM(datasette).model(purpose="summaries")
    write_aliases(llm_user_dir, {"fast": "test-a"})
    assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-a"


async def test_an_alias_rewritten_with_content_of_the_same_size_is_followed(
    make_datasette: MakeDatasette, llm_user_dir: Path
) -> None:
    # File systems with coarse timestamps give two writes within one tick the same mtime.
    datasette = make_datasette()
    path = llm_user_dir / "aliases.json"
    write_aliases(llm_user_dir, {"fast": "test-a"})
    assert (await LLM(datasette).model("fast")).model_id == "test-a"
    before = path.stat()
    write_aliases(llm_user_dir, {"fast": "test-b"})
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert (await LLM(datasette).model("fast")).model_id == "test-b"


async def test_a_removed_aliases_json_forgets_its_aliases(
    make_datasette: MakeDatasette, llm_user_dir: Path
) -> None:
    datasette = make_datasette()
    write_aliases(llm_user_dir, {"fast": "test-a"})
    await LLM(datasette).model("fast")
    (llm_user_dir / "aliases.json").unlink()
    with pytest.raises(llm.UnknownModelError, match="fast"):
        await LLM(datasette).model("fast")


async def test_llm_set_alias_and_remove_alias_are_followed(make_datasette: MakeDatasette) -> None:
    datasette = make_datasette()
    llm.set_alias("quick", "test-c")  # type: ignore[no-untyped-call]  # llm is untyped here
    assert (await LLM(datasette).model("quick")).model_id == "test-c"
    llm.remove_alias("quick")  # type: ignore[no-untyped-call]
    with pytest.raises(llm.UnknownModelError):
        await LLM(datasette).model("quick")


async def test_pointing_llm_user_path_elsewhere_uses_that_directory_s_aliases(
    make_datasette: MakeDatasette,
    llm_user_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    datasette = make_datasette()
    write_aliases(llm_user_dir, {"fast": "test-a"})
    assert (await LLM(datasette).model("fast")).model_id == "test-a"
    other = tmp_path / "other-llm-user"
    other.mkdir()
    write_aliases(other, {"fast": "test-b"})
    monkeypatch.setenv("LLM_USER_PATH", str(other))
    assert (await LLM(datasette).model("fast")).model_id == "test-b"


async def test_a_model_added_to_extra_openai_models_yaml_is_installed_at_once(
    make_datasette: MakeDatasette, llm_user_dir: Path
) -> None:
    datasette = make_datasette()
    assert "my-extra-model" not in await installed_ids(datasette)
    (llm_user_dir / "extra-openai-models.yaml").write_text(
        "- model_id: my-extra-model\n  model_name: my-extra\n  api_base: http://localhost:1\n"
    )
    model = await LLM(datasette).model("my-extra-model")
    assert model.model_id == "my-extra-model"


# Purposes (register_llm_purposes on Datasette's plugin manager)


def test_a_purpose_plugin_registered_after_the_first_call_is_listed(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    datasette = make_datasette()
    assert get_purpose(datasette, "late-purpose") is None
    register_plugin(Declares("late-purpose"))
    assert get_purpose(datasette, "late-purpose") == Purpose("late-purpose", owner="tests")


def test_an_unregistered_purpose_plugin_s_purposes_are_gone_at_once(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    from datasette.plugins import pm

    datasette = make_datasette()
    pm.register(Declares("gone-purpose"), name="gone-purposes")
    try:
        assert get_purpose(datasette, "gone-purpose") is not None
    finally:
        pm.unregister(name="gone-purposes")
    assert "gone-purpose" not in [purpose.name for purpose in get_purposes(datasette)]


def test_a_purpose_plugin_re_registered_under_the_same_name_is_asked_again(
    make_datasette: MakeDatasette,
) -> None:
    from datasette.plugins import pm

    datasette = make_datasette()
    pm.register(Declares("old-purpose"), name="renaming-purposes")
    try:
        assert get_purpose(datasette, "old-purpose") is not None
        pm.unregister(name="renaming-purposes")
        pm.register(Declares("new-purpose"), name="renaming-purposes")
        names = [purpose.name for purpose in get_purposes(datasette)]
    finally:
        pm.unregister(name="renaming-purposes")
    assert "new-purpose" in names
    assert "old-purpose" not in names


# Configuration (plugins.datasette-llm, per Datasette instance)


async def test_configuration_section_replaced_is_followed(make_datasette: MakeDatasette) -> None:
    datasette = make_datasette({"purposes": {"summaries": {"model": "test-a"}}})
    assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-a"
    assert datasette.config is not None
    datasette.config["plugins"]["datasette-llm"] = {"purposes": {"summaries": {"model": "test-b"}}}
    assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-b"


async def test_configuration_is_not_compared_value_by_value_on_each_call(
    make_datasette: MakeDatasette,
) -> None:
    # Comparing the whole configuration on every call made routing cost grow with it: a value
    # changed inside the section, in place, is only seen once the section is replaced.
    datasette = make_datasette({"purposes": {"summaries": {"model": "test-a"}}})
    assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-a"
    assert datasette.config is not None
    section = datasette.config["plugins"]["datasette-llm"]
    section["purposes"]["summaries"]["model"] = "test-b"
    assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-a"
    datasette.config["plugins"]["datasette-llm"] = dict(section)
    assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-b"


async def test_configuration_replaced_wholesale_is_followed(make_datasette: MakeDatasette) -> None:
    datasette = make_datasette(ROUTED)
    assert "test-b" in await installed_ids(datasette)
    datasette.config = {"plugins": {"datasette-llm": {"blocked_models": ["test-b"]}}}
    assert "test-b" not in await installed_ids(datasette)


async def test_configuration_from_an_environment_variable_follows_the_variable(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUMMARY_MODEL", "test-a")
    datasette = make_datasette({"purposes": {"summaries": {"model": {"$env": "SUMMARY_MODEL"}}}})
    assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-a"
    monkeypatch.setenv("SUMMARY_MODEL", "test-c")
    assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-c"


async def test_each_datasette_keeps_its_own_configuration(make_datasette: MakeDatasette) -> None:
    first = make_datasette({"purposes": {"summaries": {"model": "test-a"}}})
    second = make_datasette({"purposes": {"summaries": {"model": "test-b"}}})
    assert (await LLM(first).model(purpose="summaries")).model_id == "test-a"
    assert (await LLM(second).model(purpose="summaries")).model_id == "test-b"
    assert (await LLM(first).model(purpose="summaries")).model_id == "test-a"


# Hook implementations (Datasette's plugin manager)


async def test_hook_llm_default_model_registered_and_unregistered_at_run_time(
    make_datasette: MakeDatasette,
) -> None:
    from datasette.plugins import pm

    datasette = make_datasette(ROUTED)
    assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-a"
    pm.register(DefaultModel("test-c"), name="late-default")
    try:
        assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-c"
    finally:
        pm.unregister(name="late-default")
    assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-a"


async def test_hook_llm_filter_models_registered_and_unregistered_at_run_time(
    make_datasette: MakeDatasette,
) -> None:
    from datasette.plugins import pm

    datasette = make_datasette(ROUTED)
    assert len(await installed_ids(datasette)) > 1
    pm.register(OnlyModel("test-b"), name="late-filter")
    try:
        assert await installed_ids(datasette) == ["test-b"]
    finally:
        pm.unregister(name="late-filter")
    assert len(await installed_ids(datasette)) > 1


async def test_hook_llm_prompt_context_follows_registrations_after_the_model_was_fetched(
    make_datasette: MakeDatasette,
) -> None:
    from datasette.plugins import pm

    log: list[str] = []
    model = await LLM(make_datasette()).model("test-a")
    await model.prompt("before")
    pm.register(Records("first", log), name="late-context")
    try:
        await model.prompt("one")
        pm.unregister(name="late-context")
        pm.register(Records("second", log), name="late-context")
        await model.prompt("two")
    finally:
        pm.unregister(name="late-context")
    await model.prompt("after")
    assert log == ["first", "second"]


async def test_hook_llm_prompt_context_implementations_nest_in_pluggy_order(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    log: list[str] = []
    register_plugin(Records("registered-first", log))
    register_plugin(Records("registered-second", log))
    model = await LLM(make_datasette()).model("test-a")
    response = await model.prompt("hello")
    assert await response.text() == "test-a:hello"
    assert log == ["registered-second", "registered-first"]


class RecordsPromptAndActor:
    """Declares other arguments than ``Records``, in another order than the hookspec's."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl
    def llm_prompt_context(self, actor: Actor | None, prompt: str) -> Any:
        @asynccontextmanager
        async def around(result: PromptResult) -> Any:
            self.log.append(f"{prompt} for {actor['id'] if actor else None}")
            yield

        return around


async def test_hook_llm_prompt_context_replaced_by_one_declaring_other_arguments_gets_them(
    make_datasette: MakeDatasette,
) -> None:
    from datasette.plugins import pm

    log: list[str] = []
    model = await LLM(make_datasette()).model("test-a", actor={"id": "alice"})
    pm.register(Records("model only", log), name="swapped-context")
    try:
        await model.prompt("one")
        pm.unregister(name="swapped-context")
        pm.register(RecordsPromptAndActor(log), name="swapped-context")
        await model.prompt("two")
    finally:
        pm.unregister(name="swapped-context")
    assert log == ["model only", "two for alice"]
