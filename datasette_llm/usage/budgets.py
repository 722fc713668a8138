"""Budgets per purpose: what a purpose has spent this period, and the error once it is spent.

A purpose's ``budget: {usd: 50, per: month, then: refuse}`` is checked before each prompt
tries its routed model: once the purpose's recorded cost in the current UTC day, ISO week or
month, plus what its prompts in flight hold, reaches ``usd``, ``then: refuse`` raises
``BudgetExceededError``, and ``then: fallback`` sends the prompt to the purpose's fallbacks
instead (refusing when it has none). A prompt admitted holds its estimate (``admit``) until it
ends, so prompts started at once cannot all spend the same room.

Who decides: the coordinator of the configuration that routed the prompt (``coordination/``)
checks the spend and the holds against ``usd`` and holds the estimate, in one step. The
ledger is the record and the source of the period's spend (``Ledger.spent``: read once per
period, then kept up to date as each attempt is recorded), which ``admit`` hands to it: the
local coordinator takes it as the spend and keeps the holds in the process; a shared one
(``coordination: {redis: ...}``) starts the period's spend shared by every process from the
first ledger to meet it, read again from its table at that moment (processes sharing the
table have written their rows in it), then counts each attempt's cost as it is charged
(``charge``).

Settling never waits on the prompt's path. A hold given back (``Reservation.release``) and an
attempt's cost charged (``charge``) are calls to the coordinator (a Redis round trip for a
shared one), made from code that must not be cut short by a cancellation (the attempt's row
must reach the ledger): each runs in a task of its own, kept in the Datasette's ``State``
until it ends, so a cancelled prompt never loses one. A release starts once the costs charged
before it for its purpose have been counted, so no process ever sees a prompt's hold gone
and its cost not yet there; ``admit`` waits for the releases and charges this process has
under way for the purpose, so each prompt sees what the ones before it left; ``settled``
waits for all of them (before reading the holds, and at shutdown).

A budget running out is logged once, a warning when it first refuses a prompt, and again when it
admits one because a new period began or its ``usd`` was raised (info): not once per prompt, and
not when it admits one only because prompts in flight have ended near the limit. Which budgets
are spent is kept in the Datasette's ``State``, with the settles under way.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..config.values import CONFIG_ROOT
from ..coordination import Coordinator, Hold, Refused, coordinator_for
from ..errors import quoted
from ..log import logger
from ..routing.overlay import config_for
from ..state import Slot, state_of
from .ledger import ledger_for
from .records import usd

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..config.values import Budget, BudgetPeriod, LLMConfig
    from .records import UsageRecord

__all__ = [
    "BudgetExceededError",
    "Reservation",
    "admit",
    "charge",
    "coordinator_of",
    "period_start",
    "settled",
]


def period_start(per: BudgetPeriod, now: float) -> float:
    """The start of the UTC day, ISO week (Monday) or month holding ``now`` (epoch seconds)."""
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if per == "week":
        day -= datetime.timedelta(days=day.weekday())
    elif per == "month":
        day = day.replace(day=1)
    return day.timestamp()


def coordinator_of(datasette: Datasette, config: LLMConfig | None = None) -> Coordinator:
    """The coordinator keeping ``datasette``'s budgets under ``config`` (by default, the
    configuration in effect): its ``coordination`` settings'."""
    settings = (config if config is not None else config_for(datasette)).coordination
    return coordinator_for(datasette, settings)


async def admit(
    datasette: Datasette,
    purpose: str,
    budget: Budget,
    estimate: float,
    now: float,
    *,
    config: LLMConfig | None = None,
) -> Reservation:
    """Admit a prompt of ``purpose`` under ``budget``, holding ``estimate`` US dollars for it
    with the coordinator of ``config`` (the configuration that routed it; by default the one in
    effect); log when the budget runs out and when it renews (see the module).

    Raises:
        BudgetExceededError: What was spent this period and what prompts in flight hold
            already reach the budget.
    """
    since = period_start(budget.per, now)
    state = state_of(datasette)
    settling = state.setdefault(_SETTLING, _Settling)
    await settling.wait(purpose)  # what the prompts before this one left
    coordinator = coordinator_of(datasette, config)
    ledger = ledger_for(datasette)
    spent = await ledger.spent(purpose, since)

    async def reread() -> float:
        return await ledger.spent(purpose, since, fresh=True)

    held = await coordinator.reserve(purpose, since, budget.usd, estimate, spent, reread)
    if isinstance(held, Refused):
        refused = BudgetExceededError(purpose, budget, held.spent, since, held.reserved)
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
    return Reservation(coordinator, held, settling)


