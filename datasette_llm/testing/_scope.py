"""What the fake model knows of the prompt it answers: purpose, actor, group, resolution step.

The router registers ``ScopePlugin`` with Datasette's plugin manager; its
``llm_prompt_context`` hook sets a context variable around each prompt that the fake model
reads when llm asks it to answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from datasette_llm import Group, PromptResult
from datasette_llm.typing import hookimpl

if TYPE_CHECKING:
    from datasette_llm import Actor, ResolutionStep

__all__ = ["PLUGIN_NAME", "PromptScope", "ScopePlugin", "current_scope"]

PLUGIN_NAME: Final = "datasette-llm-fake-model-router"


@dataclass(frozen=True, slots=True)
class PromptScope:
    """The datasette-llm side of the prompt being answered.

    Attributes:
        purpose: The purpose name, or ``None``.
        actor: The actor, or ``None``.
        group: The ``Group`` of a ``group()`` block, or ``None``.
        step: The resolution step that chose the model (``"fallback"`` for a fallback).
        attempt: The number of the prompt's attempt under way (``Attempt.number``).
    """

    purpose: str | None
    actor: Actor | None
    group: Group | None
    step: ResolutionStep | None
    attempt: int


_current: ContextVar[PromptScope | None] = ContextVar("datasette_llm_fake_scope", default=None)


def current_scope() -> PromptScope | None:
    """Return the scope of the prompt being answered, or ``None`` outside datasette-llm."""
    return _current.get()


@asynccontextmanager
async def _scope(
    model_id: str, purpose: str | None, actor: Actor | None, result: PromptResult
) -> AsyncIterator[None]:
    resolution = result.resolution
    step: ResolutionStep | None = None
    if resolution is not None:
        # The resolution is the routed model's; an attempt on another model is a fallback's.
        step = "fallback" if model_id != resolution.model_id else resolution.step
    # Entered as the attempt starts, when the attempts before it have ended.
    attempt = len(result.attempts) + 1
    token = _current.set(PromptScope(purpose, actor, result.group, step, attempt))
    try:
        yield None
    finally:
        try:
            _current.reset(token)
        except ValueError:  # a chain closed from another context
            _current.set(None)


class ScopePlugin:
    """A Datasette plugin that tells the fake model which prompt it is answering."""

    @hookimpl
    def llm_prompt_context(
        self, model_id: str, purpose: str | None, actor: Actor | None
    ) -> Callable[[PromptResult], AbstractAsyncContextManager[None]]:
        """Return a factory of the context that sets the prompt's scope."""

        def factory(result: PromptResult) -> AbstractAsyncContextManager[None]:
            return _scope(model_id, purpose, actor, result)

        return factory
