"""Sum the usage ledger for the page, its JSON and ``datasette llm usage``, as frozen values.

Every figure is an SQL aggregate over ``datasette_llm_usage`` (never a loop over its rows): per
purpose, per model and per actor (each actor's purposes too) over the last 24 hours, 7 days and
30 days (the ``time`` index; one query per window and grouping, however many actors), each
budgeted purpose's spend in its current period (the ``(purpose, time)`` index), and the spend
per UTC day and purpose of the last 30 days for the chart. The pending rows are written first,
so the summary counts every attempt made so far. ``build_usage`` fills the values
(``UsageSummary``: totals per window, budgets, the chart's days) that the operator's surface
shows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from ..config.values import Budget
from .budgets import period_start
from .ledger import TABLE, ledger_for
from .records import usd

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.database import Database

    from ..config.values import LLMConfig

__all__ = [
    "ACTOR_SQL",
    "ActorLine",
    "BUDGET_SQL",
    "BudgetStatus",
    "CHART_DAYS",
    "DAILY_SQL",
    "DAY",
    "DailyUsage",
    "Totals",
    "UsageLine",
    "UsageSummary",
    "UsageWindow",
    "WINDOW_SQL",
    "Window",
    "build_usage",
    "iso_day",
    "standard_windows",
    "usd",
    "utc_text",
]


# The values.

DAY: Final = 86_400.0
"""Seconds in a day."""


def iso_day(moment: float) -> str:
    """The UTC date of ``moment`` (seconds since the epoch), as ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(moment, timezone.utc).date().isoformat()


def utc_text(moment: float) -> str:
    """``moment`` (seconds since the epoch) as ``YYYY-MM-DD HH:MM UTC``."""
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over some attempts.

    Attributes:
        attempts: How many attempts.
        ok: How many ended with a response.
        cancelled: How many their caller cancelled after they were sent (outcome
            ``cancelled``): neither an answer nor a failure.
        failures: How many failed, by error kind (sorted by kind).
        input_tokens: Input tokens reported.
        output_tokens: Output tokens reported.
        cached_tokens: Cached input tokens reported.
        cost: US dollars, summed over the attempts that have a cost.
        priced: Attempts with a cost.
        unpriced: Attempts that used tokens (or answered) but have no cost: their model has no
            price, or the provider reported no token counts. A failure that reported no tokens
            is neither priced nor unpriced: there is nothing to price.
    """

    attempts: int = 0
    ok: int = 0
    cancelled: int = 0
    failures: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    priced: int = 0
    unpriced: int = 0

    @property
    def failed(self) -> int:
        """How many attempts failed, of any kind (not counting those cancelled)."""
        return self.attempts - self.ok - self.cancelled

    @property
    def spend(self) -> str:
        """The spend as shown: ``$X``, ``$X + N attempts without a price``, ``no price``, or
        ``-`` when there is nothing to price (only failures that reported no tokens)."""
        if not self.priced:
            return "no price" if self.unpriced else "-"
        if not self.unpriced:
            return usd(self.cost)
        plural = "s" if self.unpriced != 1 else ""
        return f"{usd(self.cost)} + {self.unpriced} attempt{plural} without a price"

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict; ``cost_usd`` is ``null`` when no attempt has a cost."""
        return {
            "attempts": self.attempts,
            "ok": self.ok,
            "cancelled": self.cancelled,
            "failures": dict(self.failures),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": self.cost if self.priced else None,
            "priced_attempts": self.priced,
            "unpriced_attempts": self.unpriced,
            "spend": self.spend,
        }


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One purpose's (or one model's) totals in a window.

    Attributes:
        name: The purpose (``None``: calls without one) or the model id.
        totals: Its sums.
    """

    name: str | None
    totals: Totals


@dataclass(frozen=True, slots=True)
class ActorLine:
    """One actor's totals in a window, over all its purposes and per purpose.

    Attributes:
        name: The actor's ``id`` (``None``: calls made without an actor).
        totals: Its sums over every purpose.
        purposes: Per purpose (``None``: calls without one), the most spent first.
    """

    name: str | None
    totals: Totals
    purposes: tuple[UsageLine, ...]

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict: the actor's totals and its ``purposes``."""
        return {
            "actor_id": self.name,
            **self.totals.to_json(),
            "purposes": [{"purpose": line.name, **line.totals.to_json()} for line in self.purposes],
        }


@dataclass(frozen=True, slots=True)
class Window:
    """A span of time to sum over, ending now.

    Attributes:
        key: A short name (``"24h"``).
        label: How the page names it (``"Last 24 hours"``).
        since: Its start, seconds since the epoch.
    """

    key: str
    label: str
    since: float

    @property
    def since_text(self) -> str:
        """Its start, as ``YYYY-MM-DD HH:MM UTC``."""
        return utc_text(self.since)


