"""Client-side limits per model, and the cool-down of a model that answered ``rate_limit``.

A model reference may set ``rpm`` (requests per minute, spread evenly: one every ``60 / rpm``
seconds, a request that left late letting the next leave up to a quarter of that sooner, so
that a busy event loop's lateness does not add up) and ``concurrency`` (requests at once). They
hold for every prompt to that model from one Datasette instance, whatever purpose it serves:
one ``Gate`` per model and limits.

A place under the limits is held until the request's response has completed: a prompt's for
its whole attempt, a chain's for each of its steps (``acquire`` hands back the release).

A model that answers ``rate_limit`` cools down, for its ``Retry-After`` or, without one, for a
time that doubles with each rate limit in a row (1 s up to 60 s). While it cools, prompts that
may fall back on ``rate_limit`` skip it; when it has cooled, one try (``claim``) finds out
whether it has recovered before the others go; a try that ends without an answer or a provider
error (cancelled, refused by a hook) hands that probe on (``hand_on``).

The cool-down is logged once per change, however many prompts meet it: a warning when a model
that was not cooling starts to (a rate limit after an answer, or its first), and once it answers
again that it has recovered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

from aiolimiter import AsyncLimiter

from ..log import logger
from ..provider_errors import ProviderError
from ..state import Slot, state_of

if TYPE_CHECKING:
    from datasette.app import Datasette

__all__ = ["Gate", "LimitsTimeout", "Release", "cooling_models", "gate_for"]

Release = Callable[[], None]
"""Give back a place held under a model's limits (a second call does nothing)."""

_FIRST_COOL_DOWN: Final = 1.0
_LONGEST_COOL_DOWN: Final = 60.0


class LimitsTimeout(ProviderError):
    """A ``timeout``: the prompt's deadline passed while it waited for a place under a model's
    limits. Nothing was sent, so it is no attempt of the model's and leaves no ledger row."""


_SLACK: Final = 0.25
"""Of one request's interval (``60 / rpm``): how late a request may leave without delaying the
next one. A busy event loop wakes every waiter a little late; with a bucket of exactly one
request, that lateness adds up (measured: 9% fewer requests than ``rpm`` allows with 50
prompts at once), while with this slack the next request leaves on time."""


def _limiter(rpm: float) -> AsyncLimiter:
    # A bucket of 1 + _SLACK requests, draining rpm / 60 a second: requests leave evenly
    # spaced, so no second ever sees more than rpm / 60 + 1 of them (aiolimiter's bucket of a
    # whole second's requests would let that many through at once, then refill within the
    # second).
    return AsyncLimiter(1 + _SLACK, (1 + _SLACK) * 60 / rpm)


