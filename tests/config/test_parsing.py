"""Parsing the ``plugins: datasette-llm:`` configuration: every problem named by its path."""

from __future__ import annotations

from typing import Any

import pytest

from datasette_llm import LLM, ConfigurationError, KeySetting, ModelRef
from datasette_llm.config.parser import parse_config
from tests.conftest import MakeDatasette


def problems(raw: object) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        parse_config(raw)
    return [str(problem) for problem in caught.value.problems]


def test_empty_configuration_means_defaults() -> None:
    config = parse_config(None)
    assert config.default_model is None
    assert config.models is None
    assert config.require_keys is True
    assert config.strict is False
    assert dict(config.purposes) == {}


def test_model_references_are_strings_or_mappings_with_key_and_options() -> None:
    config = parse_config(
        {
            "default_model": {"model": "echo", "key": "MY_KEY", "options": {"thinking": True}},
            "purposes": {"x": {"model": "test-a", "models": ["test-b", {"model": "test-c"}]}},
        }
    )
    assert config.default_model == ModelRef("echo", KeySetting("secret", "MY_KEY"))
    assert dict(config.default_model.options) == {"thinking": True}
    purpose = config.purposes["x"]
    assert purpose.model == ModelRef("test-a")
    assert purpose.models == (ModelRef("test-b"), ModelRef("test-c"))


def test_every_problem_is_reported_with_its_path() -> None:
    assert problems(
        {
            "default_model": 3,
            "models": "echo",
            "purpose": {},
            "require_keys": "yes",
            "purposes": {
                "enrichments": {
                    "model": {"key": "K"},
                    "models": ["echo", {"model": "x", "options": []}],
                    "blocked": ["y"],
                }
            },
        }
    ) == [
        "plugins.datasette-llm.purpose: unknown key 'purpose'. Did you mean 'purposes'? "
        "Valid keys here: default_model, models, blocked_models, require_keys, purposes, strict, "
        "fallbacks, retries, timeout, deadline, fallback_on, max_wait, pricing, usage, "
        "coordination.",
        "plugins.datasette-llm.purposes.enrichments.blocked: unknown key 'blocked'. "
        "Did you mean 'blocked_models'? Valid keys here: model, models, blocked_models, "
        "fallbacks, retries, timeout, deadline, fallback_on, max_wait, budget, locked, "
        "allow.",
        "plugins.datasette-llm.purposes.enrichments.model: model reference has no 'model': "
        "add model: <model id> (key and options are optional).",
        "plugins.datasette-llm.purposes.enrichments.models[1].options: expected a mapping of "
        "model options, got list: [].",
        "plugins.datasette-llm.default_model: expected a model id string or a mapping "
        "{model: ID, key: SECRET_NAME, options: {...}}, got int: 3.",
        "plugins.datasette-llm.models: expected a list of model ids, got str: 'echo'.",
        "plugins.datasette-llm.require_keys: expected true or false, got str: 'yes'.",
    ]


def test_lone_surrogates_are_problems_shown_escaped_wherever_they_are() -> None:
    # A JSON escape such as "\ud800" gives a string no page, log line or terminal can write.
    found = problems(
        {
            "default_model": {"model": "echo", "key": "MY\ud800KEY"},
            "blocked_models": ["test-a\udfff"],
            "purposes": {
                "summaries\udc80": {"model": "echo"},
                "extract": {
                    "model": {
                        "model": "ec\ud83dho",
                        "options": {"style\ud800": 1, "tone": "\udfff"},
                    }
                },
            },
        }
    )
    assert found == [
        "plugins.datasette-llm.purposes.summaries\\udc80: purpose name 'summaries\\udc80' holds a "
        "lone surrogate (an unpaired \\ud800-\\udfff escape, often from JSON), which is not "
        "text: correct the string.",
        "plugins.datasette-llm.purposes.extract.model.model: model id 'ec\\ud83dho' holds a lone "
        "surrogate (an unpaired \\ud800-\\udfff escape, often from JSON), which is not text: "
        "correct the string.",
        "plugins.datasette-llm.purposes.extract.model.options: option name 'style\\ud800' holds a "
        "lone surrogate (an unpaired \\ud800-\\udfff escape, often from JSON), which is not "
        "text: correct the string.",
        "plugins.datasette-llm.purposes.extract.model.options.tone: value '\\udfff' holds a lone "
        "surrogate (an unpaired \\ud800-\\udfff escape, often from JSON), which is not text: "
        "correct the string.",
        "plugins.datasette-llm.default_model.key: the secret name holds a lone surrogate (an "
        "unpaired \\ud800-\\udfff escape, often from JSON), which is not text: correct the "
        "string.",
        "plugins.datasette-llm.blocked_models[0]: model id 'test-a\\udfff' holds a lone surrogate "
        "(an unpaired \\ud800-\\udfff escape, often from JSON), which is not text: correct the "
        "string.",
    ]
    for line in found:
        line.encode("utf-8")


