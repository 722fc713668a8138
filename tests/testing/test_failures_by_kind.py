"""Scripted provider failures: ``add_exception(kind=...)`` drives retries and fallbacks for real."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import llm
import pytest
import stamina
from syrupy.assertion import SnapshotAssertion

from datasette_llm import LLM, PromptResult, ProviderError
from datasette_llm.testing import FakeModelRouter
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin

INNER_CONFTEST = """
import pytest
from datasette.app import Datasette

from datasette_llm import LLM


@pytest.fixture
def ask():
    config = {"purposes": {"p": {"model": "gpt-5.4", "fallbacks": ["claude-4.6"]}}}
    datasette = Datasette(memory=True, config={"plugins": {"datasette-llm": config}})

    async def ask(text):
        model = await LLM(datasette).model(purpose="p")
        return await (await model.prompt(text)).text()

    return ask
"""


def purpose(**settings: Any) -> dict[str, Any]:
    """The configuration of purpose ``p``: ``gpt-5.4``, with ``settings`` (fallbacks...)."""
    return {"purposes": {"p": {"model": "gpt-5.4", **settings}}}


WITH_FALLBACK = purpose(fallbacks=["claude-4.6"])


async def ask(make_datasette: MakeDatasette, config: dict[str, Any], text: str = "hi") -> str:
    model = await LLM(make_datasette(config)).model(purpose="p")
    return await (await model.prompt(text)).text()


def routing(router: FakeModelRouter) -> list[tuple[str, str | None, int | None, str | None]]:
    return [(call.model_id, call.step, call.attempt, call.error) for call in router.calls]


class AttemptWatcher:
    """An ``llm_prompt_context`` plugin noting what each attempt's context sees."""

    def __init__(self) -> None:
        self.entered: list[tuple[str, int]] = []
        self.results: list[PromptResult] = []

    @hookimpl
    def llm_prompt_context(self, model_id: str) -> Callable[[PromptResult], Any]:
        def factory(result: PromptResult) -> AbstractAsyncContextManager[None]:
            return self.watch(model_id, result)

        return factory

    @asynccontextmanager
    async def watch(self, model_id: str, result: PromptResult) -> AsyncIterator[None]:
        self.entered.append((model_id, len(result.attempts)))
        self.results.append(result)
        yield


# -- falling back ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_rate_limited_primary_is_answered_by_its_fallback(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(kind="rate_limit", model_id="gpt-5.4")
    fake_model_router.add_response(text="ok", model_id="claude-4.6")
    assert await ask(make_datasette, WITH_FALLBACK) == "ok"
    assert routing(fake_model_router) == [
        ("gpt-5.4", "purpose_config", 1, "rate_limit"),
        ("claude-4.6", "fallback", 2, None),
    ]


@pytest.mark.asyncio
async def test_every_attempt_is_recorded_as_a_call(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette, snapshot: SnapshotAssertion
) -> None:
    fake_model_router.add_exception(kind="rate_limit", model_id="gpt-5.4")
    fake_model_router.add_response(text="ok", model_id="claude-4.6")
    await ask(make_datasette, WITH_FALLBACK, "Summarize this")
    assert fake_model_router.calls == snapshot


@pytest.mark.asyncio
async def test_the_hooks_see_each_attempt_on_one_prompt_result(
    fake_model_router: FakeModelRouter,
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
) -> None:
    watcher = AttemptWatcher()
    register_plugin(watcher)
    fake_model_router.add_exception(kind="server_error", status=503, model_id="gpt-5.4")
    fake_model_router.add_response(text="ok", model_id="claude-4.6")
    await ask(make_datasette, WITH_FALLBACK)
    assert watcher.entered == [("gpt-5.4", 0), ("claude-4.6", 1)]
    first, second = watcher.results
    assert first is second
    assert second.model_id == "claude-4.6"
    assert [(a.model_id, a.number, a.error, a.fell_back_from) for a in second.attempts] == [
        ("gpt-5.4", 1, "server_error", None),
        ("claude-4.6", 2, None, "gpt-5.4"),
    ]
    numbers = [call.attempt for call in fake_model_router.calls]
    assert [second.attempts[n - 1].model_id for n in numbers if n] == ["gpt-5.4", "claude-4.6"]