class Gate:
    """The limits and the cool-down of one model.

    Attributes:
        model_id: The model.
        rpm: Requests per minute allowed, or ``None``.
        concurrency: Requests allowed at once, or ``None``.
    """

    def __init__(self, model_id: str, rpm: float | None, concurrency: int | None) -> None:
        self.model_id = model_id
        self.rpm = rpm
        self.concurrency = concurrency
        self._limiter = _limiter(rpm) if rpm is not None else None
        self._semaphore = asyncio.Semaphore(concurrency) if concurrency is not None else None
        self._cool_until = 0.0
        self._rate_limits = 0  # in a row
        self._probing = False

    def __repr__(self) -> str:
        return f"<Gate {self.model_id!r} rpm={self.rpm} concurrency={self.concurrency}>"

    @property
    def probing(self) -> bool:
        """Whether a try is finding out whether the model has recovered from its rate limits."""
        return self._probing

    def cooling(self) -> float:
        """Seconds until the model may be tried again (0: now)."""
        remaining = self._cool_until - time.monotonic()
        if remaining > 0:
            return remaining
        if self._rate_limits and self._probing:
            return _FIRST_COOL_DOWN  # another prompt is finding out whether it has recovered
        return 0.0

    def claim(self) -> float:
        """Return the seconds the model still cools down, or 0: a try may go now.

        When the model has been rate limited, the try that gets 0 is the probe (``probing``):
        the others wait until ``record`` or ``hand_on`` ends it.
        """
        wait = self.cooling()
        if wait == 0 and self._rate_limits:
            self._probing = True
        return wait

    def hand_on(self) -> None:
        """End a probe that ended without ``record`` (cancelled, refused by a hook): the next
        try probes instead."""
        self._probing = False

    def record(self, error: ProviderError | None) -> None:
        """Note how an attempt ended: ``None`` for an answer.

        Log a warning when a ``rate_limit`` starts the model's cool-down, and when the first
        answer after it says the model has recovered; a rate limit while it already cools
        extends the cool-down silently.
        """
        self._probing = False
        if error is None:
            if self._rate_limits:
                logger.info(
                    "datasette-llm: model %r answers again after its rate limits: its cool-down "
                    "is over and prompts go to it again. Nothing to do.",
                    self.model_id,
                )
            self._rate_limits = 0
            return
        if error.kind != "rate_limit":
            return
        self._rate_limits += 1
        backoff = min(_LONGEST_COOL_DOWN, _FIRST_COOL_DOWN * 2 ** (self._rate_limits - 1))
        wait = error.retry_after if error.retry_after is not None else backoff
        self._cool_until = max(self._cool_until, time.monotonic() + wait)
        if self._rate_limits == 1:
            why = (
                "its provider's Retry-After"
                if error.retry_after is not None
                else "no Retry-After: a backoff doubling with each rate limit in a row, up to "
                f"{_LONGEST_COOL_DOWN:g} s"
            )
            logger.warning(
                "datasette-llm: model %r is rate limited by its provider and cools down for "
                "%s s (%s): prompts that may fall back on rate_limit go to their fallbacks "
                "meanwhile, the others wait. If this recurs, set rpm or concurrency on the "
                "model to stay under the provider's limit, or raise that limit.",
                self.model_id,
                f"{round(wait, 2):g}",
                why,
            )

    async def acquire(self, within: float | None) -> Release:
        """Take one request's place under the limits, waiting at most ``within`` seconds;
        return what gives it back (once the request's response has completed).

        Raises:
            LimitsTimeout: The wait would pass the prompt's deadline.
        """
        semaphore, limiter = self._semaphore, self._limiter
        if limiter is None and semaphore is None:
            return _nothing
        started = time.monotonic()
        held = False
        try:
            if semaphore is not None:
                await asyncio.wait_for(semaphore.acquire(), within)
                held = True
            if limiter is not None:
                left = None if within is None else max(0.0, within - (time.monotonic() - started))
                await asyncio.wait_for(limiter.acquire(), left)
        except asyncio.TimeoutError:
            if semaphore is not None and held:
                semaphore.release()
            raise self._late(within) from None
        except BaseException:
            if semaphore is not None and held:
                semaphore.release()
            raise
        if semaphore is None:
            return _nothing
        return _releaser(semaphore)

    @asynccontextmanager
    async def slot(self, within: float | None) -> AsyncIterator[None]:
        """Hold one request's place under the limits for the block (``acquire``).

        Raises:
            LimitsTimeout: The wait would pass the prompt's deadline.
        """
        release = await self.acquire(within)
        try:
            yield
        finally:
            release()

    def _late(self, within: float | None) -> LimitsTimeout:
        return LimitsTimeout(
            "timeout",
            self.model_id,
            f"the prompt's deadline passed after {within or 0:.1f} s waiting for a place under "
            f"the client-side limits of {self.model_id!r} (rpm {self.rpm}, concurrency "
            f"{self.concurrency})",
        )


def _nothing() -> None:
    return None


def _releaser(semaphore: asyncio.Semaphore) -> Release:
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            semaphore.release()

    return release


# By model id and limits (rpm, concurrency).
_GATES: Final[Slot[dict[tuple[str, float | None, int | None], Gate]]] = Slot("the gates")


def gate_for(
    datasette: Datasette, model_id: str, rpm: float | None, concurrency: int | None
) -> Gate:
    """Return the gate of ``model_id`` with these limits for ``datasette``."""
    gates = state_of(datasette).setdefault(_GATES, dict)
    key = (model_id, rpm, concurrency)
    gate = gates.get(key)
    if gate is None:
        gate = gates[key] = Gate(model_id, rpm, concurrency)
    return gate


def cooling_models(datasette: Datasette) -> dict[str, float]:
    """The models of ``datasette`` cooling down after rate limits now, with the seconds left."""
    cooling: dict[str, float] = {}
    for gate in (state_of(datasette).get(_GATES) or {}).values():
        wait = gate.cooling()
        if wait > 0:
            cooling[gate.model_id] = max(wait, cooling.get(gate.model_id, 0.0))
    return cooling
