"""The state of a Datasette: one object holds every cache, and no cache is ever stale.

- ``state_of(datasette)`` makes the ``State`` on first use, one per Datasette, and it is
  collected with its Datasette;
- every cache of the package is a slot of the ``State``, and what stays per process is what
  ``State``'s docstring lists, checked on the source;
- each cache is rebuilt exactly when ``State``'s docstring says: each test below warms a cache,
  changes one thing it depends on at run time, and checks the very next call sees the change.
"""

from __future__ import annotations

import ast
import gc
import json
import os
import weakref
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import llm
import pytest

import datasette_llm
from datasette_llm import (
    LLM,
    Actor,
    PromptResult,
    Purpose,
    get_purpose,
    get_purposes,
    register_secrets,
)
from datasette_llm.state import Slot, State, state_of
from datasette_llm.typing import Datasette, hookimpl
from datasette_llm.usage.ledger import flush_usage
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import FreeModel, SyncStub

pytestmark = pytest.mark.usefixtures("test_models")

ROUTED = {"purposes": {"summaries": {"model": "test-a"}}}
PACKAGE: Final = Path(datasette_llm.__file__).parent
DOC: Final = State.__doc__ or ""
CACHES_DOC, _, PROCESS_DOC = DOC.partition("Kept per process instead")
NUMBERS: Final[Slot[list[int]]] = Slot("numbers")


# The State itself


def test_the_state_is_made_on_first_use_and_then_the_same(make_datasette: MakeDatasette) -> None:
    datasette = make_datasette()
    state = state_of(datasette)
    assert state.get(NUMBERS) is None
    state.put(NUMBERS, [1])
    assert state_of(datasette) is state
    assert state_of(datasette).get(NUMBERS) == [1]


def test_each_datasette_has_its_own_state(make_datasette: MakeDatasette) -> None:
    first, second = make_datasette(), make_datasette()
    state_of(first).put(NUMBERS, [1])
    assert state_of(second) is not state_of(first)
    assert state_of(second).get(NUMBERS) is None


def test_setdefault_builds_a_slot_s_value_once(make_datasette: MakeDatasette) -> None:
    state = state_of(make_datasette())
    built: list[int] = []

    def build() -> list[int]:
        built.append(len(built))
        return []

    numbers = state.setdefault(NUMBERS, build)
    assert state.setdefault(NUMBERS, build) is numbers
    assert built == [0]


def test_two_slots_of_one_name_are_two_places(make_datasette: MakeDatasette) -> None:
    state = state_of(make_datasette())
    other: Slot[list[int]] = Slot("numbers")
    state.put(NUMBERS, [1])
    state.put(other, [2])
    assert (state.get(NUMBERS), state.get(other)) == ([1], [2])
    assert repr(state) == "<State of 2 slots: numbers, numbers>"


async def test_the_state_is_collected_with_its_datasette_after_real_use(
    make_datasette: MakeDatasette, tmp_path: Path
) -> None:
    # Every slot but the CLI's filled: configuration, overrides, llm's models, purposes, policies,
    # verdicts, secrets, the ledger, the coordinator and the gates (test-a is limited to 600
    # rpm). Datasette itself keeps an instance alive until close() (its database threads), and
    # one with a temporary internal database until the process exits (atexit removes the file).
    datasette = make_datasette(
        {"purposes": {"summaries": {"model": {"model": "test-a", "rpm": 600}}}},
        config={"permissions": {"llm-use": {"id": "alice"}}},
        internal=str(tmp_path / "internal.db"),
    )
    await datasette.invoke_startup()
    alice = {"id": "alice"}
    model = await LLM(datasette).model(purpose="summaries", actor=alice)
    assert await (await model.prompt("hello")).text() == "test-a:hello"
    assert await LLM(datasette).models(actor=alice, purpose="summaries")
    get_purposes(datasette)
    register_secrets(datasette)
    await flush_usage(datasette)
    assert repr(state_of(datasette)).startswith("<State of 11 slots: llm's models,")
    if not hasattr(datasette, "close"):
        pytest.skip("this Datasette has no close(): its database threads keep it alive")
    datasette.close()
    state = weakref.ref(state_of(datasette))
    collected = weakref.ref(datasette)
    del datasette, model
    gc.collect()
    assert collected() is None
    assert state() is None


# What the State holds, and what stays per process


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


MUTABLE: Final = frozenset(
    {"dict", "set", "list", "deque", "defaultdict", "WeakKeyDictionary", "WeakSet"}
)
MEMOS: Final = frozenset({"cache", "lru_cache"})


def module_state(tree: ast.Module) -> set[str]:
    """Return the names a module keeps state in: containers, memoised functions, ``global``s.

    A container annotated ``Final`` is a constant, not state.
    """
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and "Final" in ast.unparse(node.annotation):
            continue
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            value = node.value
            if isinstance(value, ast.Dict | ast.List | ast.Set) or _name(value) in MUTABLE:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(ast.unparse(target) for target in targets)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if any(_name(decorator) in MEMOS for decorator in node.decorator_list):
                names.add(node.name)
    names.update(n for node in ast.walk(tree) if isinstance(node, ast.Global) for n in node.names)
    return names - {"__all__"}


def slots_declared(tree: ast.Module) -> set[str]:
    return {
        ast.unparse(node.target)
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and "Slot[" in ast.unparse(node.annotation)
    }


def sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text())


# Each is one per process, whatever the number of Datasette instances; State's docstring says why.
PER_PROCESS: Final = {
    "_hooks.py": {"plugin_manager", "_one_by_one"},
    "log.py": {"_known"},
    "prompting/clients.py": {"_pools", "_sites"},
    "routing/catalog.py": {"_warned"},
    "routing/models.py": {"_default_user_dir", "_watched_files", "_stand_ins"},
    "usage/telemetry.py": {"_tracer", "_meter", "_token_usage", "_operation_duration"},
}


def test_no_module_keeps_state_but_what_is_one_per_process() -> None:
    found = {module: names for module, tree in sources() if (names := module_state(tree))}
    assert found == PER_PROCESS


def test_the_state_s_docstring_lists_every_slot_and_what_stays_per_process() -> None:
    slotted = {module for module, tree in sources() if slots_declared(tree)} - {"state.py"}
    assert len(slotted) >= 10
    assert [module for module in sorted(slotted) if f"``{module}``" not in CACHES_DOC] == []
    assert [module for module in PER_PROCESS if f"``{module}``" not in PROCESS_DOC] == []


# The caches, and what rebuilds each


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


# llm's models (llm.plugins.pm, aliases.json, extra-openai-models.yaml, LLM_USER_PATH)


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
