"""How datasette-llm calls its hooks: through pluggy's public interface, one caller per hook.

Each layer calls its own hooks from one module: ``routing/hooks.py`` (``register_llm_purposes``,
``llm_default_model``, ``llm_filter_models``) and ``prompting/hooks.py``
(``llm_prompt_context``, ``llm_group_exit``). Nothing else touches ``pm.hook``.

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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pluggy import HookCaller, HookImpl, PluginManager

__all__ = ["caller", "each_implementation", "implementations", "plugin_manager", "plugin_names"]


@functools.cache
def plugin_manager() -> PluginManager:
    """Return Datasette's plugin manager.

    Imported when first needed: importing datasette.plugins loads every installed plugin, and
    datasette_llm is one of them (see datasette_llm/__init__.py).
    """
    from datasette.plugins import pm

    return pm


def caller(name: str) -> HookCaller:
    """Return the caller of hook ``name``: every implementation, wrappers around them."""
    hook_caller: HookCaller = getattr(plugin_manager().hook, name)
    return hook_caller


def implementations(name: str) -> tuple[HookImpl, ...]:
    """Return the implementations of hook ``name`` (a cheap key for caches that depend on them)."""
    return tuple(caller(name).get_hookimpls())


def plugin_names(name: str) -> str:
    """Return the names of the plugins implementing hook ``name``, quoted, in calling order."""
    return ", ".join(repr(impl.plugin_name) for impl in reversed(implementations(name)))


# Hook name -> (the implementations when last seen, one caller per plain implementation).
_one_by_one: dict[str, tuple[tuple[HookImpl, ...], tuple[tuple[str, HookCaller], ...]]] = {}


def each_implementation(name: str) -> tuple[tuple[str, HookCaller], ...]:
    """Return ``(plugin_name, caller of that plugin's implementation alone)``, in calling order."""
    current = implementations(name)
    cached = _one_by_one.get(name)
    # HookImpl has no __eq__: the tuples compare implementations by identity.
    if cached is not None and cached[0] == current:
        return cached[1]
    pm = plugin_manager()
    plain = [impl for impl in reversed(current) if not (impl.hookwrapper or impl.wrapper)]
    callers = [
        (impl.plugin_name, pm.subset_hook_caller(name, [o.plugin for o in plain if o is not impl]))
        for impl in plain
    ]
    _one_by_one[name] = (current, tuple(callers))
    return _one_by_one[name][1]
