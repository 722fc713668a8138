"""Attempts: retry a failing model, then fall back, within the prompt's deadline.

For one prompt, the routed model is tried first, then each of the purpose's fallbacks in order,
each admitted through the whole policy just before it is tried (``routing.admit``). One model
is retried, with jittered exponential backoff that honours ``Retry-After`` (``stamina``), on
``rate_limit``, ``timeout``, ``server_error`` and ``connection`` errors; the next fallback is
tried on the kinds in ``fallback_on``. An ``unknown`` error is raised as it is, never retried.

Every wait is bounded: a ``Retry-After`` (or a model's cool-down) longer than the time left
before the deadline, or with no deadline longer than ``max_wait``, is not waited for: the
prompt goes on to its next fallback at once, or ends with ``rate_limit``, and the model cools
down for it. A cooling model is skipped for the fallbacks only when ``fallback_on`` names
``rate_limit``; otherwise its cool-down is waited for within those bounds. When it names
``rate_limit`` and a later model is left, a ``rate_limit`` is retried on the same model only
after the ``Retry-After`` the provider gave: one without (an exhausted quota), or a model
cooling down after other prompts' rate limits, goes on to the later model at once. One try at
a time finds out whether a cooled model has recovered; one that ends without an answer hands
that on.

``retries`` counts requests. A model whose client datasette-llm adapts (``clients.adapt``:
llm's OpenAI models and the plugins subclassing them, llm-anthropic's models) makes exactly
one request per try, so it is tried ``retries + 1`` times. A model whose client library
retries by itself and cannot be adapted (a subclass of llm's OpenAI classes that builds its
own client) makes up to 3 requests per try, and datasette-llm makes
``ceil((retries + 1) / 3)`` tries: one with the default ``retries: 2``.

Under stamina's test mode (``stamina.set_testing``, which the ``FakeModelRouter`` turns on) no
backoff waits and stamina sets the number of tries; a wait past the deadline still gives up.

Falling back is logged once per change, not once per prompt: a warning the first time a prompt
of a purpose is answered by a fallback instead of its routed model (and why: the routed model's
error kind, its cool-down or the budget), and when a prompt of that purpose is answered by its
routed model again. Which purposes are falling back is kept in the Datasette's ``State``.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, TypeVar

import stamina

from ..coordination import Claim
from ..log import logger
from ..provider_errors import (
    RETRIED_KINDS,
    Attempt,
    ErrorKind,
    ProviderError,
)
from ..routing.route import admit
from ..state import Slot, state_of
from ..usage.budgets import BudgetExceededError
from .clients import adapt, client_library, prepare
from .limits import CooledMeanwhile, Gate, LimitsTimeout, gate_for
from .metering import Meter, Started

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from ..config.values import Resilience
    from ..routing.route import Routed

__all__ = [
    "falling_back",
    "Clock",
    "Once",
    "cooled_meanwhile",
    "client_retries",
    "run_attempts",
    "Settle",
    "tries_of",
    "within",
]

T = TypeVar("T")

Settle = Callable[["ProviderError | None"], Awaitable[None]]
"""Settle an attempt: how it ended (``None``: answered) goes to its model's limits, a failure's
ledger row is made, and the attempt joins ``result.attempts``. The first call counts; later ones
do nothing."""

Once = Callable[["Routed", "float | None", Started, Settle], Awaitable[T]]
"""One attempt: send the prompt to the routed model with this timeout (the attempt started at
``Started``), hooks around it; its answer is the completed response (for a chain: its stream,
primed with the first chunk).

