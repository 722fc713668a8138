"""Hostile configuration: whatever an operator writes, we return a result or a documented error.

Hypothesis generates configurations, valid and invalid (wrong types, deep nesting, unicode, huge
lists, missing keys, unknown keys). Documented errors are ``ConfigurationError`` (every problem
naming a path under ``plugins.datasette-llm``), ``ModelNotFoundError`` and llm's
``UnknownModelError``; at startup, Datasette's ``StartupError`` naming the same paths. Nothing
else (no bare ``KeyError``, ``TypeError``, ``AttributeError``...) may escape.

Budget: 2,000 configurations through ``parse_config`` and ``validate`` (pure and fast), and 400
more through a real Datasette: ``LLM(ds).resolve()``, ``.model()``, ``.models()``, ``.group()``,
the startup check and the routing report (as ``/-/llm.json`` serialises it), several
purposes each. Lower bounds on the real work done are asserted.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import llm
import pytest
from datasette.app import Datasette
from datasette.utils import StartupError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasette_llm import LLM, ConfigProblem, ConfigurationError, ModelNotFoundError, Purpose
from datasette_llm._operator.checks import Validation, check_at_startup, validate
from datasette_llm._operator.report import build_report
from datasette_llm.config.parser import parse_config
from datasette_llm.config.values import LLMConfig
from datasette_llm.errors import is_text
from datasette_llm.routing.models import build_registry
from tests.llm_models import TestModelsPlugin

pytestmark = pytest.mark.usefixtures("test_models")

ROOT: Final = "plugins.datasette-llm"
PARSE_EXAMPLES: Final = 2000
DATASETTE_EXAMPLES: Final = 400
INSTALLED: Final = (
    "test-a",
    "test-b",
    "test-c",
    "test-keyed",
    "test-keyed-2",
    "test-fails",
    "echo",
    "echo-needs-key",
    "gpt-4o-mini",
)
REGISTERED: Final = [Purpose("enrichments"), Purpose("extract", default_model="test-b")]
FUZZ: Final = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# ---------------------------------------------------------------------------------------------
# Strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    # Lone surrogates too (hypothesis leaves them out of text by default): a JSON escape such
    # as "\ud800" in a configuration file produces them.
    | st.text(st.characters(exclude_categories=()), max_size=6)
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=10) | st.integers() | st.none(), inner, max_size=4)
    ),
    max_leaves=12,
)
odd_ids = st.sampled_from(
    [
        "",
        "   ",
        "\t",
        "\x00",
        "ünïcødé-模型-🤖",
        "\ud800",
        "test-a\udfff",
        "a" * 5000,
        "test-a ",
        "TEST-A",
        "gpt-4o-mini\n",
    ]
)
model_ids = st.sampled_from(INSTALLED) | st.text(max_size=30) | odd_ids
secret_names = st.sampled_from(["MY_KEY", "TESTPROV_API_KEY", "", " "]) | st.text(max_size=20)
option_values = scalars | st.lists(scalars, max_size=3)
options = st.dictionaries(
    st.sampled_from(["temperature", "style", "example_bool", "thinking", "bogus"])
    | st.text(max_size=8),
    option_values,
    max_size=3,
)


def huge_lists(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Return lists of hundreds to thousands of items, cheap for hypothesis to generate."""
    repeated = st.builds(lambda n, item: [item] * n, st.integers(200, 2000), element)
    distinct = st.integers(200, 500).map(lambda n: [f"model-{index}" for index in range(n)])
    return repeated | distinct


refs = (
    model_ids
    | st.fixed_dictionaries(
        {"model": model_ids},
        optional={"key": secret_names | junk, "options": options | junk, "extra": junk},
    )
    | st.fixed_dictionaries({}, optional={"key": secret_names, "options": options})
    | junk
)
id_lists = st.lists(model_ids | junk, max_size=6) | huge_lists(model_ids) | junk
ref_lists = st.lists(refs, max_size=5) | huge_lists(refs) | junk
purpose_configs = (
    st.fixed_dictionaries(
        {},
        optional={"model": refs, "models": ref_lists, "blocked_models": id_lists, "modle": junk},
    )
    | st.none()
    | junk
)
purpose_names = st.sampled_from(
    ["enrichments", "extract", "agent", "ünï", "a.b", "with space", "", "\udc80"]
) | st.text(max_size=12)
purposes_sections = (
    st.dictionaries(purpose_names | st.integers() | st.none(), purpose_configs, max_size=4) | junk
)
any_configs = (
    st.fixed_dictionaries(
        {},
        optional={
            "default_model": refs,
            "models": id_lists,
            "blocked_models": id_lists,
            "require_keys": st.booleans() | junk,
            "strict": st.booleans() | junk,
            "purposes": purposes_sections,
            "defualt_model": junk,
        },
    )
    | st.none()
    | junk
)

valid_ids = st.sampled_from(INSTALLED) | st.sampled_from(["not-installed", "gpt-99"])
valid_refs = valid_ids | st.fixed_dictionaries(
    {"model": valid_ids},
    optional={
        "key": st.sampled_from(["MY_KEY", "OTHER_KEY"]),
        "options": st.fixed_dictionaries(
            {}, optional={"temperature": st.floats(0, 2), "style": st.text(max_size=5)}
        ),
    },
)
valid_purposes = st.fixed_dictionaries(
    {},
    optional={
        "model": valid_refs,
        "models": st.lists(valid_refs, max_size=4),
        "blocked_models": st.lists(valid_ids, max_size=3),
    },
)
valid_configs = st.fixed_dictionaries(
    {},
    optional={
        "default_model": valid_refs,
        "models": st.lists(valid_ids, max_size=4),
        "blocked_models": st.lists(valid_ids, max_size=3),
        "require_keys": st.booleans(),
        "strict": st.booleans(),
        "purposes": st.dictionaries(
            st.sampled_from(["enrichments", "extract", "agent", "ünï"]), valid_purposes, max_size=3
        ),
    },
)
configs = valid_configs | any_configs

