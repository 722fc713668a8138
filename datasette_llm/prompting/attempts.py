"""Attempts: retry a failing model, then fall back, within the prompt's deadline.

For one prompt, the routed model is tried first, then each of the purpose's fallbacks in order,
each admitted through the whole policy just before it is tried (``routing.admit``). One model
is retried, with jittered exponential backoff that honours ``Retry-After`` (``stamina``), on
``rate_limit``, ``timeout``, ``server_error`` and ``connection`` errors; the next fallback is
tried on the kinds in ``fallback_on``. An ``unknown`` error is raised as it is, never retried.

``retries`` counts the requests the provider's client library makes by itself: the ``openai``
client behind llm's OpenAI models (and the ``anthropic`` client) retries twice on its own, so
each try of such a model is up to 3 requests, and datasette-llm makes ``ceil((retries + 1) / 3)``
tries: one with the default ``retries: 2``, never ``retries + 1`` tries of 3 requests each.

Under stamina's test mode (``stamina.set_testing``, which the ``FakeModelRouter`` turns on) no
backoff waits and stamina sets the number of tries; a wait past the deadline still gives up.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, TypeVar

import stamina

from ..config.values import settings_for
from ..provider_errors import (
    RETRIED_KINDS,
    Attempt,
    ErrorKind,
    ProviderError,
)
from ..routing.route import admit
from ..usage.budgets import BudgetExceededError, period_start
from ..usage.ledger import ledger_for
from .limits import Gate, gate_for
from .metering import Meter, Started

if TYPE_CHECKING:
    from llm import AsyncModel

    from ..config.values import Resilience
    from ..routing.route import Routed

__all__ = [
    "Once",
    "client_retries",
    "run_attempts",
    "tries_of",
    "within",
]

T = TypeVar("T")

Once = Callable[["Routed", "float | None", Started], Awaitable[T]]
"""One attempt: send the prompt to the routed model with this timeout (the attempt started at
``Started``), hooks around it; its
answer is the completed response (for a chain: its stream, primed with the first chunk).

It raises ``ProviderError`` for the provider's failure (any other exception is not the
provider's, and ends the prompt as it is)."""

# The module a model class comes from -> the client library that retries by itself.
_SELF_RETRYING: Final = {
    "llm.default_plugins.openai_models": "openai",
    "llm_anthropic": "anthropic",
}
_WAIT_INITIAL: Final = 0.5
_WAIT_MAX: Final = 10.0
_WAIT_JITTER: Final = 1.0


def tries_of(model: AsyncModel, retries: int) -> int:
    """How many times datasette-llm tries ``model`` for ``retries``: enough that the requests,
    the client library's own retries included, reach ``retries + 1`` (at least one try)."""
    per_try = 1 + client_retries(model)
    return max(1, math.ceil((retries + 1) / per_try))


def client_retries(model: AsyncModel) -> int:
    """How many times the client library behind ``model`` retries a request by itself."""
    module = type(model).__module__
    library = _SELF_RETRYING.get(module) or _SELF_RETRYING.get(module.partition(".")[0])
    if library is None:
        return 0
    try:
        retries = importlib.import_module(library).DEFAULT_MAX_RETRIES
    except (ImportError, AttributeError):
        return 0
    return retries if isinstance(retries, int) else 0


async def within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """Await ``awaitable`` in this task, for at most ``timeout`` seconds (``None``: no limit).

    Raises:
        TimeoutError: The time ran out (``asyncio.TimeoutError`` before Python 3.11).
    """
    if timeout is None:
        return await awaitable
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await awaitable
    return await asyncio.wait_for(awaitable, timeout)


@dataclass(slots=True)
class _Clock:
    """The prompt's deadline."""

    deadline: float | None

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def passed(self) -> bool:
        left = self.left()
        return left is not None and left <= 0

    def bound(self, timeout: float | None) -> float | None:
        left = self.left()
        if left is None:
            return timeout
        return max(0.0, left if timeout is None else min(timeout, left))


async def run_attempts(meter: Meter, once: Once[T]) -> T:
    """Try the routed model, then its fallbacks, until one answers; record every attempt.

    ``meter`` holds the prompt's Datasette, routed model, actor and ``PromptResult``, and
    records the usage of each failed attempt (``once`` records those that answered).

    Raises:
        ProviderError: The last failure, with every attempt (``attempts``), once routing has
            nothing left to try or the deadline has passed.
    """
    datasette, primary, actor, result = meter.datasette, meter.primary, meter.actor, meter.result
    config = primary.policy.config
    settings = settings_for(config, primary.policy.purpose).resilience
    deadline = None if settings.deadline is None else time.monotonic() + settings.deadline
    prompt = _Prompt(settings, _Clock(deadline), meter, once)
    plan: tuple[str, ...] = (primary.resolution.model_id, *primary.resolution.fallbacks)
    if await _over_budget(meter):
        plan = plan[1:]  # then: fallback (then: refuse has raised)
    cooling: list[tuple[Routed, Gate]] = []
    for index, model_id in enumerate(plan):
        if model_id == primary.resolution.model_id:
            routed = primary
        else:
            admitted = await admit(datasette, primary, model_id, actor)
            if isinstance(admitted, str):
                result.skipped.append(f"fallback {model_id!r} skipped because {admitted}")
                continue
            routed = admitted
        reference = routed.reference
        gate = gate_for(datasette, model_id, reference.rpm, reference.concurrency)
        if gate.cooling() and index < len(plan) - 1:
            cooling.append((routed, gate))  # tried last, if nothing after it answers
            result.skipped.append(f"{model_id!r} deferred: it is cooling down after rate limits")
            continue
        if await prompt.model(routed, gate):
            return prompt.answer()
    for routed, gate in cooling:
        if await prompt.model(routed, gate):
            return prompt.answer()
    failure = prompt.failure(primary.resolution.model_id)
    raise failure from failure.__cause__


