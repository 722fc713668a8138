"""Limits, cool-downs and budget holds kept in one process: datasette-llm without Redis.

Requests to a model under its ``rpm`` leave evenly spaced, one every ``60 / rpm`` seconds, a
request that left late letting the next leave up to a quarter of that sooner (``_SLACK``), so a
busy event loop's lateness does not add up; ``concurrency`` is a semaphore. A rate-limited model
cools down for its ``Retry-After``, or without one for a time doubling with each rate limit in a
row (1 s up to 60 s); once cooled, one try (the probe) finds out whether it has recovered before
the others go.

``scale`` divides every ``rpm`` and ``concurrency`` among that many processes: the share a
process keeps while the Redis it shares them through cannot be reached.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiolimiter import AsyncLimiter

from .coordinator import Claim, CoolDown, CoordinationStatus, Hold, Refused, Release

__all__ = [
    "FIRST_COOL_DOWN",
    "LONGEST_COOL_DOWN",
    "POLL_FIRST",
    "POLL_LONGEST",
    "LocalCoordinator",
    "backoff",
]

FIRST_COOL_DOWN: Final = 1.0
"""Seconds a model cools down after its first rate limit in a row without a Retry-After; also
how long others wait while a probe finds out whether it has recovered."""
LONGEST_COOL_DOWN: Final = 60.0
"""The longest cool-down of a backoff without a Retry-After."""

POLL_FIRST: Final = 0.01
POLL_LONGEST: Final = 0.1
"""Seconds between looks for a place under ``concurrency`` that may be freed elsewhere (held
through Redis, or by other processes), doubling from the first to the longest; a place given
back in this process wakes its waiters at once."""

_SLACK: Final = 0.25
"""Of one request's interval (``60 / rpm``): how late a request may leave without delaying the
next one. A busy event loop wakes every waiter a little late; with a bucket of exactly one
request, that lateness adds up (measured: 9% fewer requests than ``rpm`` allows with 50
prompts at once), while with this slack the next request leaves on time."""


def backoff(rate_limits: int) -> float:
    """Seconds a model cools down after ``rate_limits`` in a row without a Retry-After."""
    return min(LONGEST_COOL_DOWN, FIRST_COOL_DOWN * 2.0 ** (rate_limits - 1))


def _limiter(rpm: float) -> AsyncLimiter:
    # A bucket of 1 + _SLACK requests, draining rpm / 60 a second: requests leave evenly
    # spaced, so no second ever sees more than rpm / 60 + 1 of them (aiolimiter's bucket of a
    # whole second's requests would let that many through at once, then refill within the
    # second).
    return AsyncLimiter(1 + _SLACK, (1 + _SLACK) * 60 / rpm)


@dataclass(slots=True)
class _Cooling:
    """One model's cool-down: until when (``time.monotonic()``), the rate limits in a row, and
    the token of the try probing it (empty: none)."""

    until: float = 0.0
    rate_limits: int = 0
    probe: str = ""


class LocalCoordinator:
    """Keep every model's limits and cool-down, and every budget's holds, in this process.

    Attributes:
        scale: How many processes share the limits: each ``rpm`` and ``concurrency`` is
            divided by it (a concurrency never below 1).
    """

    def __init__(self, scale: int = 1, status: CoordinationStatus | None = None) -> None:
        self.scale = scale
        self._status = status or CoordinationStatus("local", False, None, time.time())
        self._limiters: dict[tuple[str, float], AsyncLimiter] = {}
        self._semaphores: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._in_use: dict[tuple[str, int], int] = {}  # places taken and not given back
        # Of those, the ones taken beside places held elsewhere (``lease``'s ``also_held``).
        self._beside: dict[tuple[str, int], int] = {}
        self._cooling: dict[str, _Cooling] = {}
        self._held: dict[tuple[str, float], dict[str, float]] = {}
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"<LocalCoordinator scale={self.scale}>"

    @property
    def status(self) -> CoordinationStatus:
        """Limits stay in the process: never shared."""
        return self._status

    def share(self, limit: float) -> float:
        """This process's share of an ``rpm``."""
        return limit / self.scale

    def places(self, limit: int) -> int:
        """This process's share of a ``concurrency``: at least 1."""
        return max(1, math.floor(limit / self.scale))

    async def pace(self, model: str, rpm: float, within: float | None) -> bool:
        """Wait for the next request's turn under this process's share of ``rpm``."""
        limiter = self._limiters.get((model, rpm))
        if limiter is None:
            limiter = self._limiters[model, rpm] = _limiter(self.share(rpm))
        if within is not None and within <= 0:  # no time to wait: a turn now, or none
            if not limiter.has_capacity():
                return False
            await limiter.acquire()
            return True
        try:
            await asyncio.wait_for(limiter.acquire(), within)
        except asyncio.TimeoutError:
            return False
        return True

    def in_use(self, model: str, limit: int) -> int:
        """How many of this process's places of ``model`` under ``limit`` are taken."""
        return self._in_use.get((model, limit), 0)

    async def lease(
        self,
        model: str,
        limit: int,
        within: float | None,
        also_held: Callable[[], int] | None = None,
    ) -> Release | None:
        """Take one of this process's share of ``model``'s ``limit`` places.

        ``also_held``: how many places of ``model`` this process holds besides (taken through
        Redis before it failed): they count against the share until they are given back.
        """
        key = (model, limit)
        semaphore = self._semaphores.get(key)
        if semaphore is None:
            semaphore = self._semaphores[key] = asyncio.Semaphore(self.places(limit))
        began = time.monotonic()
        if within is not None and within <= 0:  # no time to wait: a place now, or none
            if semaphore.locked():
                return None
            await semaphore.acquire()
        else:
            try:
                await asyncio.wait_for(semaphore.acquire(), within)
            except asyncio.TimeoutError:
                return None
        self._in_use[key] = self._in_use.get(key, 0) + 1
        released = passed = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._in_use[key] -= 1
                if passed:
                    self._beside[key] -= 1
                semaphore.release()

        if also_held is None:
            return release
        # Of the places taken, those whose callers have gone on beside the ones held elsewhere:
        # a caller goes on while they and the ones held elsewhere leave room for it (counting
        # the callers waiting here too would keep them all waiting).
        nap = POLL_FIRST
        try:
            while self._beside.get(key, 0) + also_held() >= self.places(limit):
                left = None if within is None else within - (time.monotonic() - began)
                if left is not None and left <= 0:
                    release()
                    return None
                await asyncio.sleep(nap if left is None else min(nap, left))
                nap = min(nap * 2, POLL_LONGEST)
        except BaseException:  # cancelled while the places held elsewhere are given back
            release()
            raise
        passed = True
        self._beside[key] = self._beside.get(key, 0) + 1
        return release

    def _of(self, model: str) -> _Cooling:
        cooling = self._cooling.get(model)
        if cooling is None:
            cooling = self._cooling[model] = _Cooling()
        return cooling

    async def cool_down(self, model: str, retry_after: float | None) -> CoolDown:
        """Start or extend ``model``'s cool-down; end its probe."""
        cooling = self._of(model)
        cooling.probe = ""
        cooling.rate_limits += 1
        wait = retry_after if retry_after is not None else backoff(cooling.rate_limits)
        cooling.until = max(cooling.until, time.monotonic() + wait)
        return CoolDown(wait, cooling.rate_limits == 1)

    async def recovered(self, model: str) -> bool:
        """End ``model``'s rate limits in a row and its probe; say whether it had any."""
        cooling = self._cooling.get(model)
        if cooling is None:
            return False
        had = cooling.rate_limits > 0
        cooling.rate_limits, cooling.probe = 0, ""
        return had

    async def cooling(self, model: str) -> float:
        """Seconds until ``model`` may be tried again (0: now)."""
        return self.cooling_now(model)

    def cooling_now(self, model: str) -> float:
        """``cooling``, without waiting for anything: in this process, nothing to wait for."""
        cooling = self._cooling.get(model)
        if cooling is None:
            return 0.0
        remaining = cooling.until - time.monotonic()
        if remaining > 0:
            return remaining
        if cooling.rate_limits and cooling.probe:
            return FIRST_COOL_DOWN  # another try is finding out whether it has recovered
        return 0.0

    async def claim(self, model: str) -> Claim:
        """Claim a try of ``model``; after rate limits, the first try to get 0 probes."""
        wait = self.cooling_now(model)
        cooling = self._cooling.get(model)
        if wait > 0 or cooling is None or not cooling.rate_limits:
            return Claim(wait)
        cooling.probe = f"probe-{next(self._ids)}"
        return Claim(0.0, True, cooling.probe)

    async def hand_on(self, model: str, claim: Claim) -> None:
        """End ``claim``'s probe, if it is still the one."""
        cooling = self._cooling.get(model)
        if cooling is not None and claim.probe and cooling.probe == claim.token:
            cooling.probe = ""

    async def reserve(
        self,
        purpose: str,
        since: float,
        usd: float,
        estimate: float,
        spent: float,
        reread: Callable[[], Awaitable[float]] | None = None,
    ) -> Hold | Refused:
        """Hold ``estimate`` while ``spent`` (the ledger's) and what is held stay below ``usd``."""
        held = self._held.setdefault((purpose, since), {})
        reserved = math.fsum(held.values())
        if spent + reserved >= usd:
            return Refused(spent, reserved)
        # Unique across processes: a hold taken locally while Redis failed is added to it once
        # it answers again, beside the other processes' (``RedisCoordinator``).
        hold = Hold(purpose, since, estimate, f"hold-{uuid.uuid4().hex}", shared=False)
        held[hold.id] = estimate
        return hold

    def reserved(self, purpose: str, since: float) -> float:
        """US dollars held by ``purpose``'s prompts in flight in the period from ``since``."""
        return math.fsum(self._held.get((purpose, since), {}).values())

    async def settle(
        self, purpose: str, since: float, cost: float, hold: Hold | None = None
    ) -> None:
        """Release ``hold``; the cost is the ledger's to count."""
        if hold is None:
            return
        held = self._held.get((hold.purpose, hold.since))
        if held is not None:
            held.pop(hold.id, None)
            if not held:
                del self._held[hold.purpose, hold.since]

    async def close(self) -> None:
        """Nothing to close."""
