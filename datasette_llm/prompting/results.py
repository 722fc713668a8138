"""What hooks see of a prompt: ``PromptResult`` for one prompt or chain, ``Group`` for a batch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias, cast

from ..actors import Actor

if TYPE_CHECKING:
    from llm import AsyncResponse

    from ..provider_errors import Attempt
    from ..routing.route import Resolution
    from ..usage.records import UsageRecord

__all__ = ["Group", "PromptContextFactory", "PromptResult", "ResponseDoneCallback"]

ResponseDoneCallback: TypeAlias = Callable[["AsyncResponse"], "Awaitable[None] | None"]
"""A callback run by llm when a response completes; it may be sync or async."""


@dataclass(frozen=True, slots=True, eq=False)
class Group:
    """A batch of related prompts made inside one ``async with LLM(ds).group(...)`` block.

    The same object is handed to every prompt of the block (``PromptResult.group``) and to
    ``llm_group_exit``, so plugins may key state by ``id(group)``. Equality is identity.

    Attributes:
        model_id: The model every prompt of the group uses.
        purpose: The purpose name, or ``None``.
        actor: The actor the group runs for, or ``None``.
    """

    model_id: str
    purpose: str | None = None
    actor: Actor | None = None
    _responses: list[AsyncResponse] = field(default_factory=list, repr=False)

    @property
    def responses(self) -> tuple[AsyncResponse, ...]:
        """Every response started inside the group so far."""
        return tuple(self._responses)


class PromptResult:
    """What an ``llm_prompt_context`` context manager sees of the prompt it wraps.

    The object is created before the prompt runs and filled in as responses arrive.

    Attributes:
        response: The first response, or ``None`` before it exists.
        responses: Every response so far (a chain adds one per step).
        purpose: The purpose name, or ``None``.
        group: The ``Group`` this prompt belongs to, or ``None``.
        is_chain: Whether this wraps a ``chain()`` rather than one ``prompt()``.
        chain_complete: For a chain, whether its iteration has ended (after its last response,
            or on an error); the hooks' contexts see it set when they exit.
        resolution: How routing chose the model (never holds a key), when known.
        model_id: The model of the attempt under way; once the prompt has an answer, the model
            that gave it (which is a fallback when the routed model failed).
        attempts: Every finished attempt of the prompt, in order: model, duration, error kind.
        skipped: The fallbacks not tried, each with the reason (blocked, keyless, cooling...).
        usage: The usage record of each attempt so far (a response once it has completed, or a
            failure), as the ledger keeps it.
    """

    __slots__ = (
        "_callbacks",
        "attempts",
        "chain_complete",
        "group",
        "is_chain",
        "model_id",
        "purpose",
        "resolution",
        "response",
        "responses",
        "skipped",
        "usage",
    )

    def __init__(
        self,
        purpose: str | None = None,
        group: Group | None = None,
        is_chain: bool = False,
        resolution: Resolution | None = None,
    ) -> None:
        self.response: AsyncResponse | None = None
        self.responses: list[AsyncResponse] = []
        self.purpose = purpose
        self.group = group
        self.is_chain = is_chain
        self.chain_complete = False
        self.resolution = resolution
        self.model_id: str | None = resolution.model_id if resolution is not None else None
        self.attempts: list[Attempt] = []
        self.skipped: list[str] = []
        self.usage: list[UsageRecord] = []
        self._callbacks: list[ResponseDoneCallback] = []

    def __repr__(self) -> str:
        return (
            f"PromptResult(purpose={self.purpose!r}, model_id={self.model_id!r}, "
            f"attempts={len(self.attempts)}, responses={len(self.responses)}, "
            f"is_chain={self.is_chain}, chain_complete={self.chain_complete}, "
            f"grouped={self.group is not None})"
        )

    async def on_response_done(self, callback: ResponseDoneCallback) -> None:
        """Run ``callback(response)`` when each response completes, including later chain steps."""
        self._callbacks.append(callback)
        for response in self.responses:
            await _on_done(response, callback)

    async def add_response(self, response: AsyncResponse) -> None:
        """Record a response of this prompt (and of its group); datasette-llm calls this."""
        if self.response is None:
            self.response = response
        self.responses.append(response)
        if self.group is not None:
            self.group._responses.append(response)
        for callback in self._callbacks:
            await _on_done(response, callback)

    def withdraw_responses(self, last_only: bool = False) -> None:
        """Forget the responses of a failed attempt, the group's copies too: all of them, or
        the last (a chain going on from its failed step); datasette-llm calls this."""
        withdrawn = self.responses[-1:] if last_only else list(self.responses)
        failed = {id(response) for response in withdrawn}
        del self.responses[len(self.responses) - len(withdrawn) :]
        self.response = self.responses[0] if self.responses else None
        if self.group is not None:
            kept = [r for r in self.group._responses if id(r) not in failed]
            self.group._responses[:] = kept


async def _on_done(response: AsyncResponse, callback: ResponseDoneCallback) -> None:
    # llm does not annotate AsyncResponse.on_done.
    register = cast("Callable[[ResponseDoneCallback], Awaitable[None]]", response.on_done)
    await register(callback)


PromptContextFactory: TypeAlias = Callable[[PromptResult], AbstractAsyncContextManager[object]]
"""What an ``llm_prompt_context`` implementation returns: called with the ``PromptResult``, it
gives the async context manager entered around the prompt."""
