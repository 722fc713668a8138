"""The wrapped model, conversation, chain and group: llm's objects with the hooks around them.

Every prompt takes one path, ``_send``: the ``llm_prompt_context`` hooks' context managers are
entered in an ``AsyncExitStack``, the prompt is sent and completed inside them, and the response
is recorded on the ``PromptResult`` they see. A chain enters the same stack around its whole
iteration. The path is the same under the ``FakeModelRouter``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Final

from ._hooks import call_llm_group_exit, call_llm_prompt_context
from .results import Group, PromptResult

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncConversation, AsyncModel, AsyncResponse
    from llm.models import AsyncChainResponse

    from .actors import Actor
    from .resolution import Resolution
    from .results import PromptContextFactory
    from .routing import Routed

__all__ = [
    "WrappedAsyncModel",
    "WrappedChainResponse",
    "WrappedConversation",
    "open_group",
    "wrap",
]

logger = logging.getLogger("datasette_llm")

SUPPRESSED: Final = (
    "An llm_prompt_context context manager suppressed the error the prompt raised, so there is "
    "no response to return. Let the error propagate out of the context manager (re-raise it "
    "after handling it)."
)
GROUP_ENDED: Final = (
    "This model belongs to a group() block that has ended, so its prompts can no longer be "
    "part of the group. Ask LLM(datasette).model() or .group() for the model again."
)


class _Target:
    """Where the prompts of one routed model go, who they are for, and their group."""

    __slots__ = (
        "actor",
        "datasette",
        "ended",
        "group",
        "in_flight",
        "model_id",
        "purpose",
        "resolution",
        "routed",
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
        # Prompts of the group still running, maybe in other tasks: the group waits for them.
        self.in_flight: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        # Never show the key.
        return f"<target model_id={self.model_id!r} purpose={self.purpose!r}>"

    def prompt_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Configured options under the caller's keyword arguments, plus the routed key."""
        if self.routed.key is None and not self.routed.reference.options:
            return kwargs
        merged = {**self.routed.reference.options, **kwargs}
        if self.routed.key is not None and merged.get("key") is None:
            merged["key"] = self.routed.key
        return merged

    def chain_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The same for ``chain()``, whose model options go in one ``options=`` mapping."""
        merged = dict(kwargs)
        options = self.routed.reference.options
        if options:
            merged["options"] = {**options, **(kwargs.get("options") or {})}
        if self.routed.key is not None and merged.get("key") is None:
            merged["key"] = self.routed.key
        return merged

    def factories(self, prompt: str | None) -> list[PromptContextFactory]:
        if self.ended:
            raise RuntimeError(GROUP_ENDED)
        return call_llm_prompt_context(
            self.datasette, self.model_id, prompt or "", self.purpose, self.actor
        )

    def result(self, is_chain: bool) -> PromptResult:
        return PromptResult(self.purpose, self.group, is_chain, self.resolution)

    def running(self) -> AbstractContextManager[object]:
        """Count a prompt of the group as running until it ends, in whatever task."""
        return nullcontext() if self.group is None else _InFlight(self.in_flight)


class _InFlight:
    """A prompt of a group, counted among the group's running prompts while the block lasts."""

    __slots__ = ("done", "running")

    def __init__(self, running: set[asyncio.Future[None]]) -> None:
        self.running = running
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __enter__(self) -> None:
        self.running.add(self.done)

    def __exit__(self, *exc_info: object) -> None:
        self.running.discard(self.done)
        self.done.set_result(None)


async def _send(
    target: _Target,
    sender: AsyncModel | AsyncConversation,
    prompt: str | None,
    kwargs: dict[str, Any],
) -> AsyncResponse:
    """Send one prompt inside the hooks' context managers and return its completed response."""
    factories = target.factories(prompt)
    result = target.result(is_chain=False)
    with target.running():
        async with AsyncExitStack() as stack:
            for factory in factories:
                await stack.enter_async_context(factory(result))
            response = sender.prompt(prompt, **target.prompt_kwargs(kwargs))
            await response
            await result.add_response(response)
            return response
    raise RuntimeError(SUPPRESSED)


class WrappedChainResponse:
    """llm's ``AsyncChainResponse`` with the ``llm_prompt_context`` hooks around its iteration.

    The hooks' context managers are entered when iteration starts and left after the last
    response (or on error). ``responses()`` may be iterated once. ``text()``, ``async for``
    and ``astream_events()`` go through the same hooks; any other attribute is llm's.
    """

    def __init__(self, target: _Target, chain: AsyncChainResponse, prompt: str | None) -> None:
        self._target = target
        self._chain = chain
        self._factories = target.factories(prompt)
        self._result = target.result(is_chain=True)
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
        with self._target.running():
            async with AsyncExitStack() as stack:
                for factory in self._factories:
                    await stack.enter_async_context(factory(self._result))
                try:
                    async for response in self._inner_responses():
                        await self._result.add_response(response)
                        yield response
                finally:
                    # Before the hooks' contexts exit, so they see it.
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
            f"<WrappedChainResponse model_id={self._target.model_id!r} "
            f"purpose={self._target.purpose!r} started={self._started}>"
        )


