"""The coordinator of one Datasette: local, or shared through Redis when configured.

``coordinator_for(datasette, settings)`` returns the same coordinator for as long as the
``coordination`` settings stay the same, kept in the Datasette's ``State``; redis-py is
imported only when the settings name Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..state import Slot, state_of
from .coordinator import Coordinator
from .local import LocalCoordinator
from .shared import RedisCoordinator

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..config.values import CoordinationSettings

__all__ = ["coordinator_for"]


@dataclass(frozen=True, slots=True)
class _Kept:
    """A Datasette's coordinator and the settings it was made for."""

    settings: CoordinationSettings | None
    coordinator: Coordinator


_COORDINATOR: Final[Slot[_Kept]] = Slot("the coordinator")


def coordinator_for(datasette: Datasette, settings: CoordinationSettings | None) -> Coordinator:
    """Return ``datasette``'s coordinator for ``settings`` (``None``: local).

    Raises:
        RedisMissing: The settings name Redis, and redis-py is not installed.
    """
    state = state_of(datasette)
    kept = state.get(_COORDINATOR)
    if kept is not None and kept.settings == settings:
        return kept.coordinator
    coordinator: Coordinator = (
        LocalCoordinator() if settings is None else RedisCoordinator(settings)
    )
    return state.put(_COORDINATOR, _Kept(settings, coordinator)).coordinator