def test_an_unknown_key_with_a_lone_surrogate_is_named_escaped() -> None:
    assert problems({"purposes": {"x": {"model": "echo", "mode\udc80l": 1}}}) == [
        "plugins.datasette-llm.purposes.x.mode\\udc80l: unknown key 'mode\\udc80l'. "
        "Did you mean 'model'? Valid keys here: model, models, blocked_models, "
        "fallbacks, retries, timeout, deadline, fallback_on, max_wait, budget, locked, "
        "allow."
    ]


def test_global_models_list_takes_ids_not_references() -> None:
    assert problems({"models": [{"model": "echo", "key": "K"}]}) == [
        "plugins.datasette-llm.models[0]: expected a model id string here; put key and "
        "options on default_model or on a purpose's model/models entries."
    ]


def test_configuration_error_message_lists_problems_and_says_where_to_fix() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_config({"blocked_models": [1]})
    message = str(caught.value)
    assert "Invalid datasette-llm configuration (1 problem)" in message
    assert "plugins.datasette-llm.blocked_models[0]: expected a model id string" in message
    assert "datasette.yaml" in message


async def test_malformed_configuration_raises_configuration_error_from_model(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette({"purposes": {"x": {"model": {"key": "K"}}}})
    with pytest.raises(ConfigurationError, match=r"purposes\.x\.model"):
        await LLM(datasette).model(purpose="x")


async def test_configuration_may_come_from_metadata_or_config(
    make_datasette: MakeDatasette,
) -> None:
    from datasette.app import Datasette

    llm_config: dict[str, Any] = {"default_model": "echo"}
    by_metadata = Datasette(memory=True, metadata={"plugins": {"datasette-llm": llm_config}})
    by_config = make_datasette(llm_config)
    assert (await LLM(by_metadata).model()).model_id == "echo"
    assert (await LLM(by_config).model()).model_id == "echo"


async def test_configuration_changes_are_seen_on_the_next_call(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette({"default_model": "echo"})
    assert (await LLM(datasette).resolve()).model_id == "echo"
    assert datasette.config is not None
    datasette.config["plugins"]["datasette-llm"] = {
        "default_model": "echo-needs-key",
        "require_keys": False,
    }
    assert (await LLM(datasette).resolve()).model_id == "echo-needs-key"


@pytest.mark.parametrize("price", [float("nan"), float("inf"), float("-inf"), -0.5])
def test_a_price_that_is_not_a_finite_number_of_zero_or_more_is_refused_with_its_path(
    price: float,
) -> None:
    raw = {"pricing": {"test-a": {"input": price, "output": 1.0}}}
    assert problems(raw) == [
        f"plugins.datasette-llm.pricing.test-a.input: expected dollars per million tokens, a "
        f"finite number of 0 or more, got float: {price!r}."
    ]


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"pricing": {"test-a": {"input": 10**400, "output": 1}}}, "pricing.test-a.input"),
        ({"purposes": {"x": {"budget": {"usd": 10**400}}}}, "purposes.x.budget.usd"),
        ({"purposes": {"x": {"max_wait": 10**400}}}, "purposes.x.max_wait"),
        ({"purposes": {"x": {"model": {"model": "m", "rpm": 10**400}}}}, "purposes.x.model.rpm"),
    ],
)
def test_a_whole_number_too_large_for_a_float_is_a_problem_with_its_path(
    raw: dict[str, Any], path: str
) -> None:
    # YAML and JSON read a whole number of any size; it is refused as the number it is.
    [problem] = problems(raw)
    assert problem.startswith(f"plugins.datasette-llm.{path}: expected ")
    assert "finite number" in problem


@pytest.mark.parametrize(("per", "days"), [("day", 1), ("week", 7), ("month", 31)])
def test_retention_shorter_than_a_budget_period_is_refused_naming_both_paths(
    per: str, days: int
) -> None:
    budget = {"usd": 5, "per": per}
    raw = {"usage": {"retention_days": days - 0.5}, "purposes": {"x": {"budget": budget}}}
    [problem] = problems(raw)
    assert problem.startswith(
        f"plugins.datasette-llm.usage.retention_days: keeping usage rows {days - 0.5:g} days "
        f"deletes rows the budget at plugins.datasette-llm.purposes.x.budget.per ({per}) counts"
    )
    assert f"Raise retention_days to at least {days}" in problem
    kept = parse_config({**raw, "usage": {"retention_days": days}})
    assert kept.usage.retention_days == days


def test_retention_is_checked_against_every_budget() -> None:
    raw = {
        "usage": {"retention_days": 3},
        "purposes": {
            "daily": {"budget": {"usd": 1, "per": "day"}},
            "weekly": {"budget": {"usd": 1, "per": "week"}},
            "monthly": {"budget": {"usd": 1, "per": "month"}},
        },
    }
    found = problems(raw)
    assert [problem.split(" counts")[0].rsplit(" ", 2)[1] for problem in found] == [
        "plugins.datasette-llm.purposes.weekly.budget.per",
        "plugins.datasette-llm.purposes.monthly.budget.per",
    ]