class _Prompting:
    """What the wrapped model and the wrapped conversation share: where prompts go."""

    _target: _Target
    _sender: AsyncModel | AsyncConversation

    @property
    def model_id(self) -> str:
        """The id of the model."""
        return self._target.model_id

    @property
    def purpose(self) -> str | None:
        """The purpose name the model was asked for, or ``None``."""
        return self._target.purpose

    @property
    def resolution(self) -> Resolution:
        """How routing chose the model."""
        return self._target.resolution

    @property
    def group(self) -> Group | None:
        """The ``Group`` the prompts belong to, inside ``LLM.group()``; else ``None``."""
        return self._target.group

    async def prompt(self, prompt: str | None = None, **kwargs: Any) -> AsyncResponse:
        """Run a prompt through the hooks and return llm's response once it has completed.

        ``kwargs`` are passed through to llm's ``prompt()`` of the model or conversation
        (``system=``, ``attachments=``, ``schema=``, ``tools=``, model options...), which is why
        they are typed ``Any``. Configured ``options`` are merged in; the caller's values win.
        """
        return await _send(self._target, self._sender, prompt, kwargs)


class WrappedConversation(_Prompting):
    """llm's ``AsyncConversation``; every ``prompt()`` and ``chain()`` runs the hooks.

    Attributes:
        model_id: The id of the model this conversation talks to.
        purpose: The purpose name, or ``None``.
        resolution: How routing chose the model.
        group: The ``Group`` its prompts belong to, inside ``LLM.group()``.
    """

    def __init__(self, target: _Target, conversation: AsyncConversation) -> None:
        self._target = target
        self._sender = self._conversation = conversation

    def chain(self, prompt: str | None = None, **kwargs: Any) -> WrappedChainResponse:
        """Start a tool-calling chain in this conversation; the hooks wrap its iteration.

        ``kwargs`` are passed through to llm's ``AsyncConversation.chain`` (``tools=``,
        ``system=``, ``options=``, ``before_call=``...), which is why they are typed ``Any``.
        """
        chain = self._conversation.chain(prompt, **self._target.chain_kwargs(kwargs))
        return WrappedChainResponse(self._target, chain, prompt)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conversation, name)

    def __repr__(self) -> str:
        return f"<WrappedConversation {self.model_id!r} purpose={self.purpose!r}>"


class WrappedAsyncModel(_Prompting):
    """An llm async model whose prompts run datasette-llm's hooks.

    Attributes:
        model_id: The id of the model.
        purpose: The purpose name the model was asked for, or ``None``.
        resolution: How routing chose the model.
        group: The ``Group`` its prompts belong to, inside ``LLM.group()``.
    """

    def __init__(self, target: _Target) -> None:
        self._target = target
        # Third-party code reads getattr(model, "_model", model) to reach llm's model.
        self._sender = self._model = target.routed.model

    def conversation(self) -> WrappedConversation:
        """Start a conversation whose every prompt runs the hooks."""
        return WrappedConversation(self._target, self._model.conversation())

    def chain(self, prompt: str | None = None, **kwargs: Any) -> WrappedChainResponse:
        """Start a tool-calling chain; the hooks wrap its whole iteration.

        ``kwargs`` are passed through to llm's ``AsyncConversation.chain`` (``tools=``,
        ``system=``, ``options=``, ``before_call=``...), which is why they are typed ``Any``.
        """
        return self.conversation().chain(prompt, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<WrappedAsyncModel {self.model_id!r} purpose={self.purpose!r} "
            f"step={self.resolution.step!r}>"
        )


def wrap(datasette: Datasette, routed: Routed, actor: Actor | None) -> WrappedAsyncModel:
    """Wrap the model routing chose, so its prompts run the hooks."""
    return WrappedAsyncModel(_Target(datasette, routed, actor, None))


@asynccontextmanager
async def open_group(
    datasette: Datasette, routed: Routed, actor: Actor | None
) -> AsyncIterator[WrappedAsyncModel]:
    """Yield a model whose prompts form one ``Group``; finish them all, then ``llm_group_exit``.

    On exit, also after an exception in the block: prompts still running in other tasks are
    awaited, every response is driven to completion, then ``llm_group_exit`` runs once. The
    block's own exception wins over a failing ``llm_group_exit`` (which is logged).
    """
    resolution = routed.resolution
    target = _Target(
        datasette, routed, actor, Group(resolution.model_id, resolution.purpose, actor)
    )
    try:
        yield WrappedAsyncModel(target)
    except BaseException:
        await _end_group(target, block_failed=True)
        raise
    await _end_group(target, block_failed=False)


async def _end_group(target: _Target, block_failed: bool) -> None:
    group = target.group
    assert group is not None
    try:
        await _wait_in_flight(target)
        errors = await _finish(group)
    except BaseException:
        await _group_exit(target, group, quiet=True)
        raise
    for error in errors:
        logger.warning(
            "A response in group (model %r, purpose %r) failed while being finished: %r",
            group.model_id,
            group.purpose,
            error,
        )
    await _group_exit(target, group, quiet=block_failed)


async def _wait_in_flight(target: _Target) -> None:
    """Wait until every prompt the group started has ended, in whatever task.

    Tasks created in the block (``asyncio.create_task(model.prompt(...))``) start on the next
    turn of the event loop: give them that turn, so their prompts are counted too.
    """
    await asyncio.sleep(0)
    while target.in_flight:
        await asyncio.wait(list(target.in_flight))
        await asyncio.sleep(0)


async def _finish(group: Group) -> list[Exception]:
    """Drive every response of the group to completion; return the errors raised on the way."""
    errors: list[Exception] = []
    index = 0
    while index < len(group.responses):  # finishing a chain step may add the next one
        response = group.responses[index]
        index += 1
        try:
            await response.text()
        except Exception as error:
            errors.append(error)
    return errors


async def _group_exit(target: _Target, group: Group, quiet: bool) -> None:
    target.ended = True
    try:
        await call_llm_group_exit(target.datasette, group)
    except Exception:
        if not quiet:
            raise
        # Logged by call_llm_group_exit; the exception already on its way out wins.
