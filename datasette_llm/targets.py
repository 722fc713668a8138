"""The one prompt path: where a routed model's prompts go, and ``send``, which runs the hooks.

Every prompt, and every reply to a response, takes ``send``: the ``llm_prompt_context`` hooks'
context managers are entered in an ``AsyncExitStack``, the prompt is sent and completed inside
them, and the response is recorded on the ``PromptResult`` they see. The path is the same under
the ``FakeModelRouter``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Final, Protocol

import llm

from ._hooks import call_llm_prompt_context
from .results import Group, PromptResult

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncResponse

    from .actors import Actor
    from .resolution import Resolution
    from .results import PromptContextFactory
    from .routing import Routed

__all__ = ["GROUP_ENDED", "SUPPRESSED", "OpenChain", "Start", "Target", "send"]

SUPPRESSED: Final = (
    "An llm_prompt_context context manager suppressed the error the prompt raised, so there is "
    "no response to return. Let the error propagate out of the context manager (re-raise it "
    "after handling it)."
)
GROUP_ENDED: Final = (
    "This model belongs to a group() block that has ended, so its prompts can no longer be "
    "part of the group. Ask LLM(datasette).model() or .group() for the model again."
)

Start = Callable[..., Awaitable["AsyncResponse"]]
"""``start(prompt, **kwargs)``, awaited, gives llm's response: a model's or conversation's
``prompt`` (its response is awaitable), or llm's ``AsyncResponse.reply`` bound to a response."""


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
    """

    __slots__ = (
        "actor",
        "datasette",
        "ended",
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

    def enlist(self) -> None:
        """Refuse a prompt once the group has ended; count the calling task in the group."""
        if self.ended:
            raise RuntimeError(GROUP_ENDED)
        if self.group is not None:
            task = asyncio.current_task()
            if task is not None:
                self.tasks.add(task)

    def factories(self, prompt: str | None) -> list[PromptContextFactory]:
        """The hooks' context factories for a prompt of this target."""
        self.enlist()
        return call_llm_prompt_context(
            self.datasette, self.model_id, prompt or "", self.purpose, self.actor
        )

    def result(self, is_chain: bool) -> PromptResult:
        return PromptResult(self.purpose, self.group, is_chain, self.resolution)

    def answerable(self, response: AsyncResponse) -> AsyncResponse:
        """Make ``response.reply()`` take ``send`` too, so replies run the hooks and use the key."""
        response.reply = functools.partial(_reply, self, response)  # type: ignore[method-assign]
        return response


async def _reply(
    target: Target, response: AsyncResponse, prompt: str | None = None, **kwargs: Any
) -> AsyncResponse:
    return await send(target, functools.partial(llm.AsyncResponse.reply, response), prompt, kwargs)


async def send(
    target: Target, start: Start, prompt: str | None, kwargs: dict[str, Any]
) -> AsyncResponse:
    """Send one prompt inside the hooks' context managers and return its completed response."""
    factories = target.factories(prompt)
    result = target.result(is_chain=False)
    async with AsyncExitStack() as stack:
        for factory in factories:
            await stack.enter_async_context(factory(result))
        response = await start(prompt, **target.prompt_kwargs(kwargs))
        await response  # a reply starts a response without running it
        await result.add_response(target.answerable(response))
        return response
    raise RuntimeError(SUPPRESSED)
