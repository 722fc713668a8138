"""Configuration validation against installed models and registered purposes, and at startup."""

from __future__ import annotations

import logging
from typing import Any, Final

import pytest
from datasette.utils import StartupError

from datasette_llm import ConfigProblem, Purpose
from datasette_llm._operator.checks import Validation, validate
from datasette_llm.routing.models import build_registry
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import TestModelsPlugin

ENRICHMENTS: Final = Purpose("enrichments", owner="datasette-enrichments-llm")
EXTRACT: Final = Purpose("extract", owner="datasette-extract")
ROOT: Final = "plugins.datasette-llm"


class PurposesPlugin:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return [ENRICHMENTS, EXTRACT]


def check(raw: Any) -> Validation:
    return validate(raw, [ENRICHMENTS, EXTRACT], build_registry())


def paths(problems: tuple[ConfigProblem, ...]) -> list[tuple[str, str]]:
    return [(problem.severity, problem.path) for problem in problems]


def test_a_configuration_naming_installed_models_and_registered_purposes_has_no_problems(
    test_models: TestModelsPlugin,
) -> None:
    validation = check(
        {
            "default_model": "test-a",
            "models": ["test-a", "test-b"],
            "purposes": {
                "enrichments": {
                    "model": {"model": "test-b", "options": {"temperature": 0.2}},
                    "models": ["test-b", "test-c"],
                },
            },
        }
    )
    assert validation.problems == ()
    assert validation.ok


def test_structural_problems_come_from_parse_config_each_naming_its_path(
    test_models: TestModelsPlugin,
) -> None:
    validation = check(
        {"purposes": {"enrichments": {"models": ["test-a", {"key": "X"}], "modle": "test-a"}}}
    )
    assert paths(validation.errors) == [
        ("error", f"{ROOT}.purposes.enrichments.modle"),
        ("error", f"{ROOT}.purposes.enrichments.models[1]"),
    ]
    assert validation.config is None


def test_an_option_the_model_does_not_accept_is_an_error_naming_the_nearest_option(
    test_models: TestModelsPlugin,
) -> None:
    validation = check(
        {
            "purposes": {
                "enrichments": {
                    "models": ["test-a", {"model": "test-b", "options": {"temprature": 0.5}}]
                }
            }
        }
    )
    [problem] = validation.errors
    assert problem.path == f"{ROOT}.purposes.enrichments.models[1].options.temprature"
    assert problem.message == (
        "'test-b' does not accept the option 'temprature'. Did you mean 'temperature'? "
        "Options it accepts: temperature, style."
    )


def test_an_option_value_the_model_rejects_is_an_error_quoting_pydantic(
    test_models: TestModelsPlugin,
) -> None:
    validation = check({"default_model": {"model": "test-a", "options": {"temperature": "warm"}}})
    [problem] = validation.errors
    assert problem.path == f"{ROOT}.default_model.options.temperature"
    assert problem.message.startswith("'test-a' rejects the value 'warm' for option 'temperature'")


def test_a_configured_purpose_no_plugin_registers_is_a_warning_naming_the_nearest(
    test_models: TestModelsPlugin,
) -> None:
    validation = check({"purposes": {"enrichment": {"model": "test-a"}}})
    [problem] = validation.warnings
    assert problem.path == f"{ROOT}.purposes.enrichment"
    assert problem.message == (
        "no installed plugin registers the purpose 'enrichment'. Did you mean 'enrichments'? "
        "Registered purposes: enrichments, extract."
    )
    assert validation.ok


def test_a_model_that_is_not_installed_is_a_warning_naming_the_nearest_installed_model(
    test_models: TestModelsPlugin,
) -> None:
    validation = check({"models": ["test-a", "test-bb"], "blocked_models": ["tset-c"]})
    assert [(p.path, p.message) for p in validation.warnings] == [
        (
            f"{ROOT}.models[1]",
            "model 'test-bb' is not installed. Did you mean 'test-b'? Run 'llm models' to list "
            "installed models, or install the llm plugin that provides it.",
        ),
        (
            f"{ROOT}.blocked_models",
            "model 'tset-c' is not installed. Did you mean 'test-c'? Run 'llm models' to list "
            "installed models, or install the llm plugin that provides it.",
        ),
    ]


def test_an_allowlist_that_leaves_a_purpose_no_installed_model_is_a_warning(
    test_models: TestModelsPlugin,
) -> None:
    validation = check(
        {
            "blocked_models": ["test-a"],
            "purposes": {"extract": {"models": ["test-a", "no-such-model"]}},
        }
    )
    assert paths(validation.warnings) == [
        ("warning", f"{ROOT}.purposes.extract.models[1]"),
        ("warning", f"{ROOT}.purposes.extract.models"),
    ]
    assert validation.warnings[1].message.startswith(
        "the allowlist leaves purpose 'extract' with no installed, unblocked model. "
        "Add an installed model such as"
    )


def test_a_configured_model_that_is_also_blocked_is_a_warning(
    test_models: TestModelsPlugin,
) -> None:
    validation = check(
        {
            "default_model": "test-a",
            "blocked_models": ["test-a"],
            "purposes": {"extract": {"model": "test-b", "blocked_models": ["test-b"]}},
        }
    )
    assert [(p.path, p.message) for p in validation.warnings] == [
        (
            f"{ROOT}.default_model",
            "'test-a' is blocked (it is in blocked_models), so it is never used. Remove it from "
            "one of them.",
        ),
        (
            f"{ROOT}.purposes.extract.model",
            "'test-b' is blocked for purpose 'extract' (it is in purposes.extract.blocked_models), "
            "so it is never used. Remove it from the blocklist or choose another model.",
        ),
    ]


