"""Budgets per purpose: what a purpose has spent this period, and the error once it is spent.

A purpose's ``budget: {usd: 50, per: month, then: refuse}`` is checked before each prompt
tries its routed model: once the purpose's recorded cost in the current UTC day, ISO week or
month, plus what its prompts in flight hold, reaches ``usd``, ``then: refuse`` raises
``BudgetExceededError``, and ``then: fallback`` sends the prompt to the purpose's fallbacks
instead (refusing when it has none). A prompt admitted holds its estimate (``admit``) until it
ends, so prompts started at once cannot all spend the same room. Spend is read from the ledger
once per period, then kept up to date as each attempt is recorded.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from ..errors import quoted

if TYPE_CHECKING:
    from ..config.values import Budget, BudgetPeriod
    from .ledger import Ledger, Reservation

__all__ = ["BudgetExceededError", "admit", "period_start"]


def period_start(per: BudgetPeriod, now: float) -> float:
    """The start of the UTC day, ISO week (Monday) or month holding ``now`` (epoch seconds)."""
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if per == "week":
        day -= datetime.timedelta(days=day.weekday())
    elif per == "month":
        day = day.replace(day=1)
    return day.timestamp()


async def admit(
    ledger: Ledger, purpose: str, budget: Budget, estimate: float, now: float
) -> Reservation:
    """Admit a prompt of ``purpose`` under ``budget``, holding ``estimate`` US dollars for it.

    Raises:
        BudgetExceededError: What was spent this period and what prompts in flight hold
            already reach the budget.
    """
    since = period_start(budget.per, now)
    held = await ledger.reserve(purpose, since, budget.usd, estimate)
    if isinstance(held, tuple):
        spent, reserved = held
        raise BudgetExceededError(purpose, budget, spent, since, reserved)
    return held


class BudgetExceededError(Exception):
    """A purpose has spent its budget for the period, and its budget says ``then: refuse``.

    Attributes:
        purpose: The purpose.
        budget: Its budget.
        spent: US dollars recorded for it since ``since``.
        since: The start of the period (seconds since the epoch, UTC).
        reserved: US dollars held by its prompts in flight, which will count once they end.
    """

    def __init__(
        self, purpose: str, budget: Budget, spent: float, since: float, reserved: float = 0.0
    ) -> None:
        self.purpose = purpose
        self.budget = budget
        self.spent = spent
        self.since = since
        self.reserved = reserved
        start = datetime.datetime.fromtimestamp(since, datetime.timezone.utc)
        held = f" (and ${reserved:.4f} is held by prompts in flight)" if reserved else ""
        super().__init__(
            f"Purpose {quoted(purpose)} has spent ${spent:.4f} of its ${budget.usd:g} budget "
            f"for the {budget.per} starting {start:%Y-%m-%d} (UTC){held}, so it may not prompt "
            f"again until the next {budget.per}. Raise plugins.datasette-llm.purposes."
            f"{purpose}.budget.usd, or set then: fallback to send its prompts to its fallbacks."
        )
