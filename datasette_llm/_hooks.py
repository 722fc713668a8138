"""The one typed caller of each datasette-llm hook; nothing else touches ``pm.hook``.

Every call goes through pluggy's public interface, so ``wrapper=True`` implementations wrap it
and pluggy's hook-call monitoring (Datasette's ``DATASETTE_TRACE_PLUGINS``) sees it.

``llm_prompt_context`` runs once per prompt and is called as one hook call. The other four need
each implementation's own answer (who registered a purpose, which plugin chose a model, what
each filter kept, every ``llm_group_exit`` running even if another fails), so they call each
implementation through ``pm.subset_hook_caller``: a caller of that implementation alone, with
every wrapper still around it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from . import hookspecs
from .log import logger
from .purposes import Purpose
from .results import PromptContextFactory

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel
    from pluggy import HookCaller, HookImpl, PluginManager

    from .actors import Actor
    from .results import Group

__all__ = [
    "FilterAnswer",
    "add_hookspecs",
    "call_llm_default_model",
    "call_llm_filter_models",
    "call_llm_group_exit",
    "call_llm_prompt_context",
    "call_register_llm_purposes",
    "implementations",
]


FilterAnswer = tuple[list["AsyncModel"], dict[str, str]]
"""The models every filter kept, and for each model a filter removed, which plugin removed it."""

_SPEC_PROBE: Final = "register_llm_purposes"


@functools.cache
def _plugin_manager() -> PluginManager:
    # Imported when first needed: importing datasette.plugins loads every installed plugin, and
    # datasette_llm is one of them (see datasette_llm/__init__.py).
    from datasette.plugins import pm

    return pm


def add_hookspecs() -> None:
    """Add datasette-llm's hook specifications to Datasette's plugin manager, once."""
    pm = _plugin_manager()
    caller = getattr(pm.hook, _SPEC_PROBE, None)
    if caller is None or caller.spec is None:
        pm.add_hookspecs(hookspecs)


def _caller(name: str) -> HookCaller:
    caller: HookCaller = getattr(_plugin_manager().hook, name)
    return caller


def implementations(name: str) -> tuple[HookImpl, ...]:
    """Return the implementations of hook ``name`` (a cheap key for caches that depend on them)."""
    return tuple(_caller(name).get_hookimpls())


# Hook name -> (the implementations when last seen, one caller per plain implementation).
_one_by_one: dict[str, tuple[tuple[HookImpl, ...], tuple[tuple[str, HookCaller], ...]]] = {}


def _each(name: str) -> tuple[tuple[str, HookCaller], ...]:
    """Return ``(plugin_name, caller of that plugin's implementation alone)``, in calling order."""
    current = implementations(name)
    cached = _one_by_one.get(name)
    # HookImpl has no __eq__: the tuples compare implementations by identity.
    if cached is not None and cached[0] == current:
        return cached[1]
    pm = _plugin_manager()
    plain = [impl for impl in reversed(current) if not (impl.hookwrapper or impl.wrapper)]
    callers = [
        (impl.plugin_name, pm.subset_hook_caller(name, [o.plugin for o in plain if o is not impl]))
        for impl in plain
    ]
    _one_by_one[name] = (current, tuple(callers))
    return _one_by_one[name][1]


def call_register_llm_purposes(datasette: Datasette) -> list[tuple[str, Purpose]]:
    """Collect ``(plugin_name, purpose)`` from every ``register_llm_purposes`` implementation.

    Plugins are asked in the order they were registered (pluggy calls hooks in the reverse
    order), so that the catalog can keep the first registration of a name.
    """
    collected: list[tuple[str, Purpose]] = []
    for plugin_name, caller in reversed(_each("register_llm_purposes")):
        for result in caller(datasette=datasette):
            if isinstance(result, Purpose | str | bytes) or not isinstance(result, Sequence):
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
    """Return ``(model_id, plugin_name)`` from the first implementation that answers.

    Implementations after the first answer are not called.
    """
    kwargs: dict[str, object] = {"datasette": datasette, "purpose": purpose, "actor": actor}
    for plugin_name, caller in _each("llm_default_model"):
        for result in caller(**kwargs):
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
) -> FilterAnswer:
    """Narrow ``models`` through every ``llm_filter_models`` implementation in turn.

    Each implementation sees what the previous ones kept; a model it returns that was not in
    its input is ignored (and logged), so no filter can bring back a model another removed.
    """
    current = models
    removed_by: dict[str, str] = {}
    for plugin_name, caller in _each("llm_filter_models"):
        kwargs: dict[str, object] = {
            "datasette": datasette,
            "models": list(current),
            "actor": actor,
            "purpose": purpose,
        }
        for result in caller(**kwargs):
            if inspect.isawaitable(result):
                result = await result
            if result is None:
                continue
            if not isinstance(result, list | tuple):
                raise TypeError(
                    f"llm_filter_models in plugin {plugin_name!r} returned "
                    f"{type(result).__name__}; return a list of models or None."
                )
            current = _kept(current, result, plugin_name, removed_by)
    return current, removed_by


def _kept(
    given: list[AsyncModel], answer: Sequence[object], plugin_name: str, removed_by: dict[str, str]
) -> list[AsyncModel]:
    """Return the models of ``given`` that ``answer`` keeps, in ``answer``'s order."""
    remaining = {model.model_id: model for model in given}
    kept: list[AsyncModel] = []
    for model in answer:
        model_id = getattr(model, "model_id", None)
        if isinstance(model_id, str) and model_id in remaining:
            kept.append(remaining.pop(model_id))
        else:
            logger.warning(
                "llm_filter_models in plugin %r returned %r, which was not in the list it was "
                "given (removed by configuration or an earlier filter); ignored.",
                plugin_name,
                model_id if isinstance(model_id, str) else model,
            )
    for model_id in remaining:
        removed_by.setdefault(model_id, plugin_name)
    return kept


def call_llm_prompt_context(
    datasette: Datasette,
    model_id: str,
    prompt: str,
    purpose: str | None,
    actor: Actor | None,
) -> list[PromptContextFactory]:
    """Return the context manager factories the ``llm_prompt_context`` implementations gave."""
    results: list[object] = _caller("llm_prompt_context")(
        datasette=datasette, model_id=model_id, prompt=prompt, purpose=purpose, actor=actor
    )
    factories: list[PromptContextFactory] = []
    for factory in results:
        if not callable(factory):
            raise TypeError(
                f"An llm_prompt_context implementation returned {factory!r}; return a callable "
                "that takes a PromptResult and returns an async context manager, or None. "
                f"Plugins implementing it: {_plugin_names('llm_prompt_context')}."
            )
        factories.append(factory)
    return factories


def _plugin_names(name: str) -> str:
    return ", ".join(repr(impl.plugin_name) for impl in reversed(implementations(name)))


async def call_llm_group_exit(datasette: Datasette, group: Group) -> None:
    """Run every ``llm_group_exit`` implementation, awaiting what they return.

    Every implementation runs even if an earlier one fails; each failure is logged and the first
    is raised afterwards.
    """
    first_error: Exception | None = None
    for plugin_name, caller in _each("llm_group_exit"):
        try:
            for result in caller(datasette=datasette, group=group):
                if inspect.isawaitable(result):
                    await result
        except Exception as error:
            logger.exception("llm_group_exit in plugin %r raised", plugin_name)
            if first_error is None:
                first_error = error
    if first_error is not None:
        raise first_error
