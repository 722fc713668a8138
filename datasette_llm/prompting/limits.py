"""Each model's ``rpm``, ``concurrency`` and cool-down on the prompt path, asked of the coordinator.

A model reference may set ``rpm`` (requests per minute, spread evenly) and ``concurrency``
(requests at once). They hold for every prompt to that model from one Datasette, whatever
purpose it serves, and with ``coordination: {redis: ...}`` for every process serving it. The
rules (the spacing of turns, the places, the cool-down's backoff, its one probe) are the
coordinator's (``coordination/``); a ``Gate`` asks it on the prompt path: one per model and
limits, made with the Datasette's coordinator.

A place under the limits is held until the request's response has completed: a prompt's for
its whole attempt, a chain's for each of its steps (``acquire`` hands back the release).

A model that answers ``rate_limit`` cools down (``Coordinator.cool_down``). Before any request
leaves, its try claims the model (``Gate.claim``): the coordinator says how long it still cools
down, in any process, or that this try is the one finding out whether it has recovered; a try
that ends without an answer or a provider error (cancelled, refused by a hook) hands that probe
on (``Gate.hand_on``).

Planning which model to try first, and stamina's backoff, need an answer without waiting for
the coordinator: ``Gate.cooling`` reads this process's mirror of each model's cool-down, the
latest it learned from its own rate limits, claims and answers. The mirror only orders the
tries; the claim decides whether a request leaves. A try that then waited for its place under
the limits while the mirror learned that the model cools down (``Gate.cooled_meanwhile``) for
longer than its prompt may wait does not leave: it claims the model again.

The cool-down is logged once per change, however many prompts (and processes) meet it: a
warning when a model that was not cooling starts to (``CoolDown.first``), and once it answers
again that it has recovered (``Coordinator.recovered``), each by the process that saw it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ..coordination import Claim, Coordinator, Release, coordinator_for
from ..coordination.local import FIRST_COOL_DOWN, LONGEST_COOL_DOWN
from ..log import logger
from ..provider_errors import ProviderError
from ..state import Slot, state_of

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..routing.route import Routed

__all__ = ["CooledMeanwhile", "Gate", "LimitsTimeout", "Release", "cooling_models", "gate_for"]


class LimitsTimeout(ProviderError):
    """A ``timeout``: the prompt's deadline passed while it waited for a place under a model's
    limits. Nothing was sent, so it is no attempt of the model's and leaves no ledger row."""


class CooledMeanwhile(Exception):
    """A try got its place under a model's limits after the model began to cool down (a rate
    limit another try met while this one waited): nothing was sent, no attempt, no row; the
    try claims the model again, which waits for the cool-down or goes on to a fallback."""


@dataclass(slots=True)
class _Seen:
    """What this process last learned of one model's cool-down: when it ends
    (``time.monotonic()``), whether rate limits in a row are unended as far as it knows, and
    the tokens of its own tries probing the model now."""

    until: float = 0.0
    rate_limited: bool = False
    probes: set[str] = field(default_factory=set)

    def left(self) -> float:
        """Seconds until the model may be tried again, as far as this process knows."""
        remaining = self.until - time.monotonic()
        if remaining > 0:
            return remaining
        if self.probes:
            return FIRST_COOL_DOWN  # a try of this process is finding out whether it recovered
        return 0.0

    def learn(self, wait: float) -> None:
        """Take the coordinator's word that the model cools down for ``wait`` seconds more."""
        self.until = time.monotonic() + wait if wait > 0 else 0.0