def standard_windows(now: float) -> tuple[Window, ...]:
    """The windows the page shows: the last 24 hours, 7 days and 30 days."""
    return (
        Window("24h", "Last 24 hours", now - DAY),
        Window("7d", "Last 7 days", now - 7 * DAY),
        Window("30d", "Last 30 days", now - 30 * DAY),
    )


@dataclass(frozen=True, slots=True)
class UsageWindow:
    """The sums of one window, per purpose, per model and per actor.

    Attributes:
        window: The span.
        total: Every attempt in it.
        purposes: Per purpose, by name (calls without a purpose last).
        models: Per model the attempts went to, by id.
        actors: Per actor, the most spent first (then the most attempts; calls without an
            actor last among equals), each with its purposes.
        purpose_models: Per purpose, per model its attempts went to (``models_of``): a
            purpose's own page shows them.
    """

    window: Window
    total: Totals
    purposes: tuple[UsageLine, ...]
    models: tuple[UsageLine, ...]
    actors: tuple[ActorLine, ...]
    purpose_models: Mapping[str | None, tuple[UsageLine, ...]] = field(
        default_factory=lambda: MappingProxyType({}), compare=False
    )

    def models_of(self, purpose: str | None) -> tuple[UsageLine, ...]:
        """Per model the attempts of ``purpose`` went to, the most spent first."""
        return self.purpose_models.get(purpose, ())

    def to_json(self, until: float) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "key": self.window.key,
            "label": self.window.label,
            "since": self.window.since,
            "until": until,
            "total": self.total.to_json(),
            "purposes": [{"purpose": line.name, **line.totals.to_json()} for line in self.purposes],
            "models": [{"model": line.name, **line.totals.to_json()} for line in self.models],
            "actors": [line.to_json() for line in self.actors],
        }


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A budgeted purpose's spend in its current period.

    Attributes:
        purpose: The purpose name.
        budget: Its configured budget.
        period_start: When the current period began (UTC), seconds since the epoch.
        spent: US dollars spent since then (priced attempts only).
        unpriced: Attempts since then without a price (not counted in ``spent``).
    """

    purpose: str
    budget: Budget
    period_start: float
    spent: float
    unpriced: int

    @property
    def period_text(self) -> str:
        """The current period in words: ``"today (2024-05-01)"``, ``"this week (since ...)"``."""
        start = iso_day(self.period_start)
        if self.budget.per == "day":
            return f"today ({start}, UTC)"
        return f"this {self.budget.per} (since {start}, UTC)"

    @property
    def spent_text(self) -> str:
        """The spend, as ``$X``."""
        return usd(self.spent)

    @property
    def budget_text(self) -> str:
        """The budget, as ``$X per month``."""
        return f"{usd(self.budget.usd)} per {self.budget.per}"

    @property
    def exceeded(self) -> bool:
        """Whether the spend has reached the budget."""
        return self.spent >= self.budget.usd

    @property
    def percent(self) -> float:
        """The spend as a percentage of the budget (100 for a budget of 0 that is spent)."""
        if self.budget.usd <= 0:
            return 100.0 if self.spent > 0 else 0.0
        return 100 * self.spent / self.budget.usd

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "purpose": self.purpose,
            "usd": self.budget.usd,
            "per": self.budget.per,
            "then": self.budget.then,
            "period_start": self.period_start,
            "period_start_date": iso_day(self.period_start),
            "spent_usd": self.spent,
            "remaining_usd": max(0.0, self.budget.usd - self.spent),
            "unpriced_attempts": self.unpriced,
            "exceeded": self.exceeded,
        }


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """One purpose's attempts on one UTC day.

    Attributes:
        day: The date, ``YYYY-MM-DD``.
        purpose: The purpose, or ``None``.
        attempts: How many attempts.
        cost: US dollars over its priced attempts.
        priced: How many of them have a cost.
    """

    day: str
    purpose: str | None
    attempts: int
    cost: float
    priced: int

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "date": self.day,
            "purpose": self.purpose,
            "attempts": self.attempts,
            "cost_usd": self.cost if self.priced else None,
        }


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """Everything the page's Usage section, its JSON and ``datasette llm usage`` show.

    Attributes:
        recorded: Whether the ledger table exists (``False``: no usage recorded yet).
        enabled: Whether recording is on (``usage: {enabled: ...}``).
        database: The database read, or ``None`` for Datasette's internal one.
        now: When the summary was made, or ``None`` when nothing is recorded.
        windows: The sums per window.
        budgets: Every budgeted purpose's spend in its current period.
        days: The chart's UTC dates, oldest first (empty when nothing is recorded).
        daily: Per day and purpose, for the days with usage.
        error: Why the ledger could not be read (its database is not attached), or ``None``.
    """

    recorded: bool
    enabled: bool
    database: str | None
    now: float | None
    windows: tuple[UsageWindow, ...] = ()
    budgets: tuple[BudgetStatus, ...] = ()
    days: tuple[str, ...] = ()
    daily: tuple[DailyUsage, ...] = ()
    error: str | None = None

    @property
    def now_text(self) -> str:
        """When the summary was made, as ``YYYY-MM-DD HH:MM UTC`` (``""`` without one)."""
        return "" if self.now is None else utc_text(self.now)

    def to_json(self) -> dict[str, object]:
        """Return the ``usage`` document of ``/-/llm.json`` and ``datasette llm usage --json``."""
        until = self.now or 0.0
        return {
            "recorded": self.recorded,
            "enabled": self.enabled,
            "database": self.database,
            "now": self.now,
            "error": self.error,
            "windows": [window.to_json(until) for window in self.windows],
            "budgets": [budget.to_json() for budget in self.budgets],
            "days": list(self.days),
            "daily": [day.to_json() for day in self.daily],
        }


# Summing the ledger.

CHART_DAYS: Final = 30
"""The chart shows this many UTC days, today the last."""

_UNPRICED: Final = (
    "cost IS NULL AND (outcome = 'ok' OR input_tokens IS NOT NULL OR output_tokens IS NOT NULL)"
)
_SUMS: Final = (
    "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), TOTAL(cost), "
    f"COUNT(cost), SUM({_UNPRICED})"
)
WINDOW_SQL: Final = (
    "SELECT {column}, outcome, " + _SUMS + f" FROM {TABLE} "
    "WHERE time >= :since AND time <= :until GROUP BY {column}, outcome"
)
"""Per purpose (or model) and outcome over one window; ``{column}`` is ``purpose`` or ``model``."""
ACTOR_SQL: Final = (
    "SELECT actor_id, purpose, outcome, " + _SUMS + f" FROM {TABLE} "
    "WHERE time >= :since AND time <= :until GROUP BY actor_id, purpose, outcome"
)
"""Per actor, purpose and outcome over one window."""
PURPOSE_MODEL_SQL: Final = (
    "SELECT purpose, model, outcome, " + _SUMS + f" FROM {TABLE} "
    "WHERE time >= :since AND time <= :until GROUP BY purpose, model, outcome"
)
"""Per purpose, model and outcome over one window."""
BUDGET_SQL: Final = (
    f"SELECT TOTAL(cost), SUM({_UNPRICED}) FROM {TABLE} "
    "WHERE purpose = :purpose AND time >= :since AND time <= :until"
)
DAILY_SQL: Final = (
    f"SELECT CAST(time / {DAY:.0f} AS INTEGER) AS day, purpose, COUNT(*), TOTAL(cost), "
    f"COUNT(cost) FROM {TABLE} WHERE time >= :since AND time <= :until "
    "GROUP BY day, purpose ORDER BY day"
)


def _group(row: Any) -> Totals:
    """One ``(name, outcome, sums...)`` row of ``WINDOW_SQL`` (or of ``ACTOR_SQL`` from its
    second column) as totals."""
    outcome, attempts = str(row[1]), int(row[2])
    return Totals(
        attempts=attempts,
        ok=attempts if outcome == "ok" else 0,
        cancelled=attempts if outcome == "cancelled" else 0,
        failures=MappingProxyType({} if outcome in ("ok", "cancelled") else {outcome: attempts}),
        input_tokens=int(row[3] or 0),
        output_tokens=int(row[4] or 0),
        cached_tokens=int(row[5] or 0),
        cost=float(row[6] or 0),
        priced=int(row[7] or 0),
        unpriced=int(row[8] or 0),
    )


def _add(parts: Iterable[Totals]) -> Totals:
    """Add up totals (one per group of rows: a handful, never one per row)."""
    parts = list(parts)
    failures: dict[str, int] = {}
    for part in parts:
        for kind, count in part.failures.items():
            failures[kind] = failures.get(kind, 0) + count
    return Totals(
        attempts=sum(part.attempts for part in parts),
        ok=sum(part.ok for part in parts),
        cancelled=sum(part.cancelled for part in parts),
        failures=MappingProxyType(dict(sorted(failures.items()))),
        input_tokens=sum(part.input_tokens for part in parts),
        output_tokens=sum(part.output_tokens for part in parts),
        cached_tokens=sum(part.cached_tokens for part in parts),
        cost=sum(part.cost for part in parts),
        priced=sum(part.priced for part in parts),
        unpriced=sum(part.unpriced for part in parts),
    )


def _name_order(line: UsageLine) -> tuple[bool, str]:
    return line.name is None, line.name or ""


def _spend_order(line: UsageLine | ActorLine) -> tuple[float, int, bool, str]:
    return -line.totals.cost, -line.totals.attempts, line.name is None, line.name or ""


async def _actors(db: Database, params: dict[str, float]) -> tuple[ActorLine, ...]:
    groups: dict[str | None, dict[str | None, list[Totals]]] = {}
    for row in (await db.execute(ACTOR_SQL, params)).rows:
        groups.setdefault(row[0], {}).setdefault(row[1], []).append(_group(row[1:]))
    actors = []
    for actor, purposes in groups.items():
        found = [UsageLine(name, _add(parts)) for name, parts in purposes.items()]
        lines = tuple(sorted(found, key=_spend_order))
        actors.append(ActorLine(actor, _add(line.totals for line in lines), lines))
    return tuple(sorted(actors, key=_spend_order))


async def _window(db: Database, window: Window, now: float) -> UsageWindow:
    params = {"since": window.since, "until": now}
    lines: dict[str, tuple[UsageLine, ...]] = {}
    everything: list[Totals] = []
    for column in ("purpose", "model"):
        rows = (await db.execute(WINDOW_SQL.format(column=column), params)).rows
        groups: dict[str | None, list[Totals]] = {}
        for row in rows:
            groups.setdefault(row[0], []).append(_group(row))
        if column == "purpose":
            everything = [part for parts in groups.values() for part in parts]
        found = [UsageLine(name, _add(parts)) for name, parts in groups.items()]
        lines[column] = tuple(sorted(found, key=_name_order))
    actors = await _actors(db, params)
    by_purpose: dict[str | None, dict[str | None, list[Totals]]] = {}
    for row in (await db.execute(PURPOSE_MODEL_SQL, params)).rows:
        by_purpose.setdefault(row[0], {}).setdefault(row[1], []).append(_group(row[1:]))
    purpose_models = {
        purpose: tuple(
            sorted(
                (UsageLine(model, _add(parts)) for model, parts in models.items()), key=_spend_order
            )
        )
        for purpose, models in by_purpose.items()
    }
    return UsageWindow(
        window,
        _add(everything),
        lines["purpose"],
        lines["model"],
        actors,
        MappingProxyType(purpose_models),
    )


async def _budgets(db: Database | None, config: LLMConfig, now: float) -> list[BudgetStatus]:
    statuses = []
    for name, purpose_config in config.purposes.items():
        budget = purpose_config.budget
        if budget is None:
            continue
        start = period_start(budget.per, now)
        spent, unpriced = 0.0, 0
        if db is not None:
            params = {"purpose": name, "since": start, "until": now}
            row = (await db.execute(BUDGET_SQL, params)).first()
            if row is not None:
                spent, unpriced = float(row[0] or 0), int(row[1] or 0)
        statuses.append(BudgetStatus(name, budget, start, spent, unpriced))
    return statuses


async def _daily(db: Database, now: float) -> tuple[tuple[str, ...], tuple[DailyUsage, ...]]:
    today = int(now // DAY)
    first = today - CHART_DAYS + 1
    days = tuple(iso_day(day * DAY) for day in range(first, today + 1))
    rows = (await db.execute(DAILY_SQL, {"since": first * DAY, "until": now})).rows
    daily = tuple(
        DailyUsage(iso_day(int(row[0]) * DAY), row[1], int(row[2]), float(row[3]), int(row[4]))
        for row in rows
    )
    return days, daily


async def build_usage(
    datasette: Datasette,
    config: LLMConfig,
    windows: Sequence[Window] | None = None,
    now: float | None = None,
) -> UsageSummary:
    """Write the pending ledger rows, then sum the ledger (see the module).

    Args:
        datasette: The instance whose ledger is read.
        config: Its configuration (where the ledger is, the budgets).
        windows: The spans to sum over; the last 24 hours, 7 and 30 days by default.
        now: The end of every span (seconds since the epoch); the current time by default.
    """
    settings = config.usage
    ledger = ledger_for(datasette)
    try:
        db = ledger.database_object()
    except KeyError:
        error = (
            f"The usage database {settings.database!r} is not attached: serve it "
            f"(datasette {settings.database}.db ...) or change usage: database."
        )
        return UsageSummary(False, settings.enabled, settings.database, None, error=error)
    await ledger.flush()
    now = time.time() if now is None else now
    if not await db.table_exists(TABLE):
        budgets = tuple(await _budgets(None, config, now))
        return UsageSummary(False, settings.enabled, settings.database, None, budgets=budgets)
    windows = standard_windows(now) if windows is None else windows
    days, daily = await _daily(db, now)
    return UsageSummary(
        recorded=True,
        enabled=settings.enabled,
        database=settings.database,
        now=now,
        windows=tuple([await _window(db, window, now) for window in windows]),
        budgets=tuple(await _budgets(db, config, now)),
        days=days,
        daily=daily,
    )
