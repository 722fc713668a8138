"""The wrapped model, conversation and chain: llm's objects with datasette-llm's hooks around."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from .contexts import DIDNT_YIELD, generator_function_of, leave_raising, not_stopped, send_within
from .hooks import call_llm_prompt_context
from .results import Group, PromptResult, _on_done

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncConversation, AsyncModel, AsyncResponse
    from llm.models import AsyncChainResponse

    from .hooks import PromptContextFactory
    from .resolver import Resolution
    from .types import Actor

__all__ = ["WrappedAsyncModel", "WrappedChainResponse", "WrappedConversation"]


class _Context:
    """What every wrapped object carries: where prompts go and who they are for."""

    __slots__ = (
        "actor",
        "adds_kwargs",
        "datasette",
        "group",
        "in_flight",
        "key",
        "model_id",
        "options",
        "purpose",
        "resolution",
    )

    def __init__(
        self,
        datasette: Datasette,
        model_id: str,
        purpose: str | None,
        actor: Actor | None,
        key: str | None,
        options: Mapping[str, object],
        group: Group | None,
        resolution: Resolution | None = None,
    ) -> None:
        self.datasette = datasette
        self.model_id = model_id
        self.purpose = purpose
        self.actor = actor
        self.key = key
        self.options = options
        self.group = group
        self.resolution = resolution
        # Whether prompt_kwargs() has anything to add; if not, prompt() skips calling it.
        self.adds_kwargs = bool(options) or key is not None
        # Prompts of a group still running (maybe in other tasks): the group waits for them.
        self.in_flight: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        # Never show the key.
        return f"<context model_id={self.model_id!r} purpose={self.purpose!r}>"

    def prompt_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        merged = {**self.options, **kwargs} if self.options else kwargs
        if self.key is not None and "key" not in merged:
            merged = {**merged, "key": self.key}
        return merged

    def chain_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        merged = kwargs
        if self.options:
            merged = {**kwargs, "options": {**self.options, **(kwargs.get("options") or {})}}
        if self.key is not None and merged.get("key") is None:
            merged = {**merged, "key": self.key}
        return merged

    async def run_in_group(
        self,
        factories: list[PromptContextFactory],
        target: AsyncModel | AsyncConversation,
        prompt: str | None,
        merged: dict[str, Any],
    ) -> AsyncResponse:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.in_flight.add(done)
        try:
            result = PromptResult(self.purpose, self.group, False, self.resolution)
            return _response_of(await send_within(factories, result, target, prompt, merged))
        finally:
            self.in_flight.discard(done)
            done.set_result(None)

    async def wait_in_flight(self) -> None:
        """Wait until every prompt of the group started so far has ended, in whatever task."""
        while self.in_flight:
            await asyncio.wait(list(self.in_flight))

    def run_chain(
        self, target: AsyncModel | AsyncConversation, prompt: str | None, kwargs: dict[str, Any]
    ) -> WrappedChainResponse:
        factories = call_llm_prompt_context(
            self.datasette, self.model_id, prompt or "", self.purpose, self.actor
        )
        chain = target.chain(prompt, **self.chain_kwargs(kwargs))
        result = PromptResult(
            purpose=self.purpose, group=self.group, is_chain=True, resolution=self.resolution
        )
        return WrappedChainResponse(chain, factories, result)


def _response_of(response: AsyncResponse | None) -> AsyncResponse:
    if response is None:
        raise RuntimeError(
            "An llm_prompt_context context manager suppressed the error the prompt raised, so "
            "there is no response to return. Let the error propagate out of the context manager "
            "(re-raise it after handling it)."
        )
    return response


class WrappedChainResponse:
    """llm's ``AsyncChainResponse`` with the ``llm_prompt_context`` hooks around its iteration.

    The hooks' context managers are entered when iteration starts and left after the last
    response (or on error). ``responses()`` may be iterated once. ``text()``, ``async for``
    and ``astream_events()`` go through the same hooks; any other attribute is llm's.
    """

    def __init__(
        self,
        chain: AsyncChainResponse,
        factories: list[PromptContextFactory],
        result: PromptResult,
    ) -> None:
        self._chain = chain
        self._factories = factories
        self._result = result
        self._started = False
        self._inner_responses = chain.responses
        # llm's own text()/__aiter__/astream_events() call self.responses(): route them here.
        chain.responses = self.responses  # type: ignore[method-assign]  # hooks see every step

    @property
    def result(self) -> PromptResult:
        """The ``PromptResult`` the hooks see."""
        return self._result

    async def responses(self) -> AsyncIterator[AsyncResponse]:
        """Yield each raw ``AsyncResponse`` of the chain, hooks entered around the iteration."""
        if self._started:
            raise RuntimeError(
                "Chain responses can only be iterated once: call model.chain() again for a "
                "new chain."
            )
        self._started = True
        try:
            async with AsyncExitStack() as stack:
                for factory in self._factories:
                    await stack.enter_async_context(factory(self._result))
                async for response in self._inner_responses():
                    await self._result._add_response(response)
                    yield response
        finally:
            self._result.chain_complete = True

    def __aiter__(self) -> AsyncIterator[str]:
        """Stream the text of every response of the chain."""
        iterator: AsyncIterator[str] = self._chain.__aiter__()
        return iterator

    async def text(self) -> str:
        """Run the whole chain and return its text."""
        text: str = await self._chain.text()
        return text

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    def __repr__(self) -> str:
        return (
            f"<WrappedChainResponse model_id={self._chain.model.model_id!r} "
            f"purpose={self._result.purpose!r} started={self._started}>"
        )


class _Prompting:
    """``prompt()`` through the hooks: what the wrapped model and conversation share.

    It runs on every prompt, so it is one coroutine with no other in between for the usual
    cases: no hooks, or one hook made with ``@asynccontextmanager``, whose generator it drives
    itself (see ``datasette_llm.contexts``).
    """

    _context: _Context
    _target: AsyncModel | AsyncConversation

    async def prompt(self, prompt: str | None = None, **kwargs: Any) -> AsyncResponse:
        """Run a prompt through the hooks and return llm's response once it has completed.

        ``kwargs`` are passed through to llm's ``prompt()`` of the model or conversation
        (``system=``, ``attachments=``, ``schema=``, ``tools=``, model options...), which is why
        they are typed ``Any``. Configured ``options`` are merged in; the caller's values win.
        """
        context = self._context
        factories = call_llm_prompt_context(
            context.datasette, context.model_id, prompt or "", context.purpose, context.actor
        )
        merged = context.prompt_kwargs(kwargs) if context.adds_kwargs else kwargs
        target = self._target
        if context.group is not None:
            return await context.run_in_group(factories, target, prompt, merged)
        if not factories:
            # Without keyword arguments, a plain call: cheaper than unpacking an empty dict.
            response = target.prompt(prompt, **merged) if merged else target.prompt(prompt)
            await response
            return response
        result = PromptResult(context.purpose, None, False, context.resolution)
        generator_function = generator_function_of(factories[0]) if len(factories) == 1 else None
        if generator_function is None:
            return _response_of(await send_within(factories, result, target, prompt, merged))
        # What ``async with factories[0](result):`` around the prompt does, step by step.
        generator = generator_function(result)
        try:
            await generator.__anext__()
        except StopAsyncIteration:
            raise RuntimeError(DIDNT_YIELD) from None
        try:
            response = target.prompt(prompt, **merged) if merged else target.prompt(prompt)
            await response
            for callback in result._record(response):
                await _on_done(response, callback)
        except BaseException as error:
            if await leave_raising(generator, error):
                return _response_of(None)
            raise
        try:
            await generator.__anext__()
        except StopAsyncIteration:
            return response
        await not_stopped(generator)


class WrappedConversation(_Prompting):
    """llm's ``AsyncConversation``; every ``prompt()`` and ``chain()`` runs the hooks."""

    def __init__(self, conversation: AsyncConversation, context: _Context) -> None:
        self._conversation = conversation
        self._target = conversation
        self._context = context

    @property
    def model_id(self) -> str:
        """The id of the model this conversation talks to."""
        return self._context.model_id

    @property
    def purpose(self) -> str | None:
        """The purpose name, or ``None``."""
        return self._context.purpose

    def chain(self, prompt: str | None = None, **kwargs: Any) -> WrappedChainResponse:
        """Start a tool-calling chain in this conversation.

        ``kwargs`` are passed through to llm's ``AsyncConversation.chain`` (``tools=``,
        ``system=``, ``options=``...), which is why they are typed ``Any``.
        """
        return self._context.run_chain(self._conversation, prompt, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conversation, name)

    def __repr__(self) -> str:
        return f"<WrappedConversation {self._context.model_id!r} purpose={self.purpose!r}>"