@pytest.mark.asyncio
async def test_a_kind_outside_fallback_on_is_raised_without_trying_the_fallback(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(kind="auth", model_id="gpt-5.4")
    with pytest.raises(ProviderError) as raised:
        await ask(make_datasette, WITH_FALLBACK)
    assert str(raised.value) == (
        "Model 'gpt-5.4' failed (auth): a failure scripted with FakeModelRouter "
        "(reply 1: add_exception(kind='auth', model_id='gpt-5.4'))"
    )
    assert [(a.model_id, a.error) for a in raised.value.attempts] == [("gpt-5.4", "auth")]
    assert routing(fake_model_router) == [("gpt-5.4", "purpose_config", 1, "auth")]


@pytest.mark.asyncio
async def test_a_purpose_may_fall_back_on_other_kinds(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    config = purpose(fallbacks=["claude-4.6"], fallback_on=["auth"])
    fake_model_router.add_exception(kind="auth", model_id="gpt-5.4")
    fake_model_router.add_response(text="ok", model_id="claude-4.6")
    assert await ask(make_datasette, config) == "ok"


@pytest.mark.asyncio
async def test_a_scripted_failure_with_no_fallback_raises_a_provider_error(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(kind="timeout", status=504, retry_after=1.5)
    with pytest.raises(ProviderError) as raised:
        await ask(make_datasette, purpose())
    error = raised.value
    assert (error.kind, error.model_id, error.status, error.retry_after) == (
        "timeout",
        "gpt-5.4",
        504,
        1.5,
    )
    assert [(a.model_id, a.number, a.error) for a in error.attempts] == [("gpt-5.4", 1, "timeout")]


@pytest.mark.asyncio
async def test_a_reusable_failure_raises_a_new_error_for_each_prompt(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(kind="connection", is_reusable=True)
    errors: list[ProviderError] = []
    for _ in range(2):
        with pytest.raises(ProviderError) as raised:
            await ask(make_datasette, purpose())
        errors.append(raised.value)
    first, second = errors
    assert first is not second
    assert len(first.attempts) == len(second.attempts) == 1


@pytest.mark.asyncio
async def test_an_exception_instance_is_recorded_with_the_kind_routing_gives_it(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(TimeoutError("slow"), model_id="gpt-5.4")
    fake_model_router.add_response(text="ok")
    assert await ask(make_datasette, WITH_FALLBACK) == "ok"
    assert [call.error for call in fake_model_router.calls] == ["timeout", None]


@pytest.mark.asyncio
async def test_get_call_lists_how_each_call_ended(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(kind="rate_limit", model_id="gpt-5.4")
    fake_model_router.add_response(text="ok")
    await ask(make_datasette, WITH_FALLBACK)
    with pytest.raises(AssertionError) as failure:
        fake_model_router.get_call(purpose="p")
    assert str(failure.value) == (
        "Expected exactly one call matching purpose='p', found 2. Calls recorded:\n"
        "  - purpose='p', model_id='gpt-5.4', prompt='hi', error='rate_limit'\n"
        "  - purpose='p', model_id='claude-4.6', prompt='hi'"
    )


@pytest.mark.asyncio
async def test_every_step_of_a_chain_belongs_to_the_attempt_that_answered(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    tool_call = llm.ToolCall(name="add", arguments={"a": 1, "b": 2})
    fake_model_router.add_exception(kind="rate_limit", model_id="gpt-5.4")
    fake_model_router.add_response(tool_calls=[tool_call], model_id="claude-4.6")
    fake_model_router.add_response(text="3", model_id="claude-4.6")
    model = await LLM(make_datasette(WITH_FALLBACK)).model(purpose="p")
    chain = model.chain("Add 1 and 2", tools=[add])
    assert await chain.text() == "3"
    assert routing(fake_model_router) == [
        ("gpt-5.4", "purpose_config", 1, "rate_limit"),
        ("claude-4.6", "fallback", 2, None),
        ("claude-4.6", "fallback", 2, None),
    ]
    assert [(a.model_id, a.error) for a in chain.result.attempts] == [
        ("gpt-5.4", "rate_limit"),
        ("claude-4.6", None),
    ]


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_each_model_is_tried_once_per_prompt_by_default(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(kind="rate_limit", model_id="gpt-5.4", is_reusable=True)
    fake_model_router.add_response(text="ok", model_id="claude-4.6")
    assert await ask(make_datasette, purpose(fallbacks=["claude-4.6"], retries=2)) == "ok"
    assert [call.model_id for call in fake_model_router.calls] == ["gpt-5.4", "claude-4.6"]


@pytest.mark.asyncio
@pytest.mark.fake_model_router(retries=True)
async def test_retries_true_retries_a_model_as_configured_without_waiting(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(
        kind="rate_limit", model_id="gpt-5.4", retry_after=60, is_reusable=True
    )
    fake_model_router.add_response(text="ok", model_id="claude-4.6")
    started = time.monotonic()
    assert await ask(make_datasette, purpose(fallbacks=["claude-4.6"], retries=2)) == "ok"
    assert time.monotonic() - started < 30  # not twice the Retry-After of 60 s
    assert routing(fake_model_router) == [
        ("gpt-5.4", "purpose_config", 1, "rate_limit"),
        ("gpt-5.4", "purpose_config", 2, "rate_limit"),
        ("gpt-5.4", "purpose_config", 3, "rate_limit"),
        ("claude-4.6", "fallback", 4, None),
    ]


@pytest.mark.asyncio
@pytest.mark.fake_model_router(retries=True)
async def test_the_unknown_kind_is_never_retried(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(kind="unknown", model_id="gpt-5.4", is_reusable=True)
    with pytest.raises(ProviderError) as raised:
        await ask(make_datasette, purpose(fallbacks=["claude-4.6"], retries=3))
    assert raised.value.kind == "unknown"
    assert routing(fake_model_router) == [("gpt-5.4", "purpose_config", 1, "unknown")]


@pytest.mark.asyncio
@pytest.mark.fake_model_router(retries=True)
async def test_a_retry_after_past_the_deadline_gives_up_on_the_model_at_once(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(
        kind="rate_limit", model_id="gpt-5.4", retry_after=60, is_reusable=True
    )
    fake_model_router.add_response(text="ok", model_id="claude-4.6")
    config = purpose(fallbacks=["claude-4.6"], retries=2, deadline=30)
    assert await ask(make_datasette, config) == "ok"
    assert routing(fake_model_router) == [
        ("gpt-5.4", "purpose_config", 1, "rate_limit"),
        ("claude-4.6", "fallback", 2, None),
    ]


@pytest.mark.asyncio
async def test_a_rate_limited_model_cools_down_and_the_next_prompt_skips_it(
    fake_model_router: FakeModelRouter,
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
) -> None:
    watcher = AttemptWatcher()
    register_plugin(watcher)
    fake_model_router.add_exception(kind="rate_limit", model_id="gpt-5.4", retry_after=60)
    fake_model_router.add_response(text="ok", model_id="claude-4.6", is_reusable=True)
    model = await LLM(make_datasette(WITH_FALLBACK)).model(purpose="p")
    assert await (await model.prompt("one")).text() == "ok"
    assert await (await model.prompt("two")).text() == "ok"
    assert routing(fake_model_router) == [
        ("gpt-5.4", "purpose_config", 1, "rate_limit"),
        ("claude-4.6", "fallback", 2, None),
        ("claude-4.6", "fallback", 1, None),
    ]
    assert watcher.results[-1].skipped == [
        "'gpt-5.4' deferred: it is cooling down after rate limits"
    ]


def stamina_tries(attempts: int) -> int:
    """Count the tries stamina makes of a block that always fails, allowed ``attempts``."""
    tries = 0
    with contextlib.suppress(ValueError):
        for attempt in stamina.retry_context(on=ValueError, attempts=attempts, timeout=None):
            with attempt:
                tries += 1
                raise ValueError(tries)
    return tries


def test_the_router_turns_on_stamina_test_mode_and_puts_back_the_mode_it_found() -> None:
    assert not stamina.is_testing()
    with FakeModelRouter():
        assert stamina.is_testing()
        assert stamina_tries(10) == 1
    assert not stamina.is_testing()
    with stamina.set_testing(True, attempts=4):  # a test suite's own test mode
        with FakeModelRouter(retries=True):
            assert stamina_tries(10) == 10
        assert stamina_tries(10) == 4
    assert not stamina.is_testing()


# -- what add_exception() accepts --------------------------------------------------------------


def test_add_exception_takes_an_exception_or_a_kind_not_both() -> None:
    router = FakeModelRouter()
    with pytest.raises(TypeError) as both:
        router.add_exception(TimeoutError("slow"), kind="timeout")
    assert str(both.value) == (
        "add_exception() takes an exception or kind=, not both (got TimeoutError('slow') and "
        "kind='timeout'): pass kind= alone for a provider failure of that kind, or the "
        "exception alone to raise it as it is."
    )
    with pytest.raises(TypeError) as neither:
        router.add_exception(model_id="gpt-5.4")
    assert str(neither.value) == (
        "add_exception() needs what to raise: a provider failure of a kind, e.g. "
        "add_exception(kind='rate_limit', model_id='gpt-5.4'), or an exception instance, e.g. "
        "add_exception(TimeoutError('slow')). Error kinds: rate_limit, timeout, server_error, "
        "connection, auth, bad_request, context_window, content_policy, unknown."
    )


def test_a_misspelt_kind_names_the_nearest_one() -> None:
    with pytest.raises(ValueError) as raised:
        FakeModelRouter().add_exception(kind="rate_limited")  # type: ignore[arg-type]  # a typo
    assert str(raised.value) == (
        "Unknown error kind 'rate_limited' — did you mean 'rate_limit'? Error kinds: "
        "rate_limit, timeout, server_error, connection, auth, bad_request, context_window, "
        "content_policy, unknown."
    )


def test_status_and_retry_after_are_checked_and_go_with_kind() -> None:
    router = FakeModelRouter()
    with pytest.raises(TypeError, match=r"^status= and retry_after= go with kind="):
        router.add_exception(RuntimeError("x"), status=429)
    with pytest.raises(TypeError, match=r"^status= must be an HTTP status code such as 429"):
        router.add_exception(kind="rate_limit", status=True)
    with pytest.raises(TypeError, match=r"^retry_after= must be the seconds to wait"):
        router.add_exception(kind="rate_limit", retry_after=-1)
    with pytest.raises(TypeError, match=r"^kind= must be an error kind name"):
        router.add_exception(kind=429)  # type: ignore[arg-type]  # a wrong type
    assert repr(router) == "<FakeModelRouter: 0 calls, no scripted replies>"


# -- in a test session -------------------------------------------------------------------------


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytest project whose tests prompt purpose ``p`` (``gpt-5.4``, then ``claude-4.6``)."""
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makeconftest(INNER_CONFTEST)
    return pytester


def test_a_misspelt_kind_fails_the_test_where_it_was_scripted(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        async def test_typo(fake_model_router, ask):
            fake_model_router.add_exception(kind="rate_limted", model_id="gpt-5.4")
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            '>       fake_model_router.add_exception(kind="rate_limted", model_id="gpt-5.4")',
            "E       ValueError: Unknown error kind 'rate_limted' — did you mean 'rate_limit'? "
            "Error kinds: rate_limit, timeout, server_error, connection, auth, bad_request, "
            "context_window, content_policy, unknown.",
        ],
        consecutive=True,
    )


def test_an_unused_scripted_failure_fails_the_test_at_teardown(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        async def test_fallback(fake_model_router, ask):
            fake_model_router.add_exception(kind="rate_limit", model_id="gpt-5.4")
            fake_model_router.add_response(text="ok")
            fake_model_router.add_exception(kind="timeout", retry_after=2, model_id="claude-4.6")
            assert await ask("hi") == "ok"
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "FakeModelRouter: 1 scripted reply was never used:",
            "  3. add_exception(kind='timeout', retry_after=2.0, model_id='claude-4.6')",
            "Remove it, pass is_optional=True when adding it, or opt out for this test with "
            "@pytest.mark.fake_model_router(assert_all_replies_used=False).",
        ],
        consecutive=True,
    )
