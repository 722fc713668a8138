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
    # ``Datasette`` is not imported with this module. A plugin imports it at the top of its
    # module, and Datasette imports plugins while ``datasette.app`` itself is still importing
    # (it loads them as it starts): ``datasette.app.Datasette`` does not exist yet then, and
    # ``from datasette.app import Datasette`` would fail. So it is looked up when asked for, and
    # while ``datasette.app`` is still importing, a stand-in that is that class on every use.
    if name == "Datasette":
        import importlib
        import sys

        # While it imports, the module is in sys.modules but not yet an attribute of datasette.
        app = sys.modules.get("datasette.app") or importlib.import_module("datasette.app")
        found: object = getattr(app, "Datasette", None)
        return _DeferredDatasette if found is None else found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Deferred(type):
    """The stand-in's type: every use of the stand-in is a use of ``datasette.app.Datasette``."""

    @staticmethod
    def _real() -> type:
        from datasette.app import Datasette

        return Datasette

    def __call__(cls, *args: object, **kwargs: object) -> object:
        return cls._real()(*args, **kwargs)

    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, cls._real())

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, cls._real())

    def __getattr__(cls, name: str) -> object:
        return getattr(cls._real(), name)

    def __repr__(cls) -> str:
        return "<class 'datasette.app.Datasette' (imported while Datasette loaded its plugins)>"


class _DeferredDatasette(metaclass=_Deferred):
    """``datasette.app.Datasette`` for a plugin that imported it while Datasette was loading its
    plugins: an annotation, ``isinstance``, a call and its attributes all reach the real class
    (which exists by the time any of them runs)."""
