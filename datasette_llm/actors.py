"""The Datasette actor a call is made for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

__all__ = ["Actor", "actor_id"]

Actor: TypeAlias = Mapping[str, object]
"""A Datasette actor dictionary, as found on ``request.actor``."""


def actor_id(actor: Actor | None) -> str | None:
    """Return the actor's ``id`` as a string, or ``None`` for no actor or an actor without one."""
    if actor is None:
        return None
    value = actor.get("id")
    return None if value is None else str(value)
