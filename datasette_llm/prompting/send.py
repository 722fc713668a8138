"""The one prompt path: where a routed model's prompts go, and ``send``, which runs the hooks.

Every prompt, and every reply to a response, takes ``send``, once per attempt
(``datasette_llm.attempts``: retries and fallbacks): the ``llm_prompt_context`` hooks' context
managers are entered in an ``AsyncExitStack``, the prompt is sent and completed inside them, and
the response is recorded on the ``PromptResult`` they see. The path is the same under the
``FakeModelRouter``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Final, Protocol

import llm

from ..log import logger
from ..provider_errors import ProviderError, classify
from .attempts import Settle, run_attempts, within
from .clients import one_attempt
from .hooks import call_llm_prompt_context
from .metering import Meter, Received, Started
from .results import Group, PromptResult

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncConversation, AsyncModel, AsyncResponse

    from ..actors import Actor
    from ..routing.route import Resolution, Routed
    from .results import PromptContextFactory

__all__ = [
    "GROUP_ENDED",
    "SUPPRESSED",
    "OpenChain",
    "Sender",
    "Target",
    "in_conversation",
    "prompt_model",
    "send",
]

SUPPRESSED: Final = (
    "An llm_prompt_context context manager suppressed the error the prompt raised, so there is "
    "no response to return. Let the error propagate out of the context manager (re-raise it "
    "after handling it)."
)
GROUP_ENDED: Final = (
    "This model belongs to a group() block that has ended, so its prompts can no longer be "
    "part of the group. Ask LLM(datasette).model() or .group() for the model again."
)


class Sender(Protocol):
    """Start a prompt on ``model``: llm's response, not yet run.

    The model's ``prompt``, a conversation's (on another model, a copy of the conversation
    sharing its history), or a reply to an earlier response.
    """

    async def __call__(
        self, model: AsyncModel, prompt: str | None, kwargs: dict[str, Any]
    ) -> AsyncResponse: ...


class OpenChain(Protocol):
    """A chain whose iteration has begun and not ended."""

    async def abandon(self, error: BaseException | None) -> None:
        """End the iteration: the hooks' contexts exit with ``error`` (else ``GeneratorExit``)."""


class Target:
    """Where the prompts of one routed model go, who they are for, and their group.

    Attributes:
        tasks: The tasks that started prompts or chains of the group: the group's end waits
            for them (all but its own).
        open_chains: The iterations of the group's chains that have not ended yet.
        finishing: Responses the group's chains left part way, each read to its end in a
            task of its own that holds the response's place under the model's limits until
            then; the task's result is the error that ended it, if any (``finish_later``).
    """

    __slots__ = (
        "actor",
        "datasette",
        "ended",
        "finishing",
        "group",
        "model_id",
        "open_chains",
        "purpose",
        "resolution",
        "routed",
        "tasks",
    )

    def __init__(
        self, datasette: Datasette, routed: Routed, actor: Actor | None, group: Group | None
    ) -> None:
        self.datasette = datasette
        self.routed = routed
        self.resolution: Resolution = routed.resolution
        self.model_id: str = routed.resolution.model_id
        self.purpose: str | None = routed.resolution.purpose
        self.actor = actor
        self.group = group
        self.ended = False
        self.tasks: set[asyncio.Task[object]] = set()
        self.open_chains: set[OpenChain] = set()
        self.finishing: dict[AsyncResponse, asyncio.Task[Exception | None]] = {}

    def __repr__(self) -> str:
        # Never show the key.
        return f"<target model_id={self.model_id!r} purpose={self.purpose!r}>"

    def prompt_kwargs(self, kwargs: dict[str, Any], routed: Routed | None = None) -> dict[str, Any]:
        """Configured options under the caller's keyword arguments, plus the routed key.

        ``routed``: the model of this attempt (a fallback's own key and options), else the
        target's.
        """
        routed = routed or self.routed
        if routed.key is None and not routed.reference.options:
            return kwargs
        merged = {**routed.reference.options, **kwargs}
        if routed.key is not None and merged.get("key") is None:
            merged["key"] = routed.key
        return merged

    def chain_kwargs(self, kwargs: dict[str, Any], routed: Routed | None = None) -> dict[str, Any]:
        """The same for ``chain()``, whose model options go in one ``options=`` mapping."""
        routed = routed or self.routed
        merged = dict(kwargs)
        options = routed.reference.options
        if options:
            merged["options"] = {**options, **(kwargs.get("options") or {})}
        if routed.key is not None and merged.get("key") is None:
            merged["key"] = routed.key
        return merged

    def finish_later(
        self,
        response: AsyncResponse,
        release: Callable[[], None],
        ended: Callable[[BaseException | None], Awaitable[None]],
    ) -> None:
        """Read ``response``, which a chain of the group left part way, to its end now, in a
        task of its own that gives back its place (``release``) once it has ended, and then
        calls ``ended`` with its error (``None``: answered): the group finishes every response,
        and the place is held while the request runs."""
        reading = _read_to_end(response, release, ended)
        task = asyncio.get_running_loop().create_task(reading)
        self.finishing[response] = task

    def enlist(self) -> None:
        """Refuse a prompt once the group has ended; count the calling task in the group."""
        if self.ended:
            raise RuntimeError(GROUP_ENDED)
        if self.group is not None:
            task = asyncio.current_task()
            if task is not None:
                self.tasks.add(task)

    def factories(
        self, prompt: str | None, model_id: str | None = None
    ) -> list[PromptContextFactory]:
        """The hooks' context factories for a prompt of this target (to ``model_id``, if not
        the target's own model)."""
        self.enlist()
        return call_llm_prompt_context(
            self.datasette, model_id or self.model_id, prompt or "", self.purpose, self.actor
        )

    def result(self, is_chain: bool) -> PromptResult:
        return PromptResult(self.purpose, self.group, is_chain, self.resolution)

    def answerable(self, response: AsyncResponse) -> AsyncResponse:
        """Make ``response.reply()`` take ``send`` too, so replies run the hooks and use the key."""
        response.reply = _Replier(self, response)  # type: ignore[method-assign]
        return response


