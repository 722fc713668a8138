"""The usage summary as frozen typed values: totals per window, budgets, the chart's days.

``usage_report.build_usage`` fills them from the ledger; the page, its JSON and
``datasette llm usage`` show them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Final

from ..config import Budget

__all__ = [
    "DAY",
    "BudgetStatus",
    "DailyUsage",
    "Totals",
    "UsageLine",
    "UsageSummary",
    "UsageWindow",
    "Window",
    "iso_day",
    "standard_windows",
    "usd",
    "utc_text",
]

DAY: Final = 86_400.0
"""Seconds in a day."""


def usd(value: float) -> str:
    """Format US dollars: cents from $1 up, four decimals below."""
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


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
    failures: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    priced: int = 0
    unpriced: int = 0

    @property
    def failed(self) -> int:
        """How many attempts failed, of any kind."""
        return self.attempts - self.ok

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
    """The sums of one window, per purpose and per model.

    Attributes:
        window: The span.
        total: Every attempt in it.
        purposes: Per purpose, by name (calls without a purpose last).
        models: Per model the attempts went to, by id.
    """

    window: Window
    total: Totals
    purposes: tuple[UsageLine, ...]
    models: tuple[UsageLine, ...]

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