def charge(datasette: Datasette, config: LLMConfig, record: UsageRecord) -> None:
    """Count ``record``'s cost towards its purpose's budget under ``config`` with the
    coordinator (a shared one adds it to the spend every process sees; the local one leaves
    the spend to the ledger). Never waits: the coordinator is told in a task (see the module).
    """
    purpose, cost = record.purpose, record.cost
    purpose_config = config.purpose(purpose)
    budget = purpose_config.budget if purpose_config is not None else None
    if budget is None or purpose is None or not cost:
        return
    since = period_start(budget.per, record.time)  # the period the ledger counts it in
    coordinator = coordinator_of(datasette, config)

    async def count() -> None:
        await coordinator.settle(purpose, since, cost)

    state_of(datasette).setdefault(_SETTLING, _Settling).start(purpose, count, cost=True)


async def settled(datasette: Datasette) -> None:
    """Wait until every hold ``datasette``'s prompts gave back and every cost they charged has
    reached its coordinator: before reading what is held, and at shutdown before the
    coordinator is closed."""
    settling = state_of(datasette).get(_SETTLING)
    while settling is not None and await settling.wait(None):
        pass  # a release waiting for a charge may have started meanwhile


class Reservation:
    """What one prompt in flight holds of its purpose's budget, until it is released.

    Attributes:
        hold: The coordinator's hold: the purpose, the period, the US dollars held.
    """

    __slots__ = ("_coordinator", "_settling", "hold")

    def __init__(self, coordinator: Coordinator, hold: Hold, settling: _Settling) -> None:
        self._coordinator: Coordinator | None = coordinator
        self._settling = settling
        self.hold = hold

    @property
    def purpose(self) -> str:
        """The purpose."""
        return self.hold.purpose

    @property
    def usd(self) -> float:
        """US dollars held."""
        return self.hold.usd

    def __repr__(self) -> str:
        state = "held" if self._coordinator is not None else "released"
        return f"<Reservation purpose={self.purpose!r} usd={self.usd:g} {state}>"

    def release(self) -> None:
        """Give the hold back (once; the prompt's records count towards the spend now).

        Never waits: the coordinator is told in a task, once the costs charged before for the
        purpose have reached it (see the module)."""
        coordinator, self._coordinator = self._coordinator, None
        if coordinator is None:
            return
        hold = self.hold
        charged = self._settling.charges(hold.purpose)

        async def give_back() -> None:
            if charged:
                await asyncio.wait(charged)
            await coordinator.settle(hold.purpose, hold.since, 0.0, hold)

        self._settling.start(hold.purpose, give_back, cost=False)


class _Settling:
    """The charges and releases one Datasette's budgets have under way, by purpose."""

    __slots__ = ("_charges", "_releases")

    def __init__(self) -> None:
        self._charges: dict[str, set[asyncio.Task[None]]] = {}
        self._releases: dict[str, set[asyncio.Task[None]]] = {}

    def start(self, purpose: str, work: Callable[[], Awaitable[None]], *, cost: bool) -> None:
        """Run ``work``, a charge of a cost (``cost``) or a release of a hold for ``purpose``,
        in a task kept until it ends."""
        kept = (self._charges if cost else self._releases).setdefault(purpose, set())
        task = asyncio.get_running_loop().create_task(_logged(work, purpose, cost))
        kept.add(task)
        task.add_done_callback(kept.discard)

    def charges(self, purpose: str) -> list[asyncio.Task[None]]:
        """The charges under way for ``purpose`` in this event loop."""
        return _of_this_loop(self._charges.get(purpose, ()))

    async def wait(self, purpose: str | None) -> bool:
        """Wait for the charges and releases under way in this event loop for ``purpose``
        (``None``: every purpose); return whether there were any. Cancelling the wait cancels
        none of them."""
        kept = [*self._charges.items(), *self._releases.items()]
        tasks = _of_this_loop(
            task for name, under_way in kept if purpose in (None, name) for task in under_way
        )
        if tasks:
            await asyncio.wait(tasks)
        return bool(tasks)


def _of_this_loop(tasks: Iterable[asyncio.Task[None]]) -> list[asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    return [task for task in tasks if task.get_loop() is loop]


async def _logged(work: Callable[[], Awaitable[None]], purpose: str, cost: bool) -> None:
    try:
        await work()
    except Exception:
        logger.exception(
            "datasette-llm: %s purpose %r's budget failed",
            "counting a cost towards" if cost else "giving back a hold of",
            purpose,
        )


# The releases and charges under way.
_SETTLING: Final[Slot[_Settling]] = Slot("the budget settles under way")


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
        held = f" (and {usd(reserved)} is held by prompts in flight)" if reserved else ""
        super().__init__(
            f"Purpose {quoted(purpose)} has spent {usd(spent)} of its ${budget.usd:g} budget "
            f"for the {budget.per} starting {start:%Y-%m-%d} (UTC){held}, so it may not prompt "
            f"again until the next {budget.per}. Raise plugins.datasette-llm.purposes."
            f"{purpose}.budget.usd, or set then: fallback to send its prompts to its fallbacks."
        )
