"""What every process serving one Datasette must agree on, and the interface that keeps it.

A ``Coordinator`` holds, for every model and purpose, what a single process would otherwise keep
to itself: the spacing of requests under a model's ``rpm``, the places under its
``concurrency``, its cool-down after a rate limit (with one probe once it has cooled), and each
budget's spend and the estimates held by prompts in flight. ``LocalCoordinator``
(``coordination/local.py``) keeps them in the process, as datasette-llm always has;
``RedisCoordinator`` (``coordination/shared.py``) keeps them in Redis, so that every process
naming the same Redis shares them, and keeps them locally while Redis cannot be reached.

The coordinator decides; its callers log what changed for users (a cool-down starting, a budget
running out) from what it returns, so each change is logged by the one process that made it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

__all__ = [
    "Claim",
    "CoolDown",
    "CoordinationStatus",
    "Coordinator",
    "Hold",
    "Refused",
    "Release",
]

Release: TypeAlias = Callable[[], None]
"""Give back a place under a model's ``concurrency`` (a second call does nothing)."""

BackendName: TypeAlias = Literal["local", "redis"]


@dataclass(frozen=True, slots=True)
class CoordinationStatus:
    """Whether limits, cool-downs and budgets are shared by the processes now.

    Attributes:
        backend: ``"local"`` (configured to stay in the process) or ``"redis"``.
        shared: Whether they are shared now: ``False`` for ``"local"``, and for ``"redis"``
            while Redis cannot be reached (each process keeps its share to itself meanwhile).
        where: The Redis URL with any password hidden, or ``None``.
        since: When (``time.time()``) ``shared`` last changed, or the coordinator was made.
        problem: Why Redis cannot be reached, while it cannot; else ``None``.
    """

    backend: BackendName
    shared: bool
    where: str | None
    since: float
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class CoolDown:
    """A model's cool-down after a rate limit, as ``Coordinator.cool_down`` started it.

    Attributes:
        wait: Seconds this rate limit makes the model cool down for (its ``Retry-After``, or
            the backoff of the rate limits in a row).
        first: Whether it is the first rate limit in a row: the model was not cooling down
            before it (its caller logs the change).
    """

    wait: float
    first: bool


@dataclass(frozen=True, slots=True)
class Claim:
    """A try's claim on a model that may be cooling down.

    Attributes:
        wait: Seconds the model still cools down, or 0: the try may go now.
        probe: Whether this try finds out whether the model has recovered from its rate
            limits: the others wait until it ends (``Coordinator.recovered``,
            ``Coordinator.cool_down`` or ``Coordinator.hand_on``).
        token: Names the probe, to hand it on (empty when ``probe`` is false).
        shared: Whether the probe is claimed in the shared store (else in the process).
    """

    wait: float
    probe: bool = False
    token: str = ""
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Hold:
    """What one prompt in flight holds of its purpose's budget for a period, until settled.

    Attributes:
        purpose: The purpose.
        since: The start of the budget's period (seconds since the epoch, UTC).
        usd: US dollars held.
        id: Names the hold where it is kept.
        shared: Whether it is held in the shared store (else in the process).
    """

    purpose: str
    since: float
    usd: float
    id: str
    shared: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """A budget with no room: what was spent in the period and what prompts in flight hold.

    Attributes:
        spent: US dollars spent since the period began.
        reserved: US dollars held by prompts in flight.
    """

    spent: float
    reserved: float


class Coordinator(Protocol):
    """Keep each model's limits and cool-down, and each budget's spend, for the processes that
    share them (one process, for ``LocalCoordinator``).

    Every method is safe to call from many tasks at once; none raises because the shared store
    failed (it keeps the process's own share instead, see ``status``).
    """

    @property
    def status(self) -> CoordinationStatus:
        """Whether limits are shared now, and why not."""
        ...

    async def pace(self, model: str, rpm: float, within: float | None) -> bool:
        """Wait for the next request's turn to ``model`` under ``rpm``; return ``False`` at
        once, taking no turn, when that turn is more than ``within`` seconds away."""
        ...

    async def lease(self, model: str, limit: int, within: float | None) -> Release | None:
        """Take one of ``model``'s ``limit`` places for a request, waiting at most ``within``
        seconds; return what gives it back, or ``None`` when no place came in time."""
        ...

    async def cool_down(self, model: str, retry_after: float | None) -> CoolDown:
        """Note a rate limit of ``model``: it cools down for ``retry_after`` seconds, or
        without one for a backoff doubling with each rate limit in a row; ends any probe."""
        ...

    async def recovered(self, model: str) -> bool:
        """Note an answer of ``model``: its rate limits in a row end, and any probe. Return
        whether it had been rate limited (its caller logs the recovery)."""
        ...

    async def cooling(self, model: str) -> float:
        """Seconds until ``model`` may be tried again (0: now)."""
        ...

    async def claim(self, model: str) -> Claim:
        """Claim a try of ``model``: how long it still cools down, or 0 and whether this try
        is the probe finding out whether it has recovered."""
        ...

    async def hand_on(self, model: str, claim: Claim) -> None:
        """End ``claim``'s probe without an outcome (cancelled, refused by a hook): the next
        try probes instead."""
        ...

    async def reserve(
        self,
        purpose: str,
        since: float,
        usd: float,
        estimate: float,
        spent: float,
        reread: Callable[[], Awaitable[float]] | None = None,
    ) -> Hold | Refused:
        """Hold ``estimate`` for a prompt of ``purpose`` while spent + held is below ``usd``.

        The check and the hold are one step, so prompts admitted at once never share the same
        room: the spend passes ``usd`` by at most one prompt's estimate (when each costs no
        more than its estimate).

        Args:
            since: The start of the budget's period.
            spent: What this process's ledger says was spent since ``since``. The local
                coordinator takes it as the spend; a shared one starts the period's shared
                spend from it the first time the period is met, then keeps its own count.
            reread: Read the ledger's table again for that spend: a shared coordinator starts
                a period it does not keep (new, or lost with Redis's data) from it instead of
                ``spent``, which counts only this process's rows since it first read them.
        """
        ...

    async def settle(
        self, purpose: str, since: float, cost: float, hold: Hold | None = None
    ) -> None:
        """Add ``cost``, an attempt's, to ``purpose``'s spend since ``since`` (the local
        coordinator leaves that to the ledger), and release ``hold`` if given (its prompt has
        ended)."""
        ...

    async def close(self) -> None:
        """Stop background work and close connections (leases still held expire)."""
        ...