async def _read_to_end(
    response: AsyncResponse,
    release: Callable[[], None],
    ended: Callable[[BaseException | None], Awaitable[None]],
) -> Exception | None:
    try:
        await response.text()
    except BaseException as error:
        release()
        await _tell_ended(ended, error)
        if isinstance(error, Exception):
            return error
        raise
    release()
    await _tell_ended(ended, None)
    return None


async def _tell_ended(
    ended: Callable[[BaseException | None], Awaitable[None]], error: BaseException | None
) -> None:
    try:
        await ended(error)
    except Exception:  # recording it failed: the group goes on
        logger.exception("datasette-llm: recording a response a group read to its end failed")


async def prompt_model(
    model: AsyncModel, prompt: str | None, kwargs: dict[str, Any]
) -> AsyncResponse:
    """Start ``prompt`` on ``model`` (a ``Sender``)."""
    return model.prompt(prompt, **kwargs)


def in_conversation(conversation: AsyncConversation) -> Sender:
    """A ``Sender`` for ``conversation``: on another model, a copy sharing its history."""

    async def start(model: AsyncModel, prompt: str | None, kwargs: dict[str, Any]) -> AsyncResponse:
        if model is conversation.model:
            return conversation.prompt(prompt, **kwargs)
        return dataclasses.replace(conversation, model=model).prompt(prompt, **kwargs)

    return start


class _Reply:
    """A ``Sender`` for a reply to ``response``: its pending tool calls run once, before any
    attempt (``run_tools``); llm builds the reply's messages once, and each attempt sends them
    to its model with that model's options.

    ``asked``: the caller's keyword arguments of the reply (without the configured options of
    any model: a reply to a fallback's response is built on the fallback).
    """

    __slots__ = ("_asked", "_first", "_response", "_tool_results")

    def __init__(self, response: AsyncResponse, asked: dict[str, Any]) -> None:
        self._response = response
        self._asked = asked
        self._first: AsyncResponse | None = None
        self._tool_results: list[llm.ToolResult] | None = None

    async def run_tools(self) -> None:
        """Run the response's pending tool calls (once, before the attempts: outside any
        place under a model's limits, within the prompt's deadline)."""
        asked = self._asked
        if "tool_results" in asked or not await self._response.tool_calls():
            return
        tools = asked.get("tools")
        self._tool_results = await self._response.execute_tool_calls(tools=tools)

    async def __call__(
        self, model: AsyncModel, prompt: str | None, kwargs: dict[str, Any]
    ) -> AsyncResponse:
        response = self._response
        if "tools" not in kwargs and response.prompt.tools:
            kwargs = {**kwargs, "tools": response.prompt.tools}
        if self._first is None:
            # Built on the model that gave the response: with this attempt's options when it
            # is that model, else with the caller's alone (another model's are not its own).
            built = kwargs if model is response.model else dict(self._asked)
            if self._tool_results is not None:
                built = {**built, "tool_results": self._tool_results}
            self._first = await llm.AsyncResponse.reply(response, prompt, **built)
            if model is response.model:
                return self._first
        kwargs = {key: value for key, value in kwargs.items() if key != "tool_results"}
        return model.prompt(messages=self._first.prompt.messages, **kwargs)


