"""Typed names for plugins built on datasette-llm: ``hookimpl``, ``Datasette`` and our hooks' types.

Datasette ships no type information, so under ``mypy --strict`` its own ``hookimpl`` is an
untyped decorator. Import these instead::

    from datasette_llm.typing import Datasette, hookimpl

Each datasette-llm hook has a ``...Result`` alias (what an implementation may return) and a
``...Hook`` protocol (the full signature). Annotate an implementation's return with the alias,
or check an implementation that takes every argument against the protocol::

    @hookimpl
    def llm_default_model(purpose: str | None) -> LlmDefaultModelResult: ...

    _: LlmDefaultModelHook = llm_default_model  # mypy checks names, arguments and return
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias

from pluggy import HookimplMarker

from .actors import Actor
from .prompting.results import Group, PromptContextFactory, ResponseDoneCallback
from .routing.purposes import Purpose

if TYPE_CHECKING:
    from datasette.app import Datasette as Datasette
    from llm import AsyncModel

__all__ = [
    "Actor",
    "Datasette",
    "LlmDefaultModelHook",
    "LlmDefaultModelResult",
    "LlmFilterModelsHook",
    "LlmFilterModelsResult",
    "LlmGroupExitHook",
    "LlmGroupExitResult",
    "LlmPromptContextHook",
    "LlmPromptContextResult",
    "PromptContextFactory",
    "RegisterLlmPurposesHook",
    "RegisterLlmPurposesResult",
    "ResponseDoneCallback",
    "hookimpl",
]

hookimpl: Final[HookimplMarker] = HookimplMarker("datasette")
"""Datasette's hook implementation marker, typed (the same marker as ``datasette.hookimpl``)."""

RegisterLlmPurposesResult: TypeAlias = Sequence[Purpose] | None
"""What ``register_llm_purposes`` may return: the purposes a plugin uses models for."""

LlmDefaultModelResult: TypeAlias = str | Awaitable[str | None] | None
"""What ``llm_default_model`` may return: a model id, ``None``, or an awaitable of either."""

LlmFilterModelsResult: TypeAlias = list["AsyncModel"] | Awaitable[list["AsyncModel"] | None] | None
"""What ``llm_filter_models`` may return: the models to keep, ``None`` or an awaitable of either."""

LlmPromptContextResult: TypeAlias = PromptContextFactory | None
"""What ``llm_prompt_context`` may return: a ``PromptContextFactory`` or ``None``."""

LlmGroupExitResult: TypeAlias = Awaitable[None] | None
"""What ``llm_group_exit`` may return: ``None`` or an awaitable (e.g. a coroutine)."""


class RegisterLlmPurposesHook(Protocol):
    """The signature of a ``register_llm_purposes`` implementation."""

    def __call__(self, datasette: Datasette) -> RegisterLlmPurposesResult: ...


class LlmDefaultModelHook(Protocol):
    """The signature of an ``llm_default_model`` implementation that takes every argument."""

    def __call__(
        self, datasette: Datasette, purpose: str | None, actor: Actor | None
    ) -> LlmDefaultModelResult: ...


class LlmFilterModelsHook(Protocol):
    """The signature of an ``llm_filter_models`` implementation that takes every argument."""

    def __call__(
        self,
        datasette: Datasette,
        models: list[AsyncModel],
        actor: Actor | None,
        purpose: str | None,
    ) -> LlmFilterModelsResult: ...


class LlmPromptContextHook(Protocol):
    """The signature of an ``llm_prompt_context`` implementation that takes every argument."""

    def __call__(
        self,
        datasette: Datasette,
        model_id: str,
        prompt: str,
        purpose: str | None,
        actor: Actor | None,
    ) -> LlmPromptContextResult: ...


class LlmGroupExitHook(Protocol):
    """The signature of an ``llm_group_exit`` implementation that takes every argument."""

    def __call__(self, datasette: Datasette, group: Group) -> LlmGroupExitResult: ...


def __getattr__(name: str) -> object:
    # Not imported with this module: a plugin imports it while Datasette is still loading plugins,
    # and importing datasette.app then fails (datasette.plugins is half-imported).
    if name == "Datasette":
        from datasette.app import Datasette

        return Datasette
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