async def _over_budget(meter: Meter) -> bool:
    """Whether the purpose has spent its budget and goes to its fallbacks.

    Raises:
        BudgetExceededError: It has, and its budget says ``then: refuse`` (or it has no
            fallback).
    """
    purpose = meter.primary.resolution.purpose
    config = meter.primary.policy.config
    purpose_config = config.purpose(purpose)
    budget = purpose_config.budget if purpose_config is not None else None
    if budget is None or purpose is None:
        return False
    since = period_start(budget.per, time.time())
    ledger = ledger_for(meter.datasette)
    spent = await ledger.spent(purpose, since)
    if spent < budget.usd:
        return False
    if budget.then == "fallback" and meter.primary.resolution.fallbacks:
        meter.result.skipped.append(
            f"{meter.primary.resolution.model_id!r} skipped: the purpose has spent its "
            f"${budget.usd:g} budget for this {budget.per}"
        )
        return True
    raise BudgetExceededError(purpose, budget, spent, since)


@dataclass(slots=True)
class _Prompt(Generic[T]):
    """One prompt's attempts: its settings, its deadline, its meter, how to try once, and how
    they have gone so far."""

    settings: Resilience
    clock: _Clock
    meter: Meter
    once: Once[T]
    last: ProviderError | None = None
    fell_back_from: str | None = None
    answered: tuple[T] | None = None

    async def model(self, routed: Routed, gate: Gate) -> bool:
        """Try ``routed``'s model; return whether to stop (it answered, or the prompt fails).

        Raises:
            ProviderError: It failed in a way that does not fall back, or the deadline passed.
        """
        try:
            self.answered = (await self._tries(routed, gate),)
        except ProviderError as error:
            self.last, self.fell_back_from = error, routed.resolution.model_id
            if error.kind not in self.settings.fallback_on or self.clock.passed():
                raise self.failure(routed.resolution.model_id) from error.__cause__
            return False
        return True

    def answer(self) -> T:
        assert self.answered is not None
        return self.answered[0]

    def failure(self, model_id: str) -> ProviderError:
        """The error the prompt ends with, holding every attempt."""
        last = self.last
        if last is None:
            skipped = "; ".join(self.meter.result.skipped) or "nothing to try"
            last = ProviderError("unknown", model_id, skipped)
        return last.with_attempts(tuple(self.meter.result.attempts))

    async def _tries(self, routed: Routed, gate: Gate) -> T:
        """Try one model, retrying it while its errors allow and the deadline holds."""
        clock = self.clock
        tries = tries_of(routed.model, self.settings.retries)

        def backoff(error: Exception) -> bool | float:
            if not isinstance(error, ProviderError) or error.kind not in RETRIED_KINDS:
                return False
            left = clock.left()
            wait = max(error.retry_after or 0.0, gate.cooling())
            if left is not None and wait >= left:
                return False
            return wait if wait else True

        async for retry in stamina.retry_context(
            on=backoff,
            attempts=tries,
            timeout=clock.left(),
            wait_initial=_WAIT_INITIAL,
            wait_max=_WAIT_MAX,
            wait_jitter=_WAIT_JITTER,
        ):
            with retry:
                return await self._try(routed, gate)
        raise AssertionError("stamina ends retrying by raising the last error")

    async def _try(self, routed: Routed, gate: Gate) -> T:
        result = self.meter.result
        model_id = routed.resolution.model_id
        number = len(result.attempts) + 1
        begun = Started.now(number, self.fell_back_from)
        if self.clock.passed():
            error = ProviderError(
                "timeout", model_id, "the prompt's deadline passed before this try"
            )
        else:
            try:
                async with gate.slot(self.clock.left()):
                    result.model_id = model_id
                    timeout = self.clock.bound(self.settings.timeout)
                    response = await self.once(routed, timeout, begun)
            except ProviderError as raised:
                error = raised
            else:
                gate.record(None)
                result.attempts.append(self._attempt(model_id, number, begun, None))
                return response
        gate.record(error)
        self.meter.failure(routed, begun, error.kind)
        result.attempts.append(self._attempt(model_id, number, begun, error.kind))
        if error.kind == "unknown" and error.__cause__ is not None:
            raise error.__cause__  # not the provider's kind of failure: the caller's to see
        raise error

    def _attempt(
        self, model_id: str, number: int, begun: Started, error: ErrorKind | None
    ) -> Attempt:
        duration = time.monotonic() - begun.clock
        return Attempt(model_id, number, duration, error, self.fell_back_from)
