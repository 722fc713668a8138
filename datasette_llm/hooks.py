"""The one typed caller of each datasette-llm hook; nothing else touches ``pm.hook``.

Every hook implementation is called directly, in pluggy's order (last registered first);
hook wrappers are ignored. Calling them directly rather than through ``pm.hook.<name>(...)``
skips pluggy's generic multicall, a few microseconds per prompt.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from . import hookspecs
from ._registration import when_imported

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel
    from pluggy import HookCaller, HookImpl, PluginManager

    from .purposes import Purpose
    from .results import Group, PromptResult
    from .types import Actor

__all__ = [
    "PromptContextFactory",
    "call_llm_default_model",
    "call_llm_filter_models",
    "call_llm_group_exit",
    "call_llm_prompt_context",
    "call_register_llm_purposes",
    "hookimpls_of",
    "plugin_manager",
]

logger = logging.getLogger("datasette_llm")

PromptContextFactory = Callable[["PromptResult"], AbstractAsyncContextManager[object]]

_pm: PluginManager | None = None


def plugin_manager() -> PluginManager:
    """Return Datasette's plugin manager, with datasette-llm's hookspecs added.

    ``datasette.plugins`` is imported on first use, not when ``datasette_llm`` is imported:
    importing it loads every installed Datasette plugin, which costs about 100 ms.
    """
    global _pm
    if _pm is None:
        from datasette.plugins import pm

        if not hasattr(pm.hook, "register_llm_purposes") or (
            pm.hook.register_llm_purposes.spec is None
        ):
            pm.add_hookspecs(hookspecs)
        _pm = pm
    return _pm


def _add_hookspecs() -> None:
    plugin_manager()


# Add our hookspecs as soon as Datasette's plugin manager exists (now, if a running Datasette is
# importing us as an entry point), so other plugins are checked against them when registered.
when_imported("datasette.plugins", "pm", _add_hookspecs)


# Pluggy keeps one HookCaller per hook name for the plugin manager's lifetime.
_callers: dict[str, HookCaller] = {}


def _caller(name: str) -> HookCaller:
    caller = _callers.get(name)
    if caller is None:
        caller = getattr(plugin_manager().hook, name)
        _callers[name] = caller
    return caller


# Hook name -> (pluggy's list of implementations when last seen, ours in calling order).
_impls_cache: dict[str, tuple[list[HookImpl], tuple[HookImpl, ...]]] = {}


def _impls(name: str) -> tuple[HookImpl, ...]:
    """Return the non-wrapper implementations of ``name`` in calling order."""
    registered = _caller(name)._hookimpls
    cached = _impls_cache.get(name)
    # HookImpl has no __eq__, so comparing the lists compares identities, element by element:
    # any plugin registered or unregistered since (even under the same name) is noticed.
    if cached is not None and cached[0] == registered:
        return cached[1]
    ordered = tuple(
        impl
        for impl in reversed(registered)
        if not (impl.hookwrapper or getattr(impl, "wrapper", False))
    )
    _impls_cache[name] = (list(registered), ordered)
    return ordered


def hookimpls_of(name: str) -> tuple[object, ...]:
    """Return the current implementations of hook ``name``: a cheap cache key."""
    return tuple(_caller(name)._hookimpls)


def _call(impl: HookImpl, kwargs: dict[str, Any]) -> object:
    """Call one implementation with the arguments it declares (it may omit any of them)."""
    return impl.function(*[kwargs[argname] for argname in impl.argnames])


def _each(name: str, kwargs: dict[str, Any]) -> Iterator[tuple[str, object]]:
    """Call every implementation of ``name`` separately, in pluggy's order.

    Yields ``(plugin_name, result)``; ``None`` results are skipped.
    """
    for impl in _impls(name):
        result = _call(impl, kwargs)
        if result is not None:
            yield impl.plugin_name, result


def call_register_llm_purposes(datasette: Datasette) -> list[tuple[str, Purpose]]:
    """Collect ``(plugin_name, purpose)`` from every ``register_llm_purposes`` implementation."""
    from .purposes import Purpose

    collected: list[tuple[str, Purpose]] = []
    for plugin_name, result in _each("register_llm_purposes", {"datasette": datasette}):
        if isinstance(result, Purpose) or not isinstance(result, Sequence | set | tuple):
            raise TypeError(
                f"register_llm_purposes in plugin {plugin_name!r} returned "
                f"{type(result).__name__}; return a list of datasette_llm.Purpose."
            )
        for item in result:
            if not isinstance(item, Purpose):
                raise TypeError(
                    f"register_llm_purposes in plugin {plugin_name!r} returned "
                    f"{item!r} ({type(item).__name__}); every item must be a "
                    "datasette_llm.Purpose."
                )
            collected.append((plugin_name, item))
    return collected


async def call_llm_default_model(
    datasette: Datasette, purpose: str | None, actor: Actor | None
) -> tuple[str, str] | None:
    """Return ``(model_id, plugin_name)`` from the first implementation that answers."""
    kwargs = {"datasette": datasette, "purpose": purpose, "actor": actor}
    for plugin_name, result in _each("llm_default_model", kwargs):
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            continue
        if not isinstance(result, str):
            raise TypeError(
                f"llm_default_model in plugin {plugin_name!r} returned {result!r}; "
                "return a model id string or None."
            )
        return result, plugin_name
    return None


async def call_llm_filter_models(
    datasette: Datasette,
    models: list[AsyncModel],
    actor: Actor | None,
    purpose: str | None,
) -> list[AsyncModel]:
    """Narrow ``models`` through every ``llm_filter_models`` implementation in turn.

    Each implementation sees what the previous ones left; whatever it returns that was not in
    its input is dropped (and logged), so no filter can bring back a model another removed.
    """
    impls = _impls("llm_filter_models")
    if not impls:
        return models
    current = models
    for impl in impls:
        kwargs: dict[str, object] = {
            "datasette": datasette,
            "models": list(current),
            "actor": actor,
            "purpose": purpose,
        }
        result = _call(impl, kwargs)
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            continue
        if not isinstance(result, list | tuple):
            raise TypeError(
                f"llm_filter_models in plugin {impl.plugin_name!r} returned "
                f"{type(result).__name__}; return a list of models or None."
            )
        allowed = {model.model_id: model for model in current}
        narrowed: list[AsyncModel] = []
        for model in result:
            model_id = getattr(model, "model_id", None)
            if isinstance(model_id, str) and model_id in allowed:
                narrowed.append(allowed.pop(model_id))
            else:
                logger.warning(
                    "llm_filter_models in plugin %r returned %r, which was not in the list it "
                    "was given (removed by configuration or an earlier filter); ignored.",
                    impl.plugin_name,
                    model_id if isinstance(model_id, str) else model,
                )
        current = narrowed
    return current


_PROMPT_CONTEXT_ARGS = ("datasette", "model_id", "prompt", "purpose", "actor")

_PromptContextCall = Callable[["Datasette", str, str, "str | None", "Actor | None"], object]


class _PromptContextCalls:
    """How to call each ``llm_prompt_context`` implementation, re-read when plugins change.

    ``calls`` holds, in calling order, a callable taking all five hook arguments positionally
    (the implementation's own function when it declares all five in order, otherwise an adapter
    passing the ones it declares) and the plugin's name. This hook runs for every prompt, so the
    check that nothing changed is a single list comparison, with no function call.
    """

    __slots__ = ("caller", "calls", "seen")

    def __init__(self) -> None:
        self.caller: HookCaller | None = None
        self.seen: list[HookImpl] = []
        self.calls: tuple[tuple[_PromptContextCall, str], ...] = ()

    def refresh(self) -> None:
        self.caller = _caller("llm_prompt_context")
        self.seen = list(self.caller._hookimpls)
        self.calls = tuple(
            (self._call_of(impl), impl.plugin_name) for impl in _impls("llm_prompt_context")
        )

    @staticmethod
    def _call_of(impl: HookImpl) -> _PromptContextCall:
        function: Callable[..., object] = impl.function
        if tuple(impl.argnames) == _PROMPT_CONTEXT_ARGS:
            return function
        positions = tuple(_PROMPT_CONTEXT_ARGS.index(argname) for argname in impl.argnames)

        def declared_only(*args: object) -> object:
            return function(*[args[position] for position in positions])

        return declared_only


_prompt_context = _PromptContextCalls()


def call_llm_prompt_context(
    datasette: Datasette,
    model_id: str,
    prompt: str,
    purpose: str | None,
    actor: Actor | None,
) -> list[PromptContextFactory]:
    """Return the context manager factories the ``llm_prompt_context`` implementations gave."""
    hook = _prompt_context
    if hook.caller is None or hook.caller._hookimpls != hook.seen:
        hook.refresh()
    factories: list[PromptContextFactory] = []
    for call, plugin_name in hook.calls:
        factory = call(datasette, model_id, prompt, purpose, actor)
        if factory is None:
            continue
        if not callable(factory):
            raise TypeError(
                f"llm_prompt_context in plugin {plugin_name!r} returned {factory!r}; return "
                "a callable that takes a PromptResult and returns an async context manager, "
                "or None."
            )
        factories.append(factory)
    return factories


async def call_llm_group_exit(datasette: Datasette, group: Group) -> None:
    """Run every ``llm_group_exit`` implementation, awaiting what they return.

    Every implementation runs even if an earlier one fails; the first failure is re-raised
    afterwards and each one is logged.
    """
    impls = _impls("llm_group_exit")
    if not impls:
        return
    first_error: BaseException | None = None
    for impl in impls:
        kwargs: dict[str, object] = {"datasette": datasette, "group": group}
        try:
            result = _call(impl, kwargs)
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            logger.exception("llm_group_exit in plugin %r raised", impl.plugin_name)
            if first_error is None:
                first_error = error
    if first_error is not None:
        raise first_error
