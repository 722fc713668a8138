"""The coordinator of one Datasette, local or shared through Redis, and the notices of routing
overrides its processes send each other through it.

``coordinator_for(datasette, settings)`` returns the same coordinator for as long as the
``coordination`` settings stay the same, kept in the Datasette's ``State``; redis-py is
imported only when the settings name Redis.

Routing overrides (``config/overrides.py``) are shared by the processes that use the same
internal database file (``datasette serve --internal same.db``): each sees another's write
within a second, by its own check of that file. With Redis configured, each sees it at once:
the process that saved one announces it (``announce_override``, called by the routing form
after ``save_override``) on the channel ``<prefix>:overrides``, and every process listens
there (``watch_overrides``, started by the ``startup`` hook) and, on hearing of a version it
does not hold, checks its internal database now (``refresh_overrides``). Redis carries only the
notice, never the override. While Redis cannot be reached nothing is announced and nothing
heard, and the check every second goes on; once it answers, each process checks once more,
for the notices it missed. ``close_coordination`` (the ``shutdown`` hook) stops it all.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..config.overrides import overrides_of, refresh_overrides, version_of
from ..config.source import written_config_for
from ..errors import ConfigurationError
from ..state import Slot, state_of
from .coordinator import Coordinator
from .local import LocalCoordinator
from .shared import Heard, RedisCoordinator, RedisMissing

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..config.overrides import StoredOverride
    from ..config.values import CoordinationSettings

__all__ = [
    "OVERRIDES_CHANNEL",
    "OVERRIDES_VERSION",
    "announce_override",
    "close_coordination",
    "coordinator_for",
    "overrides_current",
    "watch_overrides",
]

OVERRIDES_CHANNEL: Final = "overrides"
OVERRIDES_VERSION: Final = "overrides:version"
"""The counter every save of an override adds one to: a process whose routing finds it ahead of
what it has read checks its internal database before it routes (``overrides_current``)."""
"""The channel, under the configured prefix (``<prefix>:overrides``), on which a process
announces an override it saved: ``{"purpose": NAME, "version": N}``."""


@dataclass(frozen=True, slots=True)
class _Kept:
    """A Datasette's coordinator, the settings it was made for, and whether the overrides its
    processes announce are listened to."""

    settings: CoordinationSettings | None
    coordinator: Coordinator
    watching: bool = False


_COORDINATOR: Final[Slot[_Kept | None]] = Slot("the coordinator")


def coordinator_for(datasette: Datasette, settings: CoordinationSettings | None) -> Coordinator:
    """Return ``datasette``'s coordinator for ``settings`` (``None``: local).

    A coordinator made for other settings is replaced (what it holds is given back or expires
    as it would without it); if the overrides were listened to through it, they are through
    the new one from now, if an event loop is running, else from the next ``watch_overrides``.

    Raises:
        RedisMissing: The settings name Redis, and redis-py is not installed.
    """
    state = state_of(datasette)
    kept = state.get(_COORDINATOR)
    if kept is not None and kept.settings == settings:
        if kept.watching and isinstance(kept.coordinator, RedisCoordinator) and _running():
            # The serving event loop may not be the one the startup hook ran in (Datasette
            # 1.0a23's serve runs it in a loop of its own, ended before serving): listen here.
            _listen(datasette, kept.coordinator)
        return kept.coordinator
    coordinator: Coordinator = (
        LocalCoordinator() if settings is None else RedisCoordinator(settings)
    )
    watching = kept is not None and kept.watching
    if kept is not None and isinstance(kept.coordinator, RedisCoordinator):
        kept.coordinator.stop_listening()
    state.put(_COORDINATOR, _Kept(settings, coordinator, watching))
    if watching and isinstance(coordinator, RedisCoordinator) and _running():
        _listen(datasette, coordinator)
    return coordinator


def _running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _redis_of(datasette: Datasette) -> RedisCoordinator | None:
    """The coordinator, when the configuration as written shares it through Redis."""
    try:
        settings = written_config_for(datasette).coordination
    except ConfigurationError:
        return None  # the configuration's problems are reported elsewhere
    if settings is None:
        return None
    try:
        coordinator = coordinator_for(datasette, settings)
    except RedisMissing:
        return None  # so is a missing redis package
    return coordinator if isinstance(coordinator, RedisCoordinator) else None


async def announce_override(datasette: Datasette, stored: StoredOverride) -> bool:
    """Tell every process sharing ``datasette``'s Redis that ``stored`` was just saved, so that
    each reads it from its internal database now; return whether the notice went.

    Nothing is sent without Redis configured, or while it cannot be reached (the others see
    the write within a second anyway, if they share the internal database). Never raises.
    """
    coordinator = _redis_of(datasette)
    if coordinator is None:
        return False
    _listen(datasette, coordinator)  # and hear the others' from now, if not yet
    counted = await coordinator.count(OVERRIDES_VERSION)
    if counted is not None and coordinator.seen.get(OVERRIDES_VERSION, 0) == counted - 1:
        coordinator.seen[OVERRIDES_VERSION] = counted  # nothing else saved meanwhile: held
    notice = json.dumps({"purpose": stored.purpose, "version": stored.version})
    return await coordinator.publish(OVERRIDES_CHANNEL, notice)


async def overrides_current(datasette: Datasette) -> bool:
    """Before a call routes: when another process has saved an override since this one last
    read them (the shared ``OVERRIDES_VERSION`` is ahead), read them again now, so that its
    next call routes by it whatever the notice's timing; return whether they were read.

    One Redis read a call, with ``coordination`` configured; nothing while Redis cannot be
    reached (the check every second still runs)."""
    coordinator = _redis_of(datasette)
    if coordinator is None:
        return False
    counted = await coordinator.counted(OVERRIDES_VERSION)
    if counted is None or counted <= coordinator.seen.get(OVERRIDES_VERSION, 0):
        return False
    await refresh_overrides(datasette)
    coordinator.seen[OVERRIDES_VERSION] = max(counted, coordinator.seen.get(OVERRIDES_VERSION, 0))
    return True


def watch_overrides(datasette: Datasette) -> bool:
    """Listen, in the running event loop, for the overrides other processes announce; return
    whether it does (``False``: Redis is not configured). Calling again changes nothing.

    Each notice of a version this process does not hold makes it check its internal database
    now; so does subscribing again after Redis failed. The listening stops with
    ``close_coordination``, the event loop, or the Datasette being collected.
    """
    coordinator = _redis_of(datasette)
    if coordinator is None:
        return False
    state = state_of(datasette)
    kept = state.get(_COORDINATOR)
    if kept is not None and not kept.watching:
        state.put(_COORDINATOR, _Kept(kept.settings, kept.coordinator, True))
    _listen(datasette, coordinator)
    return True


def _listen(datasette: Datasette, coordinator: RedisCoordinator) -> None:
    if coordinator.listening(OVERRIDES_CHANNEL):
        return
    task = coordinator.listen(OVERRIDES_CHANNEL, _hearer(datasette))
    weakref.finalize(datasette, _cancel, task)  # no listener outlives its Datasette


def _cancel(task: asyncio.Task[None]) -> None:
    loop = task.get_loop()
    if not task.done() and not loop.is_closed():
        loop.call_soon_threadsafe(task.cancel)


def _hearer(datasette: Datasette) -> Heard:
    """What a notice makes ``datasette``'s process do (holding it weakly: the ``State`` must
    not keep its Datasette alive)."""
    ref = weakref.ref(datasette)

    async def heard(notice: str | None) -> None:
        served = ref()
        if served is None:
            return
        announced = None if notice is None else _announced(notice)
        if announced is not None:
            purpose, version = announced
            if version_of(overrides_of(served), purpose) >= version:
                return  # held already: this process's own write, or read since
        await refresh_overrides(served)

    return heard


def _announced(notice: str) -> tuple[str, int] | None:
    """The purpose and version a notice names; ``None`` for one that cannot be read (a check
    is made all the same)."""
    try:
        value = json.loads(notice)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    purpose, version = value.get("purpose"), value.get("version")
    if not isinstance(purpose, str) or not isinstance(version, int):
        return None
    return purpose, version


async def close_coordination(datasette: Datasette) -> None:
    """Stop listening and close ``datasette``'s coordinator (the ``shutdown`` hook); the next
    ``coordinator_for`` makes a new one."""
    state = state_of(datasette)
    kept = state.get(_COORDINATOR)
    if kept is None:
        return
    state.put(_COORDINATOR, None)
    await kept.coordinator.close()
