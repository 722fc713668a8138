"""What routing does on failure for a purpose, and where each setting is set: ``settings_for``.

A purpose's own ``fallbacks``, ``retries``, ``timeout``, ``deadline`` and ``fallback_on`` win over
the global ones, which win over the built-in defaults. ``config.values.settings_for`` is the one
reading of that rule: prompts use its values, and the routing page, ``datasette llm`` and
validation show its values with its paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import llm
import pytest

from datasette_llm import LLM, ModelRef, Resilience
from datasette_llm.config.parser import parse_config
from datasette_llm.config.values import SETTING_NAMES, settings_for
from datasette_llm.provider_errors import ProviderError
from datasette_llm.typing import Datasette
from tests.conftest import MakeDatasette
from tests.llm_models import ServerErrorModel, SyncStub

ROOT: Final = "plugins.datasette-llm"
CONFIG: Final[dict[str, Any]] = {
    "default_model": "test-down",
    "fallbacks": ["test-a"],
    "retries": 3,
    "timeout": 20,
    "purposes": {
        "own": {
            "model": "test-down",
            "fallbacks": ["test-b"],
            "retries": 0,
            "deadline": 30,
            "fallback_on": ["rate_limit"],
        },
        "inherits": {"model": "test-a"},
    },
}


class Down(ServerErrorModel):
    """A keyless model whose provider always fails with a server error."""


class DownPlugin:
    __test__ = False

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        register(SyncStub("test-down"), Down("test-down"))


@pytest.fixture
def down() -> Iterator[None]:
    llm.plugins.pm.register(DownPlugin(), name="datasette-llm-test-down")
    try:
        yield
    finally:
        llm.plugins.pm.unregister(name="datasette-llm-test-down")


def test_a_purposes_own_setting_wins_over_the_global_one_which_wins_over_the_default() -> None:
    settings = settings_for(parse_config(CONFIG), "own")
    assert settings.resilience == Resilience(
        fallbacks=(ModelRef("test-b"),),
        retries=0,
        timeout=20,
        deadline=30,
        fallback_on=("rate_limit",),
    )
    assert dict(settings.set_at) == {
        "fallbacks": f"{ROOT}.purposes.own.fallbacks",
        "retries": f"{ROOT}.purposes.own.retries",
        "timeout": f"{ROOT}.timeout",
        "deadline": f"{ROOT}.purposes.own.deadline",
        "fallback_on": f"{ROOT}.purposes.own.fallback_on",
        "max_wait": None,  # the built-in default
    }
    assert settings.fallback_paths() == [(f"{ROOT}.purposes.own.fallbacks[0]", ModelRef("test-b"))]
    assert [name for name in SETTING_NAMES if settings.is_own(name)] == [
        "fallbacks",
        "retries",
        "deadline",
        "fallback_on",
    ]


def test_a_purpose_without_settings_and_calls_without_one_read_the_global_settings() -> None:
    config = parse_config(CONFIG)
    for purpose in ("inherits", "not-configured", None):
        settings = settings_for(config, purpose)
        assert settings.resilience == config.resilience
        assert settings.set_at["retries"] == f"{ROOT}.retries"
        assert settings.set_at["deadline"] is None  # the built-in default: no deadline
        assert settings.fallback_paths() == [(f"{ROOT}.fallbacks[0]", ModelRef("test-a"))]
        assert not any(settings.is_own(name) for name in SETTING_NAMES)


def test_a_global_setting_not_written_or_written_as_the_default_is_the_default() -> None:
    for raw in ({}, {"retries": 2, "fallbacks": []}):
        settings = settings_for(parse_config(raw), None)
        assert settings.resilience == Resilience()
        assert set(settings.set_at.values()) == {None}
        assert settings.fallback_paths() == []


def test_the_configurations_resilience_for_is_settings_for_without_the_paths() -> None:
    config = parse_config(CONFIG)
    for purpose in ("own", "inherits", None):
        assert config.resilience_for(purpose) == settings_for(config, purpose).resilience


@pytest.mark.usefixtures("test_models", "down")
async def test_the_routing_page_shows_each_value_and_path_settings_for_reads(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(CONFIG)
    datasette.root_enabled = True
    cookies = {"ds_actor": datasette.client.actor_cookie({"id": "root"})}
    data = (await datasette.client.get("/-/llm.json", cookies=cookies)).json()
    chains = {purpose["name"]: purpose["chain"] for purpose in data["purposes"]}
    chains[None] = data["default_chain"]
    config = parse_config(CONFIG)
    for name, chain in chains.items():
        settings = settings_for(config, name)
        for setting in ("retries", "timeout", "deadline", "fallback_on"):
            value = getattr(settings.resilience, setting)
            shown = list(value) if isinstance(value, tuple) else value
            assert chain[setting] == {"value": shown, "set_at": settings.set_at[setting]}, name
        fallbacks = [(link["path"], link["model_id"]) for link in chain["models"][1:]]
        assert fallbacks == [(path, ref.model_id) for path, ref in settings.fallback_paths()]


@pytest.mark.usefixtures("test_models", "down")
async def test_a_prompt_is_tried_as_often_as_the_settings_say(
    make_datasette: MakeDatasette,
) -> None:
    datasette: Datasette = make_datasette(CONFIG)
    # The purpose's own retries: 0 wins over the global 3; its fallback_on leaves out
    # server_error, so test-b is not tried either.
    model = await LLM(datasette).model(purpose="own")
    with pytest.raises(ProviderError) as raised:
        await (await model.prompt("hi")).text()
    retries = settings_for(parse_config(CONFIG), "own").resilience.retries
    assert [attempt.model_id for attempt in raised.value.attempts] == ["test-down"] * (1 + retries)