def test_strict_turns_every_warning_into_an_error(test_models: TestModelsPlugin) -> None:
    validation = check({"strict": True, "purposes": {"enrichment": {"model": "test-a"}}})
    assert validation.warnings == ()
    assert paths(validation.errors) == [("warning", f"{ROOT}.purposes.enrichment")]
    assert not validation.ok


@pytest.mark.asyncio
async def test_hook_startup_stops_startup_with_one_line_per_problem(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
) -> None:
    register_plugin(PurposesPlugin())
    datasette = make_datasette(
        {"default_model": 5, "purposes": {"enrichments": {"models": ["test-a", {"key": "K"}]}}}
    )
    with pytest.raises(StartupError) as raised:
        await datasette.invoke_startup()
    lines = str(raised.value).splitlines()
    assert lines[0] == "Invalid datasette-llm configuration (2 problems):"
    assert lines[1].startswith(f"  - {ROOT}.purposes.enrichments.models[1]: model reference has no")
    assert lines[2].startswith(f"  - {ROOT}.default_model: expected a model id string or a mapping")
    assert len(lines) == 4


@pytest.mark.asyncio
async def test_hook_startup_reports_rejected_options_by_path(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
) -> None:
    register_plugin(PurposesPlugin())
    datasette = make_datasette(
        {
            "purposes": {
                "enrichments": {"models": ["test-a", {"model": "test-b", "options": {"x": 1}}]}
            }
        }
    )
    with pytest.raises(StartupError, match=r"purposes\.enrichments\.models\[1\]\.options\.x: "):
        await datasette.invoke_startup()


@pytest.mark.asyncio
async def test_hook_startup_logs_warnings_and_starts(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
    caplog: pytest.LogCaptureFixture,
) -> None:
    register_plugin(PurposesPlugin())
    datasette = make_datasette({"purposes": {"extrct": {"model": "test-a"}}})
    with caplog.at_level(logging.WARNING, logger="datasette_llm"):
        await datasette.invoke_startup()
    assert [record.getMessage() for record in caplog.records] == [
        f"datasette-llm configuration: {ROOT}.purposes.extrct: no installed plugin registers "
        "the purpose 'extrct'. Did you mean 'extract'? Registered purposes: enrichments, extract."
    ]


@pytest.mark.asyncio
async def test_hook_startup_with_strict_stops_on_warnings(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
) -> None:
    register_plugin(PurposesPlugin())
    datasette = make_datasette({"strict": True, "purposes": {"extrct": {"model": "test-a"}}})
    with pytest.raises(StartupError) as raised:
        await datasette.invoke_startup()
    assert f"  - {ROOT}.purposes.extrct: no installed plugin registers" in str(raised.value)
    assert str(raised.value).endswith("Warnings count as errors because strict: true is set.")


@pytest.mark.asyncio
async def test_hook_startup_summarizes_many_unregistered_purposes_in_one_line(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
    caplog: pytest.LogCaptureFixture,
) -> None:
    register_plugin(PurposesPlugin())
    configured = {f"purpose-{index:04}": {"model": "test-a"} for index in range(1000)}
    datasette = make_datasette({"purposes": configured})
    with caplog.at_level(logging.WARNING, logger="datasette_llm"):
        await datasette.invoke_startup()
    assert [record.getMessage() for record in caplog.records] == [
        f"datasette-llm configuration: {ROOT}.purposes: 1000 configured purposes are not "
        "registered by any plugin: 'purpose-0000', 'purpose-0001', 'purpose-0002', … (and 997 "
        "more). Registered purposes: enrichments, extract. Run 'datasette llm check' to list "
        "each with the nearest registered name."
    ]


@pytest.mark.asyncio
async def test_hook_startup_lists_up_to_three_unregistered_purposes_one_by_one(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
    caplog: pytest.LogCaptureFixture,
) -> None:
    register_plugin(PurposesPlugin())
    datasette = make_datasette({"purposes": {name: {} for name in ("one", "two", "extrct")}})
    with caplog.at_level(logging.WARNING, logger="datasette_llm"):
        await datasette.invoke_startup()
    assert [record.getMessage().split(": ")[1] for record in caplog.records] == [
        f"{ROOT}.purposes.one",
        f"{ROOT}.purposes.two",
        f"{ROOT}.purposes.extrct",
    ]


def test_validation_outside_startup_lists_every_unregistered_purpose(
    test_models: TestModelsPlugin,
) -> None:
    validation = check({"purposes": {f"p{index}": {} for index in range(50)}})
    assert paths(validation.warnings) == [
        ("warning", f"{ROOT}.purposes.p{index}") for index in range(50)
    ]


@pytest.mark.asyncio
async def test_hook_startup_with_strict_stops_on_the_summary(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    make_datasette: MakeDatasette,
) -> None:
    register_plugin(PurposesPlugin())
    datasette = make_datasette({"strict": True, "purposes": {f"p{i}": {} for i in range(10)}})
    with pytest.raises(StartupError) as raised:
        await datasette.invoke_startup()
    assert str(raised.value).splitlines()[:2] == [
        "Invalid datasette-llm configuration (1 problem):",
        f"  - {ROOT}.purposes: 10 configured purposes are not registered by any plugin: 'p0', "
        "'p1', 'p2', … (and 7 more). Registered purposes: enrichments, extract. Run 'datasette "
        "llm check' to list each with the nearest registered name.",
    ]
