"""Metering: turn each attempt of a prompt into a ``UsageRecord``, and hand it on.

A record is made for each response once it has completed (each step of a chain is one), and
for each attempt that failed. It goes to the ledger (unless ``usage: {enabled: false}``), to
OpenTelemetry (``datasette_llm.telemetry``), to the prompt's ``PromptResult.usage`` (which the
``llm_prompt_context`` hooks see) and to every ``LLM.on_usage`` listener.

A prompt is priced and metered under the configuration that routed it (``Routed.policy``), which
its fallbacks are admitted under too: a configuration changed while it runs applies to the next
prompt routed, never to this one's price.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config.values import Price
from ..log import logger
from ..usage import telemetry
from ..usage.ledger import ledger_for
from ..usage.records import (
    Outcome,
    UsageRecord,
    cached_tokens,
    cost_of,
)

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncResponse

    from ..actors import Actor
    from ..routing.route import Routed
    from .results import PromptResult

__all__ = ["Meter", "Started"]


@dataclass(frozen=True, slots=True)
class Started:
    """When an attempt started, by the wall clock (for the record) and the monotonic clock.

    Attributes:
        at: Seconds since the epoch.
        clock: ``time.monotonic()`` then.
        attempt: The attempt's number within its prompt.
        fell_back_from: The model the prompt fell back from, if any.
    """

    at: float
    clock: float
    attempt: int
    fell_back_from: str | None

    @classmethod
    def now(cls, attempt: int, fell_back_from: str | None) -> Started:
        """The start of an attempt, now."""
        return cls(time.time(), time.monotonic(), attempt, fell_back_from)


class Meter:
    """Makes the records of one prompt's attempts.

    Attributes:
        datasette: The Datasette instance.
        primary: The model routing chose for the prompt; its policy's configuration prices and
            meters every attempt.
        actor: The actor the prompt is for, or ``None``.
        result: The ``PromptResult`` the records are added to.
    """

    __slots__ = ("actor", "datasette", "primary", "result")

    def __init__(
        self, datasette: Datasette, primary: Routed, actor: Actor | None, result: PromptResult
    ) -> None:
        self.datasette = datasette
        self.primary = primary
        self.actor = actor
        self.result = result

    async def response(
        self,
        routed: Routed,
        response: AsyncResponse,
        started: Started,
        first_token: float | None = None,
    ) -> None:
        """Record ``response`` of ``routed`` once it has completed (now, if it has)."""

        async def completed(done: AsyncResponse) -> None:
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

    def failure(self, routed: Routed, started: Started, outcome: Outcome) -> None:
        """Record an attempt of ``routed`` that ended with an error of kind ``outcome``."""
        self._make(routed, started, outcome, (None, None, None), None)

    def _make(
        self,
        routed: Routed,
        started: Started,
        outcome: Outcome,
        tokens: tuple[int | None, int | None, int | None],
        first_token: float | None,
    ) -> None:
        now = time.monotonic()
        config = self.primary.policy.config
        model_id = routed.resolution.model_id
        input_tokens, output_tokens, cached = tokens
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
            cost=cost_of(_price(config.pricing, routed), input_tokens, output_tokens, cached),
        )
        self.result.usage.append(record)
        try:
            telemetry.observe(record, routed.resolution.step)
        except Exception:
            logger.exception("Recording the span of usage record %s failed", record.id)
        settings = config.usage
        if settings.enabled:
            ledger_for(self.datasette).record(record)


def _price(pricing: Mapping[str, Price], routed: Routed) -> Price | None:
    """The price of ``routed``'s model: by its id, else by any name that stands for it."""
    model_id = routed.resolution.model_id
    found = pricing.get(model_id)
    if found is not None:
        return found
    canonical = routed.policy.canonical
    return next((price for name, price in pricing.items() if canonical(name) == model_id), None)
