"""Parsing ``coordination:``: the Redis URL (never quoted), the processes and the key prefix."""

from __future__ import annotations

import pytest

from datasette_llm import ConfigurationError
from datasette_llm.config.parser import parse_config
from datasette_llm.config.values import CoordinationSettings, shown_url

ROOT = "plugins.datasette-llm.coordination"


def problems(raw: object) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        parse_config(raw)
    return [str(problem) for problem in caught.value.problems]


def test_without_coordination_each_process_keeps_its_own_limits() -> None:
    assert parse_config({}).coordination is None


def test_coordination_names_redis_with_processes_and_a_prefix() -> None:
    config = parse_config(
        {"coordination": {"redis": "redis://127.0.0.1:6379/2", "processes": 3, "prefix": "team"}}
    )
    assert config.coordination == CoordinationSettings("redis://127.0.0.1:6379/2", 3, "team")


def test_the_url_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter22@redis.internal:6379/0")
    config = parse_config({"coordination": {"redis": {"$env": "REDIS_URL"}}})
    assert config.coordination is not None
    assert config.coordination.redis == "redis://:hunter22@redis.internal:6379/0"
    assert config.coordination.processes is None
    assert config.coordination.prefix == "datasette-llm"
    assert "hunter22" not in repr(config.coordination)


def test_a_password_in_a_url_is_never_shown() -> None:
    assert shown_url("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"
    assert shown_url("rediss://user:p@ss@host/1") == "rediss://user:***@host/1"
    assert shown_url("redis://host:6379") == "redis://host:6379"


def test_each_problem_names_its_path_and_the_fix() -> None:
    assert problems({"coordination": {"processes": 0, "prefx": "x"}}) == [
        f"{ROOT}.prefx: unknown key 'prefx'. Did you mean 'prefix'? Valid keys here: redis, "
        "processes, prefix.",
        f"{ROOT}.processes: expected a whole number of at least 1, got int: 0.",
        f"{ROOT}: coordination needs redis: the URL of the Redis server every process shares, "
        "such as redis: {$env: REDIS_URL}. Leave coordination out to keep limits, cool-downs "
        "and budgets in each process.",
    ]


def test_a_url_that_is_not_redis_is_refused_without_being_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "http://:hunter22@host")
    found = problems({"coordination": {"redis": {"$env": "REDIS_URL"}}})
    assert found == [
        f"{ROOT}.redis: expected a Redis URL starting with redis://, rediss://, unix://; got "
        "(the value of $env REDIS_URL), which does not. Write it as redis://HOST:PORT/DB, or "
        "read it from the environment: {$env: REDIS_URL}.",
    ]
    assert "hunter22" not in problems({"coordination": {"redis": "http://:hunter22@host"}})[0]


def test_an_unset_variable_and_a_bad_prefix_are_problems() -> None:
    assert problems({"coordination": {"redis": {"$env": "NO_SUCH_REDIS_URL"}, "prefix": ""}}) == [
        f"{ROOT}.prefix: expected the text every Redis key starts with, got str: ''.",
        f"{ROOT}.redis: the environment variable NO_SUCH_REDIS_URL named by $env is not set.",
    ]
    assert problems({"coordination": "redis://localhost"}) == [
        f"{ROOT}: expected a mapping {{redis: {{$env: REDIS_URL}}, processes: N}}, got str: "
        "'redis://localhost'.",
    ]