class _Replier:
    """``response.reply`` of a response of ours: a reply through ``send``. It holds the
    response weakly, so the response and its ``reply`` make no reference cycle (every
    response would otherwise wait for the garbage collector)."""

    __slots__ = ("_response", "_target")

    def __init__(self, target: Target, response: AsyncResponse) -> None:
        self._target = target
        self._response = weakref.ref(response)

    async def __call__(self, prompt: str | None = None, **kwargs: Any) -> AsyncResponse:
        response = self._response()
        if response is None:
            raise RuntimeError(
                "reply() of a response that no longer exists: call it as response.reply(...)"
            )
        return await _reply(self._target, response, prompt, **kwargs)


async def _reply(
    target: Target, response: AsyncResponse, prompt: str | None = None, **kwargs: Any
) -> AsyncResponse:
    sender = _Reply(response, kwargs)
    return await send(target, sender, prompt, kwargs, before=sender.run_tools)


async def _complete(response: AsyncResponse, received: Received) -> float | None:
    """Run ``response`` to its end, counting what it receives; return when its first chunk
    came (``time.monotonic()``)."""
    received.sent = True
    async for _ in response:
        received.chunk()
    return received.first


async def _attempt(
    target: Target,
    routed: Routed,
    sender: Sender,
    prompt: str | None,
    kwargs: dict[str, Any],
    meter: Meter,
    timeout: float | None,
    started: Started,
    settle: Settle,
) -> AsyncResponse:
    """Send the prompt to ``routed`` once, inside the hooks' context managers.

    The hooks see the provider's own exception, and the attempt settled (in ``result.attempts``
    and ``result.usage``); the caller gets the exception as a ``ProviderError``.
    """
    model_id = routed.resolution.model_id
    factories = target.factories(prompt, model_id)
    failure: BaseException | None = None
    provider_error: ProviderError | None = None
    try:
        async with AsyncExitStack() as stack:
            for factory in factories:
                await stack.enter_async_context(factory(meter.result))
            response = await sender(routed.model, prompt, target.prompt_kwargs(kwargs, routed))
            try:
                with one_attempt(timeout) as attempt:
                    attempt.watch(started.received, routed.model)  # counts its requests
                    first_token = await within(_complete(response, started.received), timeout)
            except Exception as error:
                failure = error
                provider_error = classify(error, model_id, routed.resolution.key.described())
                await settle(provider_error)
                raise
            # Recorded before anything is awaited: a cancellation now cannot lose the row.
            await meter.response(routed, response, started, first_token)
            await meter.result.add_response(target.answerable(response))
            await settle(None)
            return response
    except Exception as error:
        if error is not failure or provider_error is None or provider_error is error:
            raise
        failure = None  # the provider's own error stays out of the traceback's variables
        raise provider_error from provider_error.__cause__  # the provider's error, redacted
    raise RuntimeError(SUPPRESSED)


async def send(
    target: Target,
    sender: Sender,
    prompt: str | None,
    kwargs: dict[str, Any],
    *,
    before: Callable[[], Awaitable[None]] | None = None,
) -> AsyncResponse:
    """Send one prompt, retrying and falling back as configured; return its completed response.

    ``before``: what runs once the prompt is admitted under its budget, before any attempt,
    within its deadline (a reply's pending tool calls: ``run_attempts``).

    Raises:
        ProviderError: Every attempt failed (``attempts`` lists them).
    """
    target.enlist()
    result = target.result(is_chain=False)
    meter = Meter(
        target.datasette, target.routed, target.actor, result, prompt=prompt, options=kwargs
    )

    async def once(
        routed: Routed, timeout: float | None, started: Started, settle: Settle
    ) -> AsyncResponse:
        return await _attempt(
            target, routed, sender, prompt, kwargs, meter, timeout, started, settle
        )

    return await run_attempts(meter, once, before=before)