It raises ``ProviderError`` for the provider's failure (any other exception is not the
provider's, and ends the prompt as it is). It settles the attempt before its hooks exit, so
that they see it in ``result.attempts`` and ``result.usage``; what it leaves unsettled is
settled when it returns or raises."""

# The module of a model class whose client is built inside ``execute()`` (so no client of it
# can be adapted) -> its client library, which retries by itself.
_WAIT_INITIAL: Final = 0.5
_WAIT_MAX: Final = 10.0
_WAIT_JITTER: Final = 1.0
_GO: Final = Claim(0.0)
"""A try that goes without waiting for the cool-down (stamina's test mode): no probe."""


def cooled_meanwhile(gate: Gate, clock: Clock) -> bool:
    """Whether a try that has just got its place under ``gate``'s limits must not leave: the
    model began to cool down while it waited (``Gate.cooled_meanwhile``) for longer than the
    prompt may wait (``Clock.may_wait``), so it would only be refused. A shorter cool-down
    lets it go: the limits already space such tries out, and a provider limiting requests per
    second answers the next one. Never in stamina's test mode, which waits for nothing."""
    if stamina.is_testing() or not gate.cooled_meanwhile():
        return False
    return not clock.may_wait(gate.cooling())


def tries_of(model: AsyncModel, retries: int) -> int:
    """How many times datasette-llm tries ``model`` for ``retries``: enough that the requests,
    the client library's own retries included, reach ``retries + 1`` (at least one try);
    ``retries + 1`` for a model whose client datasette-llm adapts (one request per try)."""
    per_try = 1 + client_retries(model)
    return max(1, math.ceil((retries + 1) / per_try))


def client_retries(model: AsyncModel) -> int:
    """How many times the client library behind ``model`` retries a request by itself: never
    for a model whose client datasette-llm adapts (``clients.adapt``, which adapts it first)."""
    if adapt(model):
        return 0
    library = client_library(model)
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
class Clock:
    """A prompt's deadline (``time.monotonic()``), or ``None`` for none, and how long it may
    wait for a model.

    Attributes:
        deadline: When the prompt must have ended.
        max_wait: Without a deadline, the longest it may wait for a model (``max_wait``).
    """

    deadline: float | None
    max_wait: float

    @classmethod
    def start(cls, meter: Meter) -> Clock:
        """The deadline of the prompt ``meter`` records, starting now (its ``deadline``)."""
        resilience = meter.primary.policy.resilience
        seconds = resilience.deadline
        deadline = None if seconds is None else time.monotonic() + seconds
        return cls(deadline, resilience.max_wait)

    def may_wait(self, wait: float, *, waited: float = 0.0) -> bool:
        """Whether the prompt may wait ``wait`` seconds more for a model, having waited
        ``waited`` for it already: less than the time left before its deadline; without a
        deadline, at most ``max_wait`` in all."""
        left = self.left()
        if left is not None:
            return wait < left
        return waited + wait <= self.max_wait

    def left(self) -> float | None:
        """Seconds left before the deadline (``None``: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def passed(self) -> bool:
        """Whether the deadline has passed."""
        left = self.left()
        return left is not None and left <= 0

    def bound(self, timeout: float | None) -> float | None:
        """``timeout``, cut to the time left before the deadline."""
        left = self.left()
        if left is None:
            return timeout
        return max(0.0, left if timeout is None else min(timeout, left))


async def run_attempts(
    meter: Meter,
    once: Once[T],
    clock: Clock | None = None,
    *,
    slots: bool = True,
    settle: bool = True,
    before: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """Try the routed model, then its fallbacks, until one answers; record every attempt.

    ``meter`` holds the prompt's Datasette, routed model, actor and ``PromptResult``, and
    records the usage of each failed attempt (``once`` records those that answered).
    ``clock``: the prompt's deadline, when the caller started it (a chain bounds its later
    steps by it too). ``slots``: each attempt holds its place under the model's limits while
    ``once`` runs; ``False`` when ``once`` takes them itself (a chain: one for each step, each
    held until that step's response has completed). A
    budgeted purpose's prompt holds its estimate of the budget until this returns or raises;
    with ``settle=False``, until the caller settles it (``Meter.settle``) once its call has
    ended, when it goes on after this returns (a chain's later steps). It is settled here
    whenever this raises. ``before`` runs once the prompt is admitted, before its first
    attempt, outside any place under a model's limits, within its deadline (a reply's
    pending tool calls): the deadline passing meanwhile ends the prompt with ``timeout``,
    nothing sent, no row.

    Raises:
        ProviderError: The last failure, with every attempt (``attempts``), once routing has
            nothing left to try or the deadline has passed.
        BudgetExceededError: The purpose's budget refuses, or is why nothing was tried.
    """
    try:
        answer = await _attempts(meter, once, clock or Clock.start(meter), slots, before)
    except BaseException:
        meter.settle()
        raise
    if settle:
        meter.settle()
    return answer


async def _attempts(
    meter: Meter,
    once: Once[T],
    clock: Clock,
    slots: bool,
    before: Callable[[], Awaitable[None]] | None,
) -> T:
    datasette, primary, actor, result = meter.datasette, meter.primary, meter.actor, meter.result
    settings = primary.policy.resilience
    prompt = _Prompt(settings, clock, meter, once, slots)
    plan: tuple[str, ...] = (primary.resolution.model_id, *primary.resolution.fallbacks)
    refused = await _over_budget(meter)
    if before is not None:
        try:
            await within(before(), clock.left())
        except TimeoutError:
            model_id = primary.resolution.model_id
            raise ProviderError(
                "timeout",
                model_id,
                "the prompt's deadline passed before anything was sent (its tool calls ran)",
            ) from None
    why: str | None = None  # why the routed model did not answer, once it has not
    if refused is not None:
        plan = plan[1:]  # then: fallback (then: refuse has raised)
        why = "over budget"
    cooling: list[tuple[Routed, Gate]] = []
    admitted: dict[str, Routed | str] = {primary.resolution.model_id: primary}

    async def admitted_as(model_id: str) -> Routed | str:
        """The fallback admitted (``admit``), or why not; each is admitted once a prompt."""
        if model_id not in admitted:
            admitted[model_id] = await admit(datasette, primary, model_id, actor)
        return admitted[model_id]

    def cooled(deferred: list[tuple[Routed, Gate]]) -> bool:
        """Whether one of the models deferred for their cool-down has cooled."""
        return any(not gate.cooling() for _, gate in deferred)

    def later_than(index: int) -> Callable[[], Awaitable[bool]]:
        async def onward() -> bool:
            """Whether a model after ``index`` may answer now: admitted, and not cooling down
            (a model deferred for its cool-down, once it has cooled, counts too)."""
            if cooled(cooling):
                return True
            for model_id in plan[index + 1 :]:
                later = await admitted_as(model_id)
                if not isinstance(later, str) and not gate_for(datasette, later).cooling():
                    return True
            return False

        return onward

    def cooled_after(index: int) -> Callable[[], Awaitable[bool]] | None:
        """For the deferred models, tried last: whether one after ``index`` has cooled."""
        if index == len(cooling) - 1:
            return None

        async def onward() -> bool:
            return cooled(cooling[index + 1 :])

        return onward

    for index, model_id in enumerate(plan):
        routed_or_why = await admitted_as(model_id)
        if isinstance(routed_or_why, str):
            result.skipped.append(f"fallback {model_id!r} skipped because {routed_or_why}")
            continue
        routed = routed_or_why
        gate = gate_for(datasette, routed)
        # As this process last learned: the claim before sending decides (``_cooled``).
        if gate.cooling() and index < len(plan) - 1 and "rate_limit" in settings.fallback_on:
            cooling.append((routed, gate))  # tried last, if nothing after it answers
            result.skipped.append(f"{model_id!r} deferred: it is cooling down after rate limits")
            why = why or "cooling down"
            continue
        onward = later_than(index) if index < len(plan) - 1 or cooling else None
        if await prompt.model(routed, gate, onward=onward):
            _answered_by(meter, model_id, why)
            return prompt.answer()
        if why is None and prompt.last is not None:
            skipped = prompt.last.kind == "rate_limit" and not prompt.sent
            # Skipped: another process's rate limit, which this one learned of as it claimed.
            why = "cooling down" if skipped else prompt.last.kind
    for index, (routed, gate) in enumerate(cooling):
        if await prompt.model(routed, gate, onward=cooled_after(index)):
            _answered_by(meter, routed.resolution.model_id, why)
            return prompt.answer()
    if refused is not None and prompt.last is None:
        raise refused  # no fallback could be tried: the budget is why nothing answered
    failure = prompt.failure(primary.resolution.model_id)
    raise failure from failure.__cause__


# (purpose, routed model) -> the fallback that answered first; left out once it answers again.
_FALLING_BACK: Final[Slot[dict[tuple[str | None, str], str]]] = Slot("the purposes falling back")


def falling_back(datasette: Datasette) -> dict[tuple[str | None, str], str]:
    """The purposes whose prompts a fallback answers now, instead of their routed model:
    ``(purpose, routed model)`` to the fallback that answered first (left out once the routed
    model answers again). A copy."""
    held = state_of(datasette).get(_FALLING_BACK)
    return {} if held is None else dict(held)


_FAILED: Final = (
    "Check the provider of {model} (its status page, its key), or route the purpose to another "
    "model (/-/llm shows its chain)."
)
_RATE_LIMITED: Final = (
    "Set rpm or concurrency on {model} to stay under its provider's rate limit, or raise that "
    "limit."
)
_WHY: Final = {
    "over budget": ("the purpose has spent its budget", "The budget's own warning says more."),
    "cooling down": ("it is cooling down after rate limits", _RATE_LIMITED),
    "rate_limit": ("it failed with rate_limit", _RATE_LIMITED),
}
"""Why the routed model did not answer, and what the operator can do, by ``why`` (the error
kind, ``"cooling down"`` or ``"over budget"``); any other kind: it failed, ``_FAILED``."""


def _answered_by(meter: Meter, model_id: str, why: str | None) -> None:
    """Note that ``model_id`` answered the prompt: log when its purpose starts answering
    from a fallback instead of its routed model (``why`` it did not answer), and when its routed
    model answers again. Once per change: a purpose that already falls back logs nothing."""
    resolution = meter.primary.resolution
    routed, purpose = resolution.model_id, resolution.purpose
    prompts = f"of purpose {purpose!r}" if purpose is not None else "without a purpose"
    state = state_of(meter.datasette)
    if model_id == routed:
        falling = state.get(_FALLING_BACK)
        fell_to = None if falling is None else falling.pop((purpose, routed), None)
        if fell_to is not None:
            logger.info(
                "datasette-llm: routed model %r answers prompts %s again (they fell back to "
                "%r). Nothing to do.",
                routed,
                prompts,
                fell_to,
            )
        return
    falling = state.setdefault(_FALLING_BACK, dict)
    if (purpose, routed) in falling:
        return
    falling[(purpose, routed)] = model_id
    reason, advice = _WHY.get(why or "", (f"it failed with {why or 'an error'}", _FAILED))
    logger.warning(
        "datasette-llm: fallback %r answers prompts %s instead of their routed model %r (%s), "
        "until %r answers again. %s",
        model_id,
        prompts,
        routed,
        reason,
        routed,
        advice.format(model=repr(routed)),
    )


async def _over_budget(meter: Meter) -> BudgetExceededError | None:
    """Admit the prompt under its purpose's budget (``Meter.admit``), or say why not.

    Returns:
        ``None`` once admitted (or with no budget); the refusal when the budget, with what
        prompts in flight hold, is spent and says ``then: fallback``: go to the fallbacks.

    Raises:
        BudgetExceededError: It is spent and says ``then: refuse`` (or there is no fallback).
    """
    try:
        await meter.admit()
    except BudgetExceededError as refused:
        if refused.budget.then != "fallback" or not meter.primary.resolution.fallbacks:
            raise
        budget = refused.budget
        meter.result.skipped.append(
            f"{meter.primary.resolution.model_id!r} skipped: the purpose has spent its "
            f"${budget.usd:g} budget for this {budget.per}"
        )
        return refused
    return None


@dataclass(slots=True)
class _Prompt(Generic[T]):
    """One prompt's attempts: its settings, its deadline, its meter, how to try once, and how
    they have gone so far."""

    settings: Resilience
    clock: Clock
    meter: Meter
    once: Once[T]
    slots: bool = True
    last: ProviderError | None = None
    fell_back_from: str | None = None
    answered: tuple[T] | None = None
    onward: bool = False  # a rate limit of the model being tried goes on to a later model
    sent: bool = False  # the model being tried was sent a try (not skipped for its cool-down)
    _later: Callable[[], Awaitable[bool]] | None = None  # whether one may answer, once asked

    async def model(
        self, routed: Routed, gate: Gate, *, onward: Callable[[], Awaitable[bool]] | None = None
    ) -> bool:
        """Try ``routed``'s model; return whether to stop (it answered, or the prompt fails).

        ``onward``: later models of the plan are left; it says whether one of them may
        answer (is admitted: ``admit``). It is asked only when a rate limit makes it matter,
        so a prompt answered at once admits no fallback.

        Raises:
            ProviderError: It failed in a way that does not fall back, or the deadline passed.
        """
        going_on = onward is not None and "rate_limit" in self.settings.fallback_on
        self.onward, self._later = going_on, onward if going_on else None
        self.sent = False
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

        def backoff(error: BaseException) -> bool | float:
            if not isinstance(error, ProviderError) or error.kind not in RETRIED_KINDS:
                return False
            if error.kind == "rate_limit" and error.retry_after is None and self.onward:
                # No Retry-After (an exhausted quota answers so): how long the model needs is
                # anybody's guess, and a later model can answer now. The model cools down.
                return False
            wait = max(error.retry_after or 0.0, gate.cooling())
            if not self.clock.may_wait(wait):
                return False  # on to the next fallback at once; the model cools down meanwhile
            return wait if wait else True

        # The first try runs outside stamina's retry context: a prompt answered at once (most
        # of them) pays nothing for the retry machinery, whose objects are cyclic garbage. A
        # first try that failed in a way worth retrying is handed to stamina as its first
        # attempt (raised again inside it), so stamina counts it and waits its backoff.
        try:
            return await self._try(routed, gate)
        except Exception as error:
            if tries == 1 or backoff(error) is False:
                raise
            failed: Exception | None = error
        async for retry in stamina.retry_context(
            on=backoff,
            attempts=tries,
            timeout=clock.left(),
            wait_initial=_WAIT_INITIAL,
            wait_max=min(_WAIT_MAX, self.settings.max_wait),
            wait_jitter=_WAIT_JITTER,
        ):
            with retry:
                if failed is not None:
                    first, failed = failed, None
                    raise first
                return await self._try(routed, gate)
        raise AssertionError("stamina ends retrying by raising the last error")

    async def _onward_known(self) -> bool:
        """Whether a later model may answer this prompt's rate limit: ``onward``, once the
        later models of the plan have been asked (a refused fallback never answers)."""
        later, self._later = self._later, None
        if later is not None and self.onward:
            self.onward = await later()
        return self.onward

    async def _cooled(self, routed: Routed, gate: Gate) -> Claim:
        """Wait until the model has cooled down, in any process, and claim its try
        (``Gate.claim``); return the claim: whether this try is the one finding out whether
        it has recovered.

        Raises:
            ProviderError: ``rate_limit``, with nothing sent: it cools down for longer than
                the prompt may wait.
        """
        began = time.monotonic()
        while (wait := (claim := await gate.claim()).wait) > 0:
            # Bounded in all, not each wait alone: while another try finds out whether the
            # model has recovered, the wait is renewed until that try ends.
            waited = time.monotonic() - began
            if not self.clock.may_wait(wait, waited=waited):
                model_id = routed.resolution.model_id
                bound = "its deadline" if self.clock.deadline is not None else "max_wait"
                raise ProviderError(
                    "rate_limit",
                    model_id,
                    f"{model_id!r} cools down after rate limits for {wait:.3g} s more (after "
                    f"{waited:.3g} s of waiting), longer than {bound} lets the prompt wait",
                    retry_after=wait,
                )
            if stamina.is_testing():
                return _GO  # stamina's test mode waits for nothing; past the bound still fails
            if await self._onward_known():
                # Cooling after other prompts' rate limits, or another try is finding out
                # whether it has recovered: a later model answers meanwhile.
                model_id = routed.resolution.model_id
                raise ProviderError(
                    "rate_limit",
                    model_id,
                    f"{model_id!r} cools down after rate limits for {wait:.3g} s more; on to "
                    "the next model",
                )
            await asyncio.sleep(wait)
        return claim  # it may go: the probe, if the model was rate limited

    async def _try(self, routed: Routed, gate: Gate) -> T:
        while True:
            claim = await self._cooled(routed, gate)
            try:
                return await self._send(routed, gate, claim)
            except CooledMeanwhile:
                self.sent = False  # nothing left: claim the model again
            except ProviderError as error:
                if error.kind == "rate_limit" and error.retry_after is None:
                    await self._onward_known()  # the retry decision (``backoff``) needs it
                raise
            finally:
                if claim.probe:  # ended unrecorded (cancelled, refused): the next try probes
                    await gate.hand_on(claim)

    async def _send(self, routed: Routed, gate: Gate, claim: Claim) -> T:
        """One try of ``routed`` under ``claim``: one attempt, one ledger row, when its
        request is sent.

        Raises:
            ProviderError: The attempt failed. A ``timeout`` before anything was sent (the
                deadline passed before the try, or while it waited for a place under the
                model's limits: ``LimitsTimeout``) is no attempt: no row, not in ``attempts``.
        """
        result = self.meter.result
        model_id = routed.resolution.model_id
        number = len(result.attempts) + 1
        await self.meter.admit_in_this_period()  # it is charged in the period it starts in
        begun = Started.now(number, self.fell_back_from)
        if self.clock.passed():
            raise ProviderError("timeout", model_id, "the prompt's deadline passed before this try")
        slot: AbstractAsyncContextManager[None] = nullcontext()
        if self.slots:
            if gate.rpm is not None:  # a first client built after its turn would leave late
                prepare(routed.model, routed.key)
            slot = gate.slot(self.clock.left())
        settled = False

        async def settle(error: ProviderError | None) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            await gate.record(error, claim)
            if error is not None:
                self.meter.failure(routed, begun, error.kind, error)
            kind = None if error is None else error.kind
            result.attempts.append(self._attempt(model_id, number, begun, kind))

        try:
            async with slot:
                if cooled_meanwhile(gate, self.clock):
                    raise CooledMeanwhile  # while it waited for its place: not sent
                result.model_id = model_id
                timeout = self.clock.bound(self.settings.timeout)
                self.sent = True
                try:
                    response = await self.once(routed, timeout, begun, settle)
                except ProviderError as raised:
                    if not isinstance(raised, LimitsTimeout):
                        # Before the place is given back: a try waiting for it sees a rate
                        # limit's cool-down (``cooled_meanwhile``), in any coordination.
                        await settle(raised)
                    raise
        except (LimitsTimeout, CooledMeanwhile):
            raise  # its wait for a place (a chain's takes it in once): nothing was sent
        except ProviderError as raised:
            error = raised
        except asyncio.CancelledError:
            self.meter.cancelled(routed, begun)  # a row, if the provider was sent it
            raise
        else:
            await settle(None)
            return response
        await settle(error)
        if error.kind == "unknown" and error.__cause__ is not None:
            raise error.__cause__  # not the provider's kind of failure: the caller's to see
        raise error

    def _attempt(
        self, model_id: str, number: int, begun: Started, error: ErrorKind | None
    ) -> Attempt:
        duration = time.monotonic() - begun.clock
        return Attempt(model_id, number, duration, error, self.fell_back_from)