class Gate:
    """The limits and the cool-down of one model, as the Datasette's coordinator keeps them.

    Attributes:
        model_id: The model.
        rpm: Requests per minute allowed, or ``None``.
        concurrency: Requests allowed at once, or ``None``.
        coordinator: Keeps the limits and the cool-down, for this process or every process.
    """

    __slots__ = ("_seen", "concurrency", "coordinator", "model_id", "rpm")

    def __init__(
        self,
        model_id: str,
        rpm: float | None,
        concurrency: int | None,
        coordinator: Coordinator,
        seen: _Seen,
    ) -> None:
        self.model_id = model_id
        self.rpm = rpm
        self.concurrency = concurrency
        self.coordinator = coordinator
        self._seen = seen

    def __repr__(self) -> str:
        return f"<Gate {self.model_id!r} rpm={self.rpm} concurrency={self.concurrency}>"

    def cooling(self) -> float:
        """Seconds until the model may be tried again (0: now), as this process last learned:
        for planning the order of tries; ``claim`` decides."""
        return self._seen.left()

    def cooled_meanwhile(self) -> bool:
        """Whether this process learned, since a try's claim let it go, that the model cools
        down: the claim found it not cooling (the mirror's end was reset), so a cool-down
        the mirror holds now began after it."""
        return self._seen.until > time.monotonic()

    async def claim(self) -> Claim:
        """Claim a try of the model: the seconds it still cools down, in any process, or 0 and
        whether this try is the probe finding out whether it has recovered (the others wait
        until ``record`` or ``hand_on`` ends it)."""
        claim = await self.coordinator.claim(self.model_id)
        seen = self._seen
        seen.learn(claim.wait)
        if claim.wait > 0 or claim.probe:  # after rate limits: an answer ends them
            seen.rate_limited = True
        if claim.probe:
            seen.probes.add(claim.token)
        return claim

    async def hand_on(self, claim: Claim) -> None:
        """End ``claim``'s probe if ``record`` has not (cancelled, refused by a hook): the next
        try probes instead."""
        if not claim.probe or claim.token not in self._seen.probes:
            return
        self._seen.probes.discard(claim.token)
        await self.coordinator.hand_on(self.model_id, claim)

    async def record(self, error: ProviderError | None, claim: Claim | None = None) -> None:
        """Note how an attempt ended: ``None`` for an answer; ``claim``: the try's claim.

        Log a warning when a ``rate_limit`` starts the model's cool-down, and when the first
        answer after it says the model has recovered; a rate limit while it already cools
        extends the cool-down silently.
        """
        seen = self._seen
        probe = claim if claim is not None and claim.token in seen.probes else None
        if probe is not None:  # this try's probe, which this outcome ends
            seen.probes.discard(probe.token)
        if error is None:
            if probe is not None or seen.rate_limited:  # else no rate limits to end
                seen.rate_limited = False
                if await self.coordinator.recovered(self.model_id):
                    logger.info(
                        "datasette-llm: model %r answers again after its rate limits: its "
                        "cool-down is over and prompts go to it again. Nothing to do.",
                        self.model_id,
                    )
                seen.learn(await self.coordinator.cooling(self.model_id))
            return
        if error.kind != "rate_limit":
            if probe is not None:  # no word on whether it recovered: the next try probes
                await self.coordinator.hand_on(self.model_id, probe)
            return
        started = await self.coordinator.cool_down(self.model_id, error.retry_after)
        seen.rate_limited = True
        seen.until = max(seen.until, time.monotonic() + started.wait)
        if started.first:
            why = (
                "its provider's Retry-After"
                if error.retry_after is not None
                else "no Retry-After: a backoff doubling with each rate limit in a row, up to "
                f"{LONGEST_COOL_DOWN:g} s"
            )
            logger.warning(
                "datasette-llm: model %r is rate limited by its provider and cools down for "
                "%s s (%s): prompts that may fall back on rate_limit go to their fallbacks "
                "meanwhile, the others wait. If this recurs, set rpm or concurrency on the "
                "model to stay under the provider's limit, or raise that limit.",
                self.model_id,
                f"{round(started.wait, 2):g}",
                why,
            )

    async def acquire(self, within: float | None) -> Release:
        """Take one request's place under the limits, waiting at most ``within`` seconds;
        return what gives it back (once the request's response has completed).

        Raises:
            LimitsTimeout: The wait would pass the prompt's deadline.
        """
        rpm, concurrency = self.rpm, self.concurrency
        if rpm is None and concurrency is None:
            return _nothing
        started = time.monotonic()
        release = _nothing
        if concurrency is not None:
            leased = await self.coordinator.lease(self.model_id, concurrency, within)
            if leased is None:
                raise self._late(within, turn=False)
            release = leased
        if rpm is None:
            return release
        left = None if within is None else max(0.0, within - (time.monotonic() - started))
        try:
            paced = await self.coordinator.pace(self.model_id, rpm, left)
        except BaseException:
            release()
            raise
        if not paced:
            release()
            raise self._late(within, turn=True)
        return release

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

    def _late(self, within: float | None, *, turn: bool) -> LimitsTimeout:
        limits = (
            f"the client-side limits of {self.model_id!r} (rpm {self.rpm}, concurrency "
            f"{self.concurrency})"
        )
        if turn:  # the coordinator refuses a turn further away than the prompt may wait
            why = (
                f"the prompt's deadline would pass within {within or 0:.1f} s waiting for a "
                f"place under {limits}: its next turn under rpm is later"
            )
        else:
            why = (
                f"the prompt's deadline passed after {within or 0:.1f} s waiting for a place "
                f"under {limits}"
            )
        return LimitsTimeout("timeout", self.model_id, why)


def _nothing() -> None:
    return None


@dataclass(slots=True)
class _Gates:
    """The gates made with one coordinator, by model id and limits, and what this process
    learned of each model's cool-down from it, by model id (shared by the model's gates)."""

    coordinator: Coordinator
    gates: dict[tuple[str, float | None, int | None], Gate] = field(default_factory=dict)
    seen: dict[str, _Seen] = field(default_factory=dict)


_GATES: Final[Slot[_Gates]] = Slot("the gates")


def gate_for(datasette: Datasette, routed: Routed) -> Gate:
    """Return the gate of ``routed``'s model with its limits, for ``datasette``'s coordinator
    under the configuration that routed it."""
    model_id = routed.resolution.model_id
    reference = routed.reference
    coordinator = coordinator_for(datasette, routed.policy.config.coordination)
    state = state_of(datasette)
    held = state.get(_GATES)
    if held is None or held.coordinator is not coordinator:
        held = state.put(_GATES, _Gates(coordinator))  # what the last one kept went with it
    key = (model_id, reference.rpm, reference.concurrency)
    gate = held.gates.get(key)
    if gate is None:
        seen = held.seen.get(model_id)
        if seen is None:
            seen = held.seen[model_id] = _Seen()
        gate = held.gates[key] = Gate(
            model_id, reference.rpm, reference.concurrency, coordinator, seen
        )
    return gate


def cooling_models(datasette: Datasette) -> dict[str, float]:
    """The models of ``datasette`` cooling down after rate limits now, with the seconds left,
    as this process last learned (from its own rate limits, claims and answers)."""
    held = state_of(datasette).get(_GATES)
    if held is None:
        return {}
    cooling: dict[str, float] = {}
    for model_id, seen in held.seen.items():
        wait = seen.left()
        if wait > 0:
            cooling[model_id] = wait
    return cooling
