"""Purpose values, their validation, and the registry of purposes plugins register."""

from __future__ import annotations

import logging
from typing import Final

import pytest
from datasette.app import Datasette

from datasette_llm import (
    LLM,
    Purpose,
    PurposeCollision,
    get_purpose,
    get_purpose_collisions,
    get_purpose_owner,
    get_purposes,
)
from datasette_llm.typing import hookimpl
from tests.conftest import RegisterPlugin

ENRICHMENTS: Final = Purpose(
    name="enrichments",
    owner="datasette-enrichments-llm",
    description="Run a prompt against every row",
    default_model="gpt-5.4-nano",
)


def test_purpose_accepts_the_original_keyword_and_positional_forms() -> None:
    assert Purpose(name="x", description="desc") == Purpose("x", "desc")
    assert Purpose("x").description is None
    assert Purpose("x").owner is None
    assert Purpose("x").default_model is None


def test_purpose_is_frozen() -> None:
    with pytest.raises(AttributeError):
        ENRICHMENTS.name = "other"  # type: ignore[misc]  # the point of the test


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "Purpose name is empty"),
        ("two words", "use 'two-words' instead"),
        (" padded", "contains whitespace"),
        ("a:b", "cannot be used as a key under 'purposes:'"),
        ("-leading", "cannot be used as a key"),
    ],
)
def test_purpose_rejects_names_that_cannot_be_configuration_keys(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Purpose(name)


def test_purpose_rejects_wrong_field_types_naming_the_field() -> None:
    with pytest.raises(TypeError, match="Purpose name must be a string"):
        Purpose(3)  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(TypeError, match=r"Purpose\('x'\).description must be a string"):
        Purpose("x", description=3)  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(ValueError, match="default_model is empty"):
        Purpose("x", default_model="  ")


@pytest.mark.parametrize("field", ["description", "owner", "default_model"])
def test_purpose_rejects_a_lone_surrogate_naming_the_field_escaped(field: str) -> None:
    with pytest.raises(ValueError) as caught:
        Purpose("x", **{field: "bad \ud800 text"})  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"Purpose('x').{field} 'bad \\ud800 text' holds a lone surrogate")
    message.encode("utf-8")


def test_get_purposes_returns_registered_purposes_first_registration_wins(
    register_plugin: RegisterPlugin,
) -> None:
    class First:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [Purpose("shared", "first"), ENRICHMENTS]

    class Second:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [Purpose("shared", "second"), Purpose("only-second")]

    register_plugin(First(), name="first")
    register_plugin(Second(), name="second")
    datasette = Datasette(memory=True)
    purposes = {purpose.name: purpose for purpose in get_purposes(datasette)}
    # The plugin registered first keeps the name: installing another never takes it over.
    assert purposes["shared"].description == "first"
    assert [purpose.name for purpose in get_purposes(datasette)][:3] == [
        "shared",
        "enrichments",
        "only-second",
    ], "registration order"
    assert set(purposes) >= {"shared", "enrichments", "only-second"}
    assert get_purpose(datasette, "enrichments") == ENRICHMENTS
    assert get_purpose(datasette, "missing") is None


def test_collision_between_owners_is_listed_and_logged_once(
    register_plugin: RegisterPlugin, caplog: pytest.LogCaptureFixture
) -> None:
    class Mine:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [Purpose("summaries", owner="plugin-a")]

    class Theirs:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [Purpose("summaries", owner="plugin-b")]

    register_plugin(Mine(), name="mine")
    register_plugin(Theirs(), name="theirs")
    datasette = Datasette(memory=True)
    with caplog.at_level(logging.WARNING, logger="datasette_llm"):
        collisions = get_purpose_collisions(datasette)
        get_purpose_collisions(Datasette(memory=True))
    assert collisions == [
        PurposeCollision(
            name="summaries",
            kept=Purpose("summaries", owner="plugin-a"),
            ignored=Purpose("summaries", owner="plugin-b"),
            kept_owner="plugin-a",
            ignored_owner="plugin-b",
        )
    ]
    warnings = [r for r in caplog.records if "registered by both" in r.getMessage()]
    assert len(warnings) == 1
    assert "'plugin-b'" in warnings[0].getMessage()
    assert "'plugin-a'" in warnings[0].getMessage()


def test_owner_defaults_to_the_registering_plugins_name(register_plugin: RegisterPlugin) -> None:
    class Anonymous:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [Purpose("anonymous-purpose"), ENRICHMENTS]

    register_plugin(Anonymous(), name="datasette-anonymous")
    datasette = Datasette(memory=True)
    assert get_purpose_owner(datasette, "anonymous-purpose") == "datasette-anonymous"
    assert get_purpose_owner(datasette, "enrichments") == "datasette-enrichments-llm"
    assert get_purpose_owner(datasette, "missing") is None


def test_same_owner_repeating_an_identical_purpose_is_not_a_collision(
    register_plugin: RegisterPlugin,
) -> None:
    class Twice:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [ENRICHMENTS, ENRICHMENTS]

    class Again:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [ENRICHMENTS]

    register_plugin(Twice(), name="twice")
    register_plugin(Again(), name="again")
    datasette = Datasette(memory=True)
    assert get_purpose_collisions(datasette) == []
    assert [p for p in get_purposes(datasette) if p.name == "enrichments"] == [ENRICHMENTS]


def test_hook_register_llm_purposes_returning_a_non_purpose_is_a_clear_error(
    register_plugin: RegisterPlugin,
) -> None:
    class Broken:
        @hookimpl
        def register_llm_purposes(self) -> list[str]:
            return ["enrichments"]

    register_plugin(Broken(), name="broken-purposes")
    with pytest.raises(TypeError, match=r"'broken-purposes'.*must be a datasette_llm\.Purpose"):
        get_purposes(Datasette(memory=True))


def test_registered_purposes_follow_plugins_registered_at_run_time(
    register_plugin: RegisterPlugin,
) -> None:
    datasette = Datasette(memory=True)
    assert get_purpose(datasette, "late") is None

    class Late:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [Purpose("late")]

    register_plugin(Late(), name="late")
    assert get_purpose(datasette, "late") == Purpose("late")


@pytest.mark.usefixtures("test_models")
async def test_a_plugin_installed_later_does_not_take_over_where_a_purposes_calls_route(
    register_plugin: RegisterPlugin,
) -> None:
    class Existing:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [Purpose("shared", "existing", default_model="test-a")]

    class Newcomer:
        @hookimpl
        def register_llm_purposes(self) -> list[Purpose]:
            return [Purpose("shared", "newcomer", default_model="test-b")]

    register_plugin(Existing(), name="existing")
    register_plugin(Newcomer(), name="newcomer")
    datasette = Datasette(memory=True)
    resolution = await LLM(datasette).resolve(purpose="shared")
    assert (resolution.model_id, resolution.step) == ("test-a", "purpose_default")
    model = await LLM(datasette).model(purpose="shared")
    assert await (await model.prompt("hi")).text() == "test-a:hi"
    assert get_purpose_owner(datasette, "shared") == "existing"
