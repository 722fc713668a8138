"""Hook specifications that datasette-llm adds to Datasette's plugin manager."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from pluggy import HookspecMarker

from ._hooks import plugin_manager

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from .actors import Actor
    from .prompting.results import Group, PromptResult
    from .routing.purposes import Purpose

__all__ = ["add_hookspecs"]

hookspec = HookspecMarker("datasette")


@hookspec
def register_llm_purposes(datasette: Datasette) -> Sequence[Purpose] | None:
    """Return the purposes this plugin uses models for."""


@hookspec
def llm_default_model(
    datasette: Datasette, purpose: str | None, actor: Actor | None
) -> str | Awaitable[str | None] | None:
    """Return the model id to use for a purpose, or None to defer to configuration."""


@hookspec
def llm_filter_models(
    datasette: Datasette,
    models: list[AsyncModel],
    actor: Actor | None,
    purpose: str | None,
) -> list[AsyncModel] | Awaitable[list[AsyncModel] | None] | None:
    """Return the subset of ``models`` this actor may use for this purpose, or None to keep all."""


@hookspec
def llm_prompt_context(
    datasette: Datasette,
    model_id: str,
    prompt: str,
    purpose: str | None,
    actor: Actor | None,
) -> Callable[[PromptResult], AbstractAsyncContextManager[object]] | None:
    """Return a factory of an async context manager entered around the prompt, or None."""


@hookspec
def llm_group_exit(datasette: Datasette, group: Group) -> Awaitable[None] | None:
    """React to a ``group()`` block ending, after all its responses completed."""


def add_hookspecs() -> None:
    """Add datasette-llm's hook specifications to Datasette's plugin manager, once."""
    pm = plugin_manager()
    probe = getattr(pm.hook, "register_llm_purposes", None)
    if probe is None or probe.spec is None:
        pm.add_hookspecs(sys.modules[__name__])
