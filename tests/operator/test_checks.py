"""Configuration validation against installed models and registered purposes, and at startup."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, Final

import pytest
from datasette.utils import StartupError

from datasette_llm import LLM, ConfigProblem, ConfigurationError, Purpose
from datasette_llm._operator.checks import Validation, validate
from datasette_llm.routing.models import build_registry
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import TestModelsPlugin

ENRICHMENTS: Final = Purpose("enrichments", owner="datasette-enrichments-llm")
EXTRACT: Final = Purpose("extract", owner="datasette-extract")
ROOT: Final = "plugins.datasette-llm"
PRICE: Final = {"input": 0.15, "output": 0.6}


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
        "Options it accepts: temperature (float or none), style (str or none)."
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


def test_limits_that_disagree_through_an_llm_alias_are_an_error_naming_both_paths(
    test_models: TestModelsPlugin, llm_user_dir: Path
) -> None:
    (llm_user_dir / "aliases.json").write_text(json.dumps({"fast": "test-a"}))
    raw = {
        "default_model": {"model": "test-a", "concurrency": 1},
        "purposes": {"enrichments": {"model": {"model": "fast", "concurrency": 50}}},
    }
    validation = check(raw)
    assert paths(validation.errors) == [("error", f"{ROOT}.purposes.enrichments.model")]
    assert validation.errors[0].message == (
        "limits for 'fast' (rpm None, concurrency 50) differ from those at "
        f"{ROOT}.default_model (rpm None, concurrency 1) ('test-a' and 'fast' are the same "
        "model, 'test-a', through llm's aliases): a model's limits are shared by every purpose, "
        "so give them once, or give both the same values."
    )
    agreeing = {**raw, "purposes": {"enrichments": {"model": {"model": "fast", "concurrency": 1}}}}
    assert check(agreeing).ok


def usage_file(directory: Path) -> str:
    path = directory / "usage.db"
    sqlite3.connect(path).close()
    return str(path)


def test_a_usage_database_that_is_not_attached_is_an_error_naming_the_nearest(
    test_models: TestModelsPlugin,
) -> None:
    raw = {"usage": {"database": "usgae"}}
    validation = validate(raw, [], build_registry(), databases=["_memory", "usage"])
    assert [str(problem) for problem in validation.errors] == [
        f"{ROOT}.usage.database: no attached database is named 'usgae'. Did you mean 'usage'? "
        "Attached databases: _memory, usage. Name one of them, attach its file (datasette "
        "serve FILE.db, datasette llm check FILE.db), or leave database out to keep usage in "
        "Datasette's internal database."
    ]
    assert validate(raw, [], build_registry(), databases=["usgae"]).ok
    assert validate(raw, [], build_registry()).ok  # no databases given: not checked


@pytest.mark.asyncio
async def test_hook_startup_stops_on_a_usage_database_that_is_not_attached(
    test_models: TestModelsPlugin, make_datasette: MakeDatasette, tmp_path: Path
) -> None:
    datasette = make_datasette({"usage": {"database": "usgae"}}, files=[usage_file(tmp_path)])
    with pytest.raises(StartupError) as raised:
        await datasette.invoke_startup()
    assert f"{ROOT}.usage.database: no attached database is named 'usgae'. Did you mean " in (
        str(raised.value)
    )
    named = make_datasette({"usage": {"database": "usage"}}, files=[usage_file(tmp_path)])
    await named.invoke_startup()


@pytest.mark.asyncio
async def test_a_usage_database_detached_later_is_a_configuration_error_not_a_key_error(
    test_models: TestModelsPlugin, make_datasette: MakeDatasette, tmp_path: Path
) -> None:
    datasette = make_datasette(
        {
            "pricing": {"test-a": {"input": 1, "output": 1}},
            "purposes": {"enrichments": {"model": "test-a", "budget": {"usd": 5}}},
            "usage": {"database": "usage"},
        },
        files=[usage_file(tmp_path)],
    )
    await datasette.invoke_startup()
    datasette.remove_database("usage")
    with pytest.raises(ConfigurationError, match=rf"{ROOT}\.usage\.database: no attached"):
        await LLM(datasette).usage_records()
    model = await LLM(datasette).model(purpose="enrichments")
    with pytest.raises(ConfigurationError, match=rf"{ROOT}\.usage\.database: no attached"):
        await model.prompt("hi")


def test_a_budget_whose_prompts_would_reserve_nothing_is_a_warning_naming_the_fix(
    test_models: TestModelsPlugin,
) -> None:
    path = f"{ROOT}.purposes.enrichments.budget"

    def budget_problems(model: Any, **budget: Any) -> list[ConfigProblem]:
        purpose = {"model": model, "budget": {"usd": 5, **budget}}
        raw = {"pricing": {"gpt-4o-mini": PRICE}, "purposes": {"enrichments": purpose}}
        return [problem for problem in check(raw).problems if problem.path == path]

    # llm's gpt-4o-mini is priced, and has no max_tokens by default.
    [problem] = budget_problems("gpt-4o-mini")
    assert problem.severity == "warning"
    assert str(problem) == (
        f"{path}: 'gpt-4o-mini' has no max_tokens in its options nor by default, so its "
        "prompts reserve nothing of this budget while they run: prompts started at once can "
        f"all be admitted and spend past it. Set {path}.estimate_usd (US dollars one prompt "
        "may cost), or max_tokens in the model's options."
    )
    for value in (200, 200.0, "200"):  # as llm's options take it
        capped = {"model": "gpt-4o-mini", "options": {"max_tokens": value}}
        assert budget_problems(capped) == []
    not_a_cap = {"model": "gpt-4o-mini", "options": {"max_tokens": "plenty"}}
    [_] = budget_problems(not_a_cap)
    assert budget_problems("gpt-4o-mini", estimate_usd=0.01) == []