class WrappedAsyncModel(_Prompting):
    """An llm async model whose prompts run datasette-llm's hooks.

    Attributes:
        model_id: The id of the model.
        purpose: The purpose name the model was asked for, or ``None``.
        resolution: How routing chose the model.
    """

    def __init__(self, model: AsyncModel, context: _Context, resolution: Resolution) -> None:
        self._model = model
        self._target = model
        self._context = context
        self._resolution = resolution

    @property
    def model_id(self) -> str:
        """The id of the model."""
        return self._model.model_id

    @property
    def purpose(self) -> str | None:
        """The purpose name the model was asked for, or ``None``."""
        return self._context.purpose

    @property
    def resolution(self) -> Resolution:
        """How routing chose this model."""
        return self._resolution

    @property
    def group(self) -> Group | None:
        """The group this model belongs to, inside ``LLM.group()``."""
        return self._context.group

    def conversation(self) -> WrappedConversation:
        """Start a conversation whose every prompt runs the hooks."""
        return WrappedConversation(self._model.conversation(), self._context)

    def chain(self, prompt: str | None = None, **kwargs: Any) -> WrappedChainResponse:
        """Start a tool-calling chain; the hooks wrap its whole iteration.

        ``kwargs`` are passed through to llm's ``AsyncConversation.chain`` (``tools=``,
        ``system=``, ``options=``, ``before_call=``...), which is why they are typed ``Any``.
        """
        return self.conversation().chain(prompt, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<WrappedAsyncModel {self.model_id!r} purpose={self.purpose!r} "
            f"step={self._resolution.step!r}>"
        )


async def finish_responses(responses: list[AsyncResponse]) -> list[BaseException]:
    """Drive every response to completion; return the errors raised on the way."""
    errors: list[BaseException] = []
    index = 0
    while index < len(responses):
        response = responses[index]
        index += 1
        try:
            await response.text()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            errors.append(error)
    return errors
