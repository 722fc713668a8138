"""The model routing picks for a purpose and an actor is the first that ``models()`` offers them.

Routing and ``models()`` both ask the one policy (``datasette_llm.routing.policy``). Hypothesis
combines allowlists and blocklists written with ids and llm aliases, keyed model references with
and without their secret set, ``require_keys``, ``llm_default_model`` hooks and
``llm_filter_models`` hooks that decide per model and per actor; whatever the combination,
either routing raises or the model it picks is ``models()[0]`` for the same purpose and actor.
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

from datasette_llm import LLM, Actor, ModelNotFoundError, Purpose
from datasette_llm.typing import hookimpl
from tests.conftest import registered
from tests.llm_models import TestModelsPlugin

PURPOSE: Final = "routed"
ALIASES: Final = {"fast": "test-a", "smart": "test-keyed", "cheap": "test-b"}
NAMES: Final = ("test-a", "test-b", "test-c", "test-keyed", "test-keyed-2", *ALIASES)
ACTORS: Final = (None, {"id": "alice"}, {"id": "bob"})
EXAMPLES: Final = 300


@dataclass(frozen=True, eq=False)  # each hook object registers separately
class DefaultHook:
    answer: str | None

    @hookimpl
    def llm_default_model(self) -> str | None:
        return self.answer


@dataclass(frozen=True, eq=False)
class FilterHook:
    """Keep the models in ``keep`` (for everyone, or only for ``actor_id``)."""

    keep: frozenset[str]
    actor_id: str | None

    @hookimpl
    def llm_filter_models(self, models: list[Any], actor: Actor | None) -> list[Any] | None:
        if self.actor_id is not None and (actor or {}).get("id") != self.actor_id:
            return None
        return [model for model in models if model.model_id in self.keep]


@dataclass(frozen=True, eq=False)
class Declares:
    default_model: str | None

    @hookimpl
    def register_llm_purposes(self) -> list[Purpose]:
        return [Purpose(PURPOSE, default_model=self.default_model)]


names = st.sampled_from(NAMES)
name_lists = st.lists(names, max_size=4, unique=True)
references = names | st.builds(
    lambda model, key: {"model": model, "key": key}, names, st.sampled_from(["SET_KEY", "UNSET"])
)
scenarios = st.fixed_dictionaries(
    {
        "config": st.fixed_dictionaries(
            {},
            optional={
                "default_model": references,
                "models": name_lists,
                "blocked_models": name_lists,
                "require_keys": st.booleans(),
                "purposes": st.fixed_dictionaries(
                    {
                        PURPOSE: st.fixed_dictionaries(
                            {},
                            optional={
                                "model": references,
                                "models": st.lists(references, max_size=3),
                                "blocked_models": name_lists,
                            },
                        )
                    }
                ),
            },
        ),
        "purpose_default": st.none() | names,
        "default_hook": st.none() | names,
        "filters": st.lists(
            st.builds(
                FilterHook,
                st.frozensets(st.sampled_from(sorted(set(ALIASES.values()) | {"test-c"}))),
                st.none() | st.sampled_from(["alice", "bob"]),
            ),
            max_size=2,
        ),
        "purpose": st.sampled_from([PURPOSE, None]),
        "actor": st.sampled_from(ACTORS),
    }
)


def test_routing_picks_the_first_model_that_models_offers_or_raises(
    test_models: TestModelsPlugin,
    llm_user_dir: Path,
    loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (llm_user_dir / "aliases.json").write_text(json.dumps(ALIASES))
    monkeypatch.setenv("DATASETTE_SECRETS_SET_KEY", "sk-set")
    datasette = Datasette(memory=True, config={"plugins": {"datasette-llm": {}}})
    assert datasette.config is not None
    plugins: dict[str, object] = datasette.config["plugins"]
    seen = {"routed": 0, "refused": 0, "keyed": 0, "filtered": 0}

    async def exercise(scenario: dict[str, Any]) -> None:
        purpose, actor = scenario["purpose"], scenario["actor"]
        client = LLM(datasette)
        offered = [model.model_id for model in await client.models(actor, purpose)]
        try:
            resolution = await client.resolve(purpose=purpose, actor=actor)
        except (ModelNotFoundError, llm.UnknownModelError):
            seen["refused"] += 1
            return
        assert offered, f"routing picked {resolution.model_id!r} but models() offers nothing"
        assert resolution.model_id == offered[0], (resolution, offered)
        model = await client.model(purpose=purpose, actor=actor)
        assert model.model_id == offered[0]
        seen["routed"] += 1
        seen["keyed"] += resolution.key.source == "secret"
        seen["filtered"] += bool(scenario["filters"])

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenario=scenarios)
    def check(scenario: dict[str, Any]) -> None:
        plugins["datasette-llm"] = dict(scenario["config"])
        hooks: list[object] = [Declares(scenario["purpose_default"]), *scenario["filters"]]
        if scenario["default_hook"] is not None:
            hooks.append(DefaultHook(scenario["default_hook"]))
        with registered(hooks, "invariant"):
            loop.run_until_complete(exercise(scenario))

    check()
    assert seen["routed"] >= EXAMPLES // 4, seen
    assert seen["refused"] >= EXAMPLES // 10, seen
    assert seen["keyed"] >= 3, seen
    assert seen["filtered"] >= EXAMPLES // 20, seen
