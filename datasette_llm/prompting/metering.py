"""Metering: turn each attempt of a prompt into a ``UsageRecord``, and hand it on.

A record is made for each response once it has completed (each step of a chain is one), for
each attempt that failed, and for each attempt cancelled after it was sent (outcome
``cancelled``: what it received, charged at no less than the prompt's estimate). It goes to
the ledger (unless ``usage: {enabled: false}``), to OpenTelemetry (``datasette_llm.telemetry``),
to the prompt's ``PromptResult.usage`` (which the ``llm_prompt_context`` hooks see) and to every
``LLM.on_usage`` listener. A budgeted purpose's prompt holds its estimate of the budget with the
coordinator while it runs (``Meter.admit``, ``Meter.settle``), and each of its attempts' costs is
counted with the coordinator as its record is made (``usage.budgets.charge``: the spend shared
by every process, when coordination is shared).

Nothing on the record's path waits: a record is made in code that a cancellation must not cut
short (the ``finally`` of a cancelled attempt), so its row is handed to the ledger, and its cost
and the prompt's hold to the coordinator, each without an ``await``; the coordinator is told in
tasks kept until they end (``usage/budgets.py``), which the next prompt admitted waits for.

A prompt is priced and metered under the configuration that routed it (``Routed.policy``), which
its fallbacks are admitted under too: a configuration changed while it runs applies to the next
prompt routed, never to this one's price.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ..config.values import Price
from ..log import logger
from ..usage import telemetry
from ..usage.budgets import Reservation, admit, charge, period_start
from ..usage.ledger import ledger_for
from ..usage.records import (
    Outcome,
    UsageRecord,
    cached_tokens,
    cost_of,
    short_error,
)

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncResponse

    from ..actors import Actor
    from ..routing.route import Routed
    from .results import PromptResult

__all__ = ["MAX_TOKENS_OPTIONS", "Meter", "Received", "Started", "token_count"]

# The option that caps a response's output tokens, by the names llm's plugins give it.
MAX_TOKENS_OPTIONS: Final = ("max_tokens", "max_output_tokens", "max_completion_tokens")


@dataclass(slots=True)
class Received:
    """What an attempt under way has received from its provider so far.

    Attributes:
        sent: Whether the model has begun sending the prompt (its response is being run).
        requests: Requests the attempt's client has sent (the request's body has started going
            out), for an adapted model (``clients.OpenAttempt.watch``); ``None`` when not known.
        chunks: Chunks of the response received (a provider streams about a token a chunk).
        first: When the first chunk came (``time.monotonic()``), or ``None``.
        recorded: Whether the attempt's record has been made.
    """

    sent: bool = False
    requests: int | None = None
    chunks: int = 0
    first: float | None = None
    recorded: bool = False

    @property
    def reached(self) -> bool:
        """Whether the provider may have the request: one was sent, when the client counts
        them; else once the model has begun sending the prompt."""
        return self.sent if self.requests is None else self.requests > 0

    def chunk(self) -> None:
        """Count one chunk received."""
        if self.first is None:
            self.first = time.monotonic()
        self.chunks += 1


def token_count(value: object) -> int | None:
    """A ``max_tokens`` value as llm's options read it (``5``, ``5.0``, ``"5"``, a ``$env``
    string), or ``None`` when it is none: what caps a prompt's output, for its estimate."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Started:
    """When an attempt started, by the wall clock (for the record) and the monotonic clock.

    Attributes:
        at: Seconds since the epoch.
        clock: ``time.monotonic()`` then.
        attempt: The attempt's number within its prompt.
        fell_back_from: The model the prompt fell back from, if any.
        received: What the attempt has sent and received so far.
    """

    at: float
    clock: float
    attempt: int
    fell_back_from: str | None
    received: Received = field(default_factory=Received)

    @classmethod
    def now(cls, attempt: int, fell_back_from: str | None) -> Started:
        """The start of an attempt, now."""
        return cls(time.time(), time.monotonic(), attempt, fell_back_from)


