"""The hooks prompting calls: ``llm_prompt_context`` and ``llm_group_exit``.

Each is called from exactly one typed function here (see ``datasette_llm/_hooks.py``).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from .._hooks import caller, each_implementation, plugin_names
from ..log import logger
from .results import PromptContextFactory

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..actors import Actor
    from .results import Group

__all__ = ["call_llm_group_exit", "call_llm_prompt_context"]


def call_llm_prompt_context(
    datasette: Datasette,
    model_id: str,
    prompt: str,
    purpose: str | None,
    actor: Actor | None,
) -> list[PromptContextFactory]:
    """Return the context manager factories the ``llm_prompt_context`` implementations gave."""
    results: list[object] = caller("llm_prompt_context")(
        datasette=datasette, model_id=model_id, prompt=prompt, purpose=purpose, actor=actor
    )
    factories: list[PromptContextFactory] = []
    for factory in results:
        if not callable(factory):
            raise TypeError(
                f"An llm_prompt_context implementation returned {factory!r}; return a callable "
                "that takes a PromptResult and returns an async context manager, or None. "
                f"Plugins implementing it: {plugin_names('llm_prompt_context')}."
            )
        factories.append(factory)
    return factories


async def call_llm_group_exit(datasette: Datasette, group: Group) -> None:
    """Run every ``llm_group_exit`` implementation, awaiting what they return.

    Every implementation runs even if an earlier one fails; each failure is logged and the first
    is raised afterwards.
    """
    first_error: Exception | None = None
    for plugin_name, one in each_implementation("llm_group_exit"):
        try:
            for result in one(datasette=datasette, group=group):
                if inspect.isawaitable(result):
                    await result
        except Exception as error:
            logger.exception("llm_group_exit in plugin %r raised", plugin_name)
            if first_error is None:
                first_error = error
    if first_error is not None:
        raise first_error
