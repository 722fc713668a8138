"""What a plugin built on datasette-llm sees: checked by mypy, never run by pytest."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager

import llm
from datasette import hookimpl as datasette_hookimpl
from datasette.app import Database
from datasette_secrets import get_secret
from llm.parts import StreamEvent
from pluggy import HookimplMarker
from typing_extensions import assert_type

from datasette_llm import (
    LLM,
    Attempt,
    Budget,
    BudgetExceededError,
    ErrorKind,
    Group,
    KeyStatus,
    ModelNotFoundError,
    ModelStandIn,
    Outcome,
    PromptResult,
    ProviderError,
    Purpose,
    Requirements,
    Resilience,
    Resolution,
    ResolutionStep,
    UsageRecord,
    WrappedAsyncModel,
    WrappedChainResponse,
    WrappedConversation,
    get_purpose,
    get_purposes,
    hookspecs,
    stand_in_for_models,
)
from datasette_llm.testing import FakeModelRouter
from datasette_llm.typing import (
    Actor,
    Datasette,
    LlmDefaultModelHook,
    LlmDefaultModelResult,
    LlmFilterModelsHook,
    LlmFilterModelsResult,
    LlmGroupExitHook,
    LlmGroupExitResult,
    LlmPromptContextHook,
    LlmPromptContextResult,
    PromptContextFactory,
    RegisterLlmPurposesHook,
    RegisterLlmPurposesResult,
    hookimpl,
)

SUMMARIZE = Purpose(name="summarize", description="Summarize a row", owner="datasette-x")


async def check_llm(datasette: Datasette, actor: Actor | None) -> None:
    client = LLM(datasette)
    assert_type(await client.model(), WrappedAsyncModel)
    assert_type(await client.model("echo"), WrappedAsyncModel)
    assert_type(await client.model(purpose=SUMMARIZE, actor=actor), WrappedAsyncModel)
    assert_type(await client.model(model_id=None, purpose="summarize"), WrappedAsyncModel)
    assert_type(await client.models(actor=actor, purpose="summarize"), list[llm.AsyncModel])
    assert_type(await client.resolve(purpose=SUMMARIZE), Resolution)
    group: AbstractAsyncContextManager[WrappedAsyncModel] = client.group(purpose="summarize")
    async with group as grouped:
        assert_type(grouped, WrappedAsyncModel)
    assert_type(ModelNotFoundError("no model"), ModelNotFoundError)


async def check_wrapped_model(model: WrappedAsyncModel) -> None:
    assert_type(model.model_id, str)
    assert_type(model.purpose, str | None)
    assert_type(model.resolution, Resolution)
    assert_type(model.group, Group | None)
    response = await model.prompt("hi", system="Be brief", temperature=0.2)
    assert_type(response, llm.AsyncResponse)
    assert_type(await response.text(), str)
    assert_type(model.conversation(), WrappedConversation)
    assert_type(await model.conversation().prompt("hi"), llm.AsyncResponse)
    chain = model.chain("hi", tools=[])
    assert_type(chain, WrappedChainResponse)
    assert_type(model.conversation().chain("hi"), WrappedChainResponse)
    assert_type(chain.result, PromptResult)
    assert_type(await chain.text(), str)
    assert_type(chain.astream_events(), AsyncIterator[StreamEvent])
    async for step in chain.responses():
        assert_type(step, llm.AsyncResponse)
    async for text in chain:
        assert_type(text, str)


def check_resolution(resolution: Resolution) -> None:
    assert_type(resolution.model_id, str)
    assert_type(resolution.purpose, str | None)
    assert_type(resolution.step, ResolutionStep)
    assert_type(resolution.key, KeyStatus)
    assert_type(resolution.chosen_by, str | None)
    assert_type(resolution.skipped, tuple[str, ...])


async def check_results(result: PromptResult, group: Group) -> None:
    assert_type(result.response, llm.AsyncResponse | None)
    assert_type(result.responses, list[llm.AsyncResponse])
    assert_type(result.group, Group | None)
    assert_type(result.is_chain, bool)
    assert_type(result.chain_complete, bool)

    async def done(response: llm.AsyncResponse) -> None: ...

    await result.on_response_done(done)
    await result.on_response_done(lambda response: None)
    assert_type(group.model_id, str)
    assert_type(group.purpose, str | None)
    assert_type(group.actor, Actor | None)


def check_purposes(datasette: Datasette) -> None:
    assert_type(SUMMARIZE.name, str)
    assert_type(SUMMARIZE.default_model, str | None)
    assert_type(get_purposes(datasette), list[Purpose])
    assert_type(get_purpose(datasette, "summarize"), Purpose | None)


async def check_datasette_stubs(datasette: Datasette) -> None:
    assert_type(datasette.get_database(), Database)
    assert_type(await get_secret(datasette, "OPENAI_API_KEY"), str | None)
    assert_type(hookimpl, HookimplMarker)
    assert_type(datasette_hookimpl, HookimplMarker)


# Hook implementations, checked against the protocols. Implementations may omit arguments; those
# annotate their return with the ...Result alias instead.
@hookimpl
def register_llm_purposes(datasette: Datasette) -> list[Purpose]:
    return [SUMMARIZE]


@hookimpl
def llm_default_model(datasette: Datasette, purpose: str | None, actor: Actor | None) -> str | None:
    return "echo" if purpose == SUMMARIZE.name else None


@hookimpl
async def llm_filter_models(
    datasette: Datasette, models: list[llm.AsyncModel], actor: Actor | None, purpose: str | None
) -> list[llm.AsyncModel] | None:
    return [model for model in models if model.model_id != "gpt-4"]


@hookimpl
def llm_prompt_context(
    datasette: Datasette, model_id: str, prompt: str, purpose: str | None, actor: Actor | None
) -> PromptContextFactory | None:
    @asynccontextmanager
    async def around(result: PromptResult) -> AsyncIterator[None]:
        yield

    return around


@hookimpl
def llm_group_exit(datasette: Datasette, group: Group) -> Awaitable[None] | None:
    return None


@hookimpl
def llm_default_model_for_purpose_only(purpose: str | None) -> LlmDefaultModelResult:
    return None


_purposes: RegisterLlmPurposesHook = register_llm_purposes
_default: LlmDefaultModelHook = llm_default_model
_filter: LlmFilterModelsHook = llm_filter_models
_context: LlmPromptContextHook = llm_prompt_context
_exit: LlmGroupExitHook = llm_group_exit

# Our own hookspecs match the protocols dependents check against.
_spec_purposes: RegisterLlmPurposesHook = hookspecs.register_llm_purposes
_spec_default: LlmDefaultModelHook = hookspecs.llm_default_model
_spec_filter: LlmFilterModelsHook = hookspecs.llm_filter_models
_spec_context: LlmPromptContextHook = hookspecs.llm_prompt_context
_spec_exit: LlmGroupExitHook = hookspecs.llm_group_exit


def check_result_aliases(
    purposes: RegisterLlmPurposesResult,
    default: LlmDefaultModelResult,
    filtered: LlmFilterModelsResult,
    context: LlmPromptContextResult,
    exit_: LlmGroupExitResult,
) -> None:
    assert_type(purposes, Sequence[Purpose] | None)
    assert_type(default, str | Awaitable[str | None] | None)
    assert_type(filtered, list[llm.AsyncModel] | Awaitable[list[llm.AsyncModel] | None] | None)
    assert_type(context, PromptContextFactory | None)
    assert_type(exit_, Awaitable[None] | None)


async def check_resilience(datasette: Datasette, result: PromptResult) -> None:
    tools = Requirements(tools=True, attachment_types=frozenset({"image/*"}))
    agent = Purpose(name="agent", requires=tools)
    model = await LLM(datasette).model(purpose=agent, requires=Requirements(schema=True))
    assert_type(model.resolution.fallbacks, tuple[str, ...])
    assert_type(await LLM(datasette).models(purpose=agent, requires=tools), list[llm.AsyncModel])
    assert_type(result.attempts, list[Attempt])
    assert_type(result.model_id, str | None)
    assert_type(result.skipped, list[str])
    try:
        await model.prompt("hi")
    except ProviderError as error:
        assert_type(error.kind, ErrorKind)
        assert_type(error.attempts, tuple[Attempt, ...])
        assert_type(error.retry_after, float | None)
        for attempt in error.attempts:
            assert_type(attempt.error, ErrorKind | None)
            assert_type(attempt.duration, float)
    settings = LLM(datasette).config.resilience_for("agent")
    assert_type(settings, Resilience)
    assert_type(settings.fallback_on, tuple[ErrorKind, ...])


def check_model_stand_in(echo: llm.AsyncModel) -> None:
    def stand_in(name: str, installed: llm.AsyncModel | None, /) -> llm.AsyncModel | None:
        return installed or echo

    typed: ModelStandIn = stand_in
    switch: AbstractContextManager[None] = stand_in_for_models(typed)
    with switch:
        pass


def check_fake_router_failures(router: FakeModelRouter) -> None:
    router.add_exception(kind="rate_limit", model_id="gpt-5.4", retry_after=2.0)
    router.add_exception(TimeoutError("slow"), purpose="summaries")
    for call in router.calls:
        assert_type(call.error, ErrorKind | None)
        assert_type(call.attempt, int | None)


async def check_usage(datasette: Datasette, result: PromptResult) -> None:
    def total(record: UsageRecord) -> None:
        assert_type(record.cost, float | None)
        assert_type(record.outcome, Outcome)

    stop = LLM(datasette).on_usage(total)
    stop()
    records = await LLM(datasette).usage_records(since=0.0, purpose="enrichments")
    assert_type(records, list[UsageRecord])
    assert_type(result.usage, list[UsageRecord])
    try:
        await (await LLM(datasette).model(purpose="enrichments")).prompt("hi")
    except BudgetExceededError as error:
        assert_type(error.spent, float)
        assert_type(error.budget, Budget)