class Meter:
    """Makes the records of one prompt's attempts, and holds its budget reservation.

    Attributes:
        datasette: The Datasette instance.
        primary: The model routing chose for the prompt; its policy's configuration prices and
            meters every attempt.
        actor: The actor the prompt is for, or ``None``.
        result: The ``PromptResult`` the records are added to.
        prompt: The prompt's text, when known (for its estimate).
        options: The caller's options of the prompt (for its ``max_tokens``).
        reservation: What the prompt holds of its purpose's budget while it runs, if anything.
    """

    __slots__ = ("actor", "datasette", "options", "primary", "prompt", "reservation", "result")

    def __init__(
        self,
        datasette: Datasette,
        primary: Routed,
        actor: Actor | None,
        result: PromptResult,
        *,
        prompt: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.datasette = datasette
        self.primary = primary
        self.actor = actor
        self.result = result
        self.prompt = prompt
        self.options: Mapping[str, Any] = options or {}
        self.reservation: Reservation | None = None

    def estimate(self, routed: Routed) -> float | None:
        """US dollars a prompt to ``routed`` may cost: the budget's ``estimate_usd``, else its
        prompt (a token a byte, an upper bound) and ``max_tokens`` (the caller's option, the
        configured one, else the model's default) at the configured price; else ``None``."""
        config = self.primary.policy.config
        purpose = config.purpose(self.primary.resolution.purpose)
        budget = purpose.budget if purpose is not None else None
        if budget is not None and budget.estimate_usd is not None:
            return budget.estimate_usd
        price = _price(config.pricing, routed)
        if price is None:
            return None
        nested = self.options.get("options")
        places = (self.options, nested if isinstance(nested, Mapping) else {})
        configured = routed.reference.options
        found = [place.get(name) for place in (*places, configured) for name in MAX_TOKENS_OPTIONS]
        found.append(getattr(routed.model, "default_max_tokens", None))
        output = next((n for n in map(token_count, found) if n is not None), None)
        if output is None:
            return None
        input_tokens = len((self.prompt or "").encode())
        return cost_of(price, input_tokens, output, None)

    async def admit(self) -> None:
        """Hold the prompt's estimate of its purpose's budget until ``settle()``, with the
        coordinator of the configuration that routed it.

        Raises:
            BudgetExceededError: The budget, with what prompts in flight hold, is spent.
        """
        config = self.primary.policy.config
        purpose = self.primary.resolution.purpose
        purpose_config = config.purpose(purpose)
        budget = purpose_config.budget if purpose_config is not None else None
        if budget is None or purpose is None or self.reservation is not None:
            return
        estimate = self.estimate(self.primary) or 0.0
        self.reservation = await admit(
            self.datasette, purpose, budget, estimate, time.time(), config=config
        )

    async def admit_in_this_period(self) -> None:
        """Before an attempt: when the budget's period has turned since the prompt's estimate
        was held, hold it in the new period instead, the one the attempt is charged in
        (its record's time is when it starts), admitted there as a new prompt would be.

        Raises:
            BudgetExceededError: The new period's budget, with what prompts in flight hold, is
                spent.
        """
        reservation = self.reservation
        if reservation is None:
            return
        purpose_config = self.primary.policy.config.purpose(self.primary.resolution.purpose)
        budget = purpose_config.budget if purpose_config is not None else None
        if budget is None or period_start(budget.per, time.time()) == reservation.hold.since:
            return
        self.settle()
        await self.admit()

    def settle(self) -> None:
        """Release the prompt's reservation: its records count towards the spend instead.

        Never waits (see the module): safe in a ``finally`` of a cancelled prompt."""
        reservation, self.reservation = self.reservation, None
        if reservation is not None:
            reservation.release()

    async def response(
        self,
        routed: Routed,
        response: AsyncResponse,
        started: Started,
        first_token: float | None = None,
    ) -> None:
        """Record ``response`` of ``routed`` once it has completed (now, if it has)."""

        async def completed(done: AsyncResponse) -> None:
            if started.received.recorded or not started.received.reached:
                # It failed or was cancelled, and was recorded so (or cancelled before its
                # request left: no row); llm still calls this when the response is read to
                # its end later (a group finishing its responses).
                return
            usage = await done.usage()
            self._make(
                routed,
                started,
                "ok",
                (usage.input, usage.output, cached_tokens(usage.details)),
                first_token,
            )

        # llm does not annotate on_done; it runs the callback at once for a completed response.
        await response.on_done(completed)  # type: ignore[no-untyped-call]

    def failure(
        self, routed: Routed, started: Started, outcome: Outcome, error: BaseException | None = None
    ) -> None:
        """Record an attempt of ``routed`` that ended with an error of kind ``outcome``
        (``error``, kept in short: ``short_error``)."""
        message = None if error is None else short_error(error)
        self._make(routed, started, outcome, (None, None, None), None, error=message)

    def cancelled(self, routed: Routed, started: Started) -> None:
        """Record an attempt of ``routed`` cancelled by its caller, if it was sent
        (``Received.reached``) and is not recorded yet.

        Its output tokens are the chunks received; its cost what they cost, and no less than
        the prompt's estimate: the provider may bill the whole request it received.
        """
        received = started.received
        if not received.reached or received.recorded:
            return
        output = received.chunks or None
        price = _price(self.primary.policy.config.pricing, routed)
        costs = [cost_of(price, None, output, None), self.estimate(routed)]
        known = [cost for cost in costs if cost is not None]
        tokens = (None, output, None)
        self._make(routed, started, "cancelled", tokens, received.first, max(known, default=None))

    def _make(
        self,
        routed: Routed,
        started: Started,
        outcome: Outcome,
        tokens: tuple[int | None, int | None, int | None],
        first_token: float | None,
        charged: float | None = None,
        *,
        error: str | None = None,
    ) -> None:
        now = time.monotonic()
        started.received.recorded = True
        config = self.primary.policy.config
        model_id = routed.resolution.model_id
        input_tokens, output_tokens, cached = tokens
        cost = cost_of(_price(config.pricing, routed), input_tokens, output_tokens, cached)
        actor_id = self.actor.get("id") if self.actor else None
        record = UsageRecord(
            id=uuid.uuid4().hex,
            time=started.at,
            purpose=self.primary.resolution.purpose,
            requested_model=self.primary.resolution.model_id,
            model=model_id,
            actor_id=None if actor_id is None else str(actor_id),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached,
            duration=now - started.clock,
            first_token=None if first_token is None else first_token - started.clock,
            outcome=outcome,
            attempt=started.attempt,
            fell_back_from=started.fell_back_from,
            cost=cost if charged is None else charged,
            error=error,
            sent=started.received.reached,
        )
        self.result.usage.append(record)
        try:
            telemetry.observe(record, routed.resolution.step)
        except Exception:
            logger.exception("Recording the span of usage record %s failed", record.id)
        settings = config.usage
        if settings.enabled:
            ledger_for(self.datasette, settings).record(record)
        try:
            charge(self.datasette, config, record)
        except Exception:
            logger.exception("Counting usage record %s towards its budget failed", record.id)


def _price(pricing: Mapping[str, Price], routed: Routed) -> Price | None:
    """The price of ``routed``'s model: by its id, else by any name that stands for it."""
    model_id = routed.resolution.model_id
    found = pricing.get(model_id)
    if found is not None:
        return found
    canonical = routed.policy.canonical
    return next((price for name, price in pricing.items() if canonical(name) == model_id), None)
