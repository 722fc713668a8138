"""What was spent: the usage ledger summed in SQLite, for the page, its JSON and the CLI.

Every figure is an SQL aggregate over ``datasette_llm_usage`` (never a loop over its rows): per
purpose and per model over the last 24 hours, 7 days and 30 days (the ``time`` index), each
budgeted purpose's spend in its current period (the ``(purpose, time)`` index), and the spend
per UTC day and purpose of the last 30 days for the chart. The pending rows are written first,
so the summary counts every attempt made so far.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from ..budgets import period_start
from ..ledger import TABLE, ledger_for
from .usage_values import (
    DAY,
    BudgetStatus,
    DailyUsage,
    Totals,
    UsageLine,
    UsageSummary,
    UsageWindow,
    Window,
    iso_day,
    standard_windows,
)

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.database import Database

    from ..config import LLMConfig

__all__ = ["BUDGET_SQL", "CHART_DAYS", "DAILY_SQL", "WINDOW_SQL", "build_usage"]

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
    """One ``(name, outcome, sums...)`` row of ``WINDOW_SQL`` as totals."""
    outcome, attempts = str(row[1]), int(row[2])
    return Totals(
        attempts=attempts,
        ok=attempts if outcome == "ok" else 0,
        failures=MappingProxyType({} if outcome == "ok" else {outcome: attempts}),
        input_tokens=int(row[3] or 0),
        output_tokens=int(row[4] or 0),
        cached_tokens=int(row[5] or 0),
        cost=float(row[6] or 0),
        priced=int(row[7] or 0),
        unpriced=int(row[8] or 0),
    )


def _add(parts: Iterable[Totals]) -> Totals:
    """Add up totals (one per outcome: a handful, never one per row)."""
    parts = list(parts)
    failures: dict[str, int] = {}
    for part in parts:
        for kind, count in part.failures.items():
            failures[kind] = failures.get(kind, 0) + count
    return Totals(
        attempts=sum(part.attempts for part in parts),
        ok=sum(part.ok for part in parts),
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
    return UsageWindow(window, _add(everything), lines["purpose"], lines["model"])


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