# ---------------------------------------------------------------------------------------------
# Checks


def assert_names_paths(problems: tuple[ConfigProblem, ...]) -> None:
    assert problems, "an error must list at least one problem"
    for problem in problems:
        assert problem.path == ROOT or problem.path.startswith(f"{ROOT}."), problem
        assert problem.message, problem
        assert problem.severity in ("error", "warning"), problem
        # Every problem can be shown on a page, in a log line or on a terminal.
        assert is_text(problem.path) and is_text(problem.message), problem


def assert_documented(error: BaseException) -> None:
    """Fail unless ``error`` is one of the errors datasette-llm documents for configuration."""
    assert is_text(str(error)), repr(error)
    if isinstance(error, ConfigurationError):
        assert_names_paths(error.problems)
        assert ROOT in str(error)
    elif isinstance(error, StartupError):
        assert ROOT in str(error)
    elif not isinstance(error, ModelNotFoundError | llm.UnknownModelError):
        raise error


class Tally:
    """Count what the fuzzing actually exercised, so a vacuous run cannot pass."""

    def __init__(self) -> None:
        self.examples = 0
        self.parsed = 0
        self.rejected = 0
        self.models_returned = 0
        self.resolved = 0


def queried_purposes(raw: object) -> list[str | Purpose | None]:
    """Return the purposes to ask about: None, registered ones and those the config names."""
    names: list[str | Purpose | None] = [None, "enrichments", REGISTERED[1]]
    purposes = raw.get("purposes") if isinstance(raw, dict) else None
    if isinstance(purposes, dict):
        names.extend(name for name in list(purposes)[:2] if isinstance(name, str))
    return names


# ---------------------------------------------------------------------------------------------
# Tests


def test_parse_config_and_validate_give_a_config_or_errors_naming_paths_for_2000_configs(
    test_models: TestModelsPlugin,
) -> None:
    registry = build_registry()
    tally = Tally()

    @settings(FUZZ, max_examples=PARSE_EXAMPLES)
    @given(raw=configs)
    def check(raw: object) -> None:
        tally.examples += 1
        try:
            parsed = parse_config(raw)
        except ConfigurationError as error:
            assert_names_paths(error.problems)
            tally.rejected += 1
        else:
            assert isinstance(parsed, LLMConfig)
            tally.parsed += 1
        validation = validate(raw, REGISTERED, registry)
        assert isinstance(validation, Validation)
        for problem in validation.problems:
            assert_names_paths((problem,))
        assert validation.ok == (not validation.errors)

    check()
    assert tally.examples >= PARSE_EXAMPLES
    assert tally.parsed >= PARSE_EXAMPLES // 10, vars(tally)
    assert tally.rejected >= PARSE_EXAMPLES // 10, vars(tally)


def test_routing_on_a_real_datasette_gives_a_result_or_a_documented_error(
    test_models: TestModelsPlugin, loop: asyncio.AbstractEventLoop
) -> None:
    datasette = Datasette(memory=True, config={"plugins": {"datasette-llm": None}})
    assert datasette.config is not None
    plugins: dict[str, object] = datasette.config["plugins"]
    tally = Tally()

    async def exercise(raw: object) -> None:
        plugins["datasette-llm"] = raw
        try:
            check_at_startup(datasette)
        except StartupError as error:
            assert_documented(error)
        try:
            report = await build_report(datasette)
            # What /-/llm renders, as UTF-8.
            json.dumps(report.to_json(), ensure_ascii=False).encode("utf-8")
        except ConfigurationError as error:
            assert_documented(error)
        for purpose in queried_purposes(raw):
            client = LLM(datasette)
            try:
                resolution = await client.resolve(purpose=purpose)
                assert resolution.model_id
                tally.resolved += 1
            except Exception as error:
                assert_documented(error)
            try:
                wrapped = await client.model(purpose=purpose, actor={"id": "fuzz"})
                assert wrapped.model_id
            except Exception as error:
                assert_documented(error)
                tally.rejected += isinstance(error, ConfigurationError)
            try:
                models = await client.models(purpose=purpose, actor={"id": "fuzz"})
                assert all(isinstance(model.model_id, str) for model in models)
                tally.models_returned += bool(models)
            except Exception as error:
                assert_documented(error)
            try:
                async with client.group(purpose=purpose) as grouped:
                    assert grouped.group is not None
            except Exception as error:
                assert_documented(error)

    @settings(FUZZ, max_examples=DATASETTE_EXAMPLES)
    @given(raw=configs)
    def check(raw: object) -> None:
        tally.examples += 1
        loop.run_until_complete(exercise(raw))

    check()
    assert tally.examples >= DATASETTE_EXAMPLES
    assert tally.resolved >= DATASETTE_EXAMPLES // 10, vars(tally)
    assert tally.models_returned >= DATASETTE_EXAMPLES // 10, vars(tally)
    assert tally.rejected >= DATASETTE_EXAMPLES // 10, vars(tally)
