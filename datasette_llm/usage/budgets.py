"""Budgets per purpose: what a purpose has spent this period, and the error once it is spent.

A purpose's ``budget: {usd: 50, per: month, then: refuse}`` is checked before each prompt
tries its routed model: once the purpose's recorded cost in the current UTC day, ISO week or
month, plus what its prompts in flight hold, reaches ``usd``, ``then: refuse`` raises
``BudgetExceededError``, and ``then: fallback`` sends the prompt to the purpose's fallbacks
instead (refusing when it has none). A prompt admitted holds its estimate (``admit``) until it
ends, so prompts started at once cannot all spend the same room. Spend is read from the ledger
once per period, then kept up to date as each attempt is recorded.

A budget running out is logged once, a warning when it first refuses a prompt, and again when it
admits one because a new period began or its ``usd`` was raised (info): not once per prompt, and
not when it admits one only because prompts in flight have ended near the limit. Which budgets
are spent is kept in the Datasette's ``State``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..config.values import CONFIG_ROOT
from ..errors import quoted
from ..log import logger
from ..state import Slot, state_of
from .ledger import ledger_for

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..config.values import Budget, BudgetPeriod
    from .ledger import Reservation

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
    datasette: Datasette, purpose: str, budget: Budget, estimate: float, now: float
) -> Reservation:
    """Admit a prompt of ``purpose`` under ``budget``, holding ``estimate`` US dollars for it
    in ``datasette``'s ledger; log when the budget runs out and when it renews (see the module).

    Raises:
        BudgetExceededError: What was spent this period and what prompts in flight hold
            already reach the budget.
    """
    since = period_start(budget.per, now)
    held = await ledger_for(datasette).reserve(purpose, since, budget.usd, estimate)
    state = state_of(datasette)
    if isinstance(held, tuple):
        spent, reserved = held
        refused = BudgetExceededError(purpose, budget, spent, since, reserved)
        spent_budgets = state.setdefault(_SPENT, dict)
        before = spent_budgets.get(purpose)
        spent_budgets[purpose] = _Spent(since, budget.usd)
        if before is None or before.since != since:
            _log_spent(refused)
        raise refused
    spent_budgets = state.get(_SPENT) or {}
    before = spent_budgets.get(purpose)
    if before is not None and (before.since != since or budget.usd > before.usd):
        del spent_budgets[purpose]
        renewed = (
            f"a new {budget.per} began"
            if before.since != since
            else f"its usd was raised from ${before.usd:g}"
        )
        logger.info(
            "datasette-llm: purpose %r is within its $%s budget for the %s again (%s): its "
            "prompts go to its routed model again. Nothing to do.",
            purpose,
            f"{budget.usd:g}",
            budget.per,
            renewed,
        )
    return held


@dataclass(frozen=True, slots=True)
class _Spent:
    """A budget that refused a prompt: the period it refused in, and its ``usd`` then."""

    since: float
    usd: float


# By purpose: the budgets that have refused a prompt and not renewed since.
_SPENT: Final[Slot[dict[str, _Spent]]] = Slot("the budgets spent")


def _log_spent(refused: BudgetExceededError) -> None:
    budget, purpose = refused.budget, refused.purpose
    start = datetime.datetime.fromtimestamp(refused.since, datetime.timezone.utc)
    path = f"{CONFIG_ROOT}.purposes.{purpose}.budget"
    if budget.then == "fallback":
        then = "go to its fallbacks (and are refused when it has none)"
        other = ""
    else:
        then = "are refused with BudgetExceededError"
        other = f", or set {path}.then: fallback to send its prompts to its fallbacks"
    logger.warning(
        "datasette-llm: purpose %r has spent its $%s budget for the %s starting %s (UTC): its "
        "prompts %s until the next %s. Raise %s.usd to allow more%s.",
        purpose,
        f"{budget.usd:g}",
        budget.per,
        f"{start:%Y-%m-%d}",
        then,
        budget.per,
        path,
        other,
    )


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
