"""The hooks routing calls: ``register_llm_purposes``, ``llm_default_model``, ``llm_filter_models``.

Each is called from exactly one typed function here (see ``datasette_llm/_hooks.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._hooks import each_implementation
from ..log import logger
from .purposes import Purpose

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from ..actors import Actor

__all__ = [
    "FilterAnswer",
    "call_llm_default_model",
    "call_llm_filter_models",
    "call_register_llm_purposes",
]

FilterAnswer = tuple[list["AsyncModel"], dict[str, str]]
"""The models every filter kept, and for each model a filter removed, which plugin removed it."""


def call_register_llm_purposes(datasette: Datasette) -> list[tuple[str, Purpose]]:
    """Collect ``(plugin_name, purpose)`` from every ``register_llm_purposes`` implementation.

    Plugins are asked in the order they were registered (pluggy calls hooks in the reverse
    order), so that the catalog can keep the first registration of a name.
    """
    collected: list[tuple[str, Purpose]] = []
    for plugin_name, caller in reversed(each_implementation("register_llm_purposes")):
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
    for plugin_name, caller in each_implementation("llm_default_model"):
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
    for plugin_name, caller in each_implementation("llm_filter_models"):
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
