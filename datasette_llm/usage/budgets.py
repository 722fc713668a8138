"""Budgets per purpose: what a purpose has spent this period, and the error once it is spent.

A purpose's ``budget: {usd: 50, per: month, then: refuse}`` is checked before each prompt
tries its routed model: once the purpose's recorded cost in the current UTC day, ISO week or
month reaches ``usd``, ``then: refuse`` raises ``BudgetExceededError``, and ``then: fallback``
sends the prompt to the purpose's fallbacks instead (refusing when it has none). Spend is read
from the ledger once per period, then kept up to date as each attempt is recorded.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from ..errors import quoted

if TYPE_CHECKING:
    from ..config.values import Budget, BudgetPeriod

__all__ = ["BudgetExceededError", "period_start"]


def period_start(per: BudgetPeriod, now: float) -> float:
    """The start of the UTC day, ISO week (Monday) or month holding ``now`` (epoch seconds)."""
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if per == "week":
        day -= datetime.timedelta(days=day.weekday())
    elif per == "month":
        day = day.replace(day=1)
    return day.timestamp()


class BudgetExceededError(Exception):
    """A purpose has spent its budget for the period, and its budget says ``then: refuse``.

    Attributes:
        purpose: The purpose.
        budget: Its budget.
        spent: US dollars recorded for it since ``since``.
        since: The start of the period (seconds since the epoch, UTC).
    """

    def __init__(self, purpose: str, budget: Budget, spent: float, since: float) -> None:
        self.purpose = purpose
        self.budget = budget
        self.spent = spent
        self.since = since
        start = datetime.datetime.fromtimestamp(since, datetime.timezone.utc)
        super().__init__(
            f"Purpose {quoted(purpose)} has spent ${spent:.4f} of its ${budget.usd:g} budget "
            f"for the {budget.per} starting {start:%Y-%m-%d} (UTC), so it may not prompt again "
            f"until the next {budget.per}. Raise plugins.datasette-llm.purposes.{purpose}."
            "budget.usd, or set then: fallback to send its prompts to its fallbacks."
        )
