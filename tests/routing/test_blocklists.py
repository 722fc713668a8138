"""Blocked stays blocked: no plugin, allowlist, default or hook routes to a blocked model.

Hypothesis combines global and per-purpose blocklists with allowlists, ``default_model``,
``purposes.<name>.model``, ``Purpose.default_model``, ``llm_default_model`` hooks and
``llm_filter_models`` hooks (some of which try to add every model back). Whatever the
combination, ``model()``, ``group()``, ``models()`` and ``resolve()`` never yield a blocked
model; an explicit blocked ``model_id`` raises ``ModelBlockedError``. Allowlists do not
constrain an explicit id (0.1a8 compatibility).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import llm
import pytest
from datasette.app import Datasette
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasette_llm import LLM, ModelBlockedError, ModelNotFoundError, Purpose
from datasette_llm.routing.models import current_registry, lookup_model
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, registered
from tests.llm_models import TestModelsPlugin

pytestmark = pytest.mark.usefixtures("test_models")

IDS: Final = ("test-a", "test-b", "test-c", "echo")
PURPOSE: Final = "guarded"
EXAMPLES: Final = 300


@dataclass(frozen=True, eq=False)  # each hook object registers separately
class DefaultHook:
    """An ``llm_default_model`` implementation answering ``answer`` (maybe asynchronously)."""

    answer: str | None
    is_async: bool

    @hookimpl
    def llm_default_model(self) -> Any:
        if not self.is_async:
            return self.answer

        async def later() -> str | None:
            return self.answer

        return later()


@dataclass(frozen=True, eq=False)  # each hook object registers separately
class FilterHook:
    """An ``llm_filter_models`` implementation: keep, narrow, or try to bring models back."""

    behaviour: str
    is_async: bool

    def answer(self, datasette: Datasette, models: list[Any]) -> list[Any] | None:
        if self.behaviour == "keep":
            return None
        if self.behaviour == "drop-first":
            return models[1:]
        if self.behaviour == "add-back":
            registry = current_registry(datasette)
            return [*models, *(lookup_model(model_id, registry) for model_id in IDS)]
        if self.behaviour == "replace-all":
            return list(llm.get_async_models())
        return list(reversed(models))

    @hookimpl
    def llm_filter_models(self, datasette: Datasette, models: list[Any]) -> Any:
        if not self.is_async:
            return self.answer(datasette, models)

        async def later() -> list[Any] | None:
            return self.answer(datasette, models)

        return later()


@dataclass(frozen=True, eq=False)  # each hook object registers separately
class PurposeHook:
    default_model: str | None

    @hookimpl
    def register_llm_purposes(self) -> list[Purpose]:
        return [Purpose(PURPOSE, default_model=self.default_model)]


ids = st.sampled_from(IDS)
id_lists = st.lists(ids, max_size=4, unique=True)
scenarios = st.fixed_dictionaries(
    {
        "config": st.fixed_dictionaries(
            {},
            optional={
                "default_model": ids,
                "models": id_lists,
                "blocked_models": id_lists,
                "require_keys": st.booleans(),
                "purposes": st.fixed_dictionaries(
                    {
                        PURPOSE: st.fixed_dictionaries(
                            {},
                            optional={
                                "model": ids,
                                "models": id_lists,
                                "blocked_models": id_lists,
                            },
                        )
                    }
                ),
            },
        ),
        "purpose_default": st.none() | ids,
        "default_hooks": st.lists(
            st.builds(DefaultHook, st.none() | ids, st.booleans()), max_size=3
        ),
        "filters": st.lists(
            st.builds(
                FilterHook,
                st.sampled_from(["keep", "drop-first", "add-back", "replace-all", "reverse"]),
                st.booleans(),
            ),
            max_size=3,
        ),
        "purpose": st.sampled_from([PURPOSE, "unregistered", None]),
    }
)


def blocked_for(config: dict[str, Any], purpose: str | None) -> set[str]:
    blocked = set(config.get("blocked_models", ()))
    if purpose is not None:
        blocked |= set(config.get("purposes", {}).get(purpose, {}).get("blocked_models", ()))
    return blocked


def test_no_combination_of_hooks_and_configuration_routes_to_a_blocked_model(
    test_models: TestModelsPlugin, loop: asyncio.AbstractEventLoop
) -> None:
    datasette = Datasette(memory=True, config={"plugins": {"datasette-llm": {}}})
    assert datasette.config is not None
    plugins: dict[str, object] = datasette.config["plugins"]
    seen = {"blocked": 0, "routed": 0, "listed": 0}

    async def exercise(scenario: dict[str, Any]) -> None:
        config: dict[str, Any] = scenario["config"]
        purpose: str | None = scenario["purpose"]
        blocked = blocked_for(config, purpose)
        seen["blocked"] += bool(blocked)
        client = LLM(datasette)
        try:
            resolution = await client.resolve(purpose=purpose)
        except ModelNotFoundError:
            pass
        else:
            assert resolution.model_id not in blocked, resolution
            seen["routed"] += 1
        try:
            model = await client.model(purpose=purpose)
        except ModelNotFoundError:
            pass
        else:
            assert model.model_id not in blocked
        try:
            async with client.group(purpose=purpose) as grouped:
                assert grouped.model_id not in blocked
        except ModelNotFoundError:
            pass
        listed = [model.model_id for model in await client.models(purpose=purpose)]
        assert not blocked & set(listed), (listed, blocked)
        assert len(listed) == len(set(listed)), "no model is listed twice"
        seen["listed"] += bool(listed)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenario=scenarios)
    def check(scenario: dict[str, Any]) -> None:
        plugins["datasette-llm"] = scenario["config"]
        hooks: list[object] = [
            PurposeHook(scenario["purpose_default"]),
            *scenario["default_hooks"],
            *scenario["filters"],
        ]
        with registered(hooks, "blocklist-fuzz"):
            loop.run_until_complete(exercise(scenario))

    check()
    assert seen["blocked"] >= EXAMPLES // 4, seen
    assert seen["routed"] >= EXAMPLES // 4, seen
    assert seen["listed"] >= EXAMPLES // 4, seen


async def test_an_explicit_model_id_bypasses_the_allowlist_but_not_the_blocklists(
    make_datasette: MakeDatasette, llm_user_dir: Path
) -> None:
    write_aliases(llm_user_dir, {"c-alias": "test-c"})
    datasette = make_datasette(
        {
            "models": ["test-b"],
            "blocked_models": ["test-a"],
            "purposes": {PURPOSE: {"blocked_models": ["test-c"]}},
        }
    )
    client = LLM(datasette)
    # Allowlists constrain routing only (0.1a8 compatibility): test-c is not in models.
    assert (await client.model("test-c")).model_id == "test-c"
    assert (await client.resolve("test-c")).step == "explicit"
    with pytest.raises(ModelBlockedError) as blocked:
        await client.model("test-a", purpose=PURPOSE)
    assert blocked.value.setting == "plugins.datasette-llm.blocked_models"
    assert str(blocked.value) == (
        "Model 'test-a' is blocked for purpose 'guarded' by "
        "plugins.datasette-llm.blocked_models, so it cannot be used, even when asked for by "
        "model_id. Ask for another model, or remove it from plugins.datasette-llm.blocked_models "
        "in datasette.yaml."
    )
    # Through an alias, and on every entry point; other purposes may use test-c.
    for call in (client.model, client.resolve):
        with pytest.raises(ModelBlockedError) as blocked:
            await call("c-alias", purpose=PURPOSE)
        assert blocked.value.model_id == "test-c"
        assert blocked.value.setting == f"plugins.datasette-llm.purposes.{PURPOSE}.blocked_models"
    with pytest.raises(ModelBlockedError):
        async with client.group("test-c", purpose=PURPOSE):
            pass
    # It is a ModelNotFoundError, which callers of 0.1a8 already catch.
    assert issubclass(ModelBlockedError, ModelNotFoundError)


async def test_an_explicit_model_id_blocked_but_not_installed_is_refused_as_blocked(
    make_datasette: MakeDatasette,
) -> None:
    """The operator blocked the name: whether it is installed here does not change why."""
    datasette = make_datasette({"blocked_models": ["gpt-5.4-pro"]})
    with pytest.raises(ModelBlockedError) as blocked:
        await LLM(datasette).model("gpt-5.4-pro")
    assert blocked.value.setting == "plugins.datasette-llm.blocked_models"
    with pytest.raises(llm.UnknownModelError):  # not blocked: not installed, as before
        await LLM(datasette).model("gpt-5.4-unblocked")


def write_aliases(directory: Path, aliases: dict[str, str]) -> None:
    (directory / "aliases.json").write_text(json.dumps(aliases))


async def test_routing_through_an_alias_of_a_blocked_model_is_refused(
    make_datasette: MakeDatasette, llm_user_dir: Path
) -> None:
    write_aliases(llm_user_dir, {"a-alias": "test-a"})
    datasette = make_datasette({"default_model": "a-alias", "blocked_models": ["test-a"]})
    with pytest.raises(ModelNotFoundError):
        await LLM(datasette).model()


async def test_blocking_an_alias_blocks_the_model_it_names(
    make_datasette: MakeDatasette, llm_user_dir: Path
) -> None:
    write_aliases(llm_user_dir, {"a-alias": "test-a"})
    datasette = make_datasette({"blocked_models": ["a-alias"]})
    listed = [model.model_id for model in await LLM(datasette).models()]
    assert "test-a" not in listed
