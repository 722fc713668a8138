"""``datasette llm usage``: the usage ledger's sums in a terminal, or as JSON."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Final

import click

from .cli_support import datasette_from_files, datasette_options, format_problems, text_table
from .usage_values import DAY, UsageLine, UsageSummary, UsageWindow, Window, utc_text

if TYPE_CHECKING:
    from datasette.app import Datasette

__all__ = ["SINCE_FORMS", "add_usage_command", "format_usage", "parse_since"]

SINCE_FORMS: Final = (
    "a number of hours, days or weeks (24h, 7d, 2w), an ISO date (2024-05-01, from midnight "
    "UTC) or an ISO time (2024-05-01T09:30, UTC unless it gives an offset)"
)
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([hdw])")
_UNITS: Final = {"h": (3_600.0, "hour"), "d": (DAY, "day"), "w": (7 * DAY, "week")}


def parse_since(text: str, now: float) -> Window:
    """Read ``--since``: a duration before ``now`` or an ISO date or time (see ``SINCE_FORMS``).

    Raises:
        click.BadParameter: ``text`` is none of those, or is later than ``now``.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is not None:
        number, unit = float(match[1]), match[2]
        seconds, name = _UNITS[unit]
        plural = "s" if number != 1 else ""
        return Window(text, f"Last {number:g} {name}{plural}", now - number * seconds)
    since: datetime | None = None
    try:
        day = date.fromisoformat(text)
        since = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    except ValueError:
        try:
            since = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
    if since is None:
        raise click.BadParameter(
            f"{text!r} is not a duration or a date: use {SINCE_FORMS}.", param_hint="'--since'"
        )
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    if since.timestamp() > now:
        raise click.BadParameter(
            f"{text!r} is in the future (it is now {utc_text(now)}): give a time before now.",
            param_hint="'--since'",
        )
    return Window(text, f"Since {utc_text(since.timestamp())}", since.timestamp())


def _line_rows(label: str, lines: tuple[UsageLine, ...]) -> list[tuple[str, ...]]:
    header = (label, "ATTEMPTS", "OK", "FAILURES", "INPUT", "OUTPUT", "CACHED", "SPEND")
    rows: list[tuple[str, ...]] = [header]
    for line in lines:
        totals = line.totals
        failures = ", ".join(f"{count} {kind}" for kind, count in totals.failures.items())
        rows.append(
            (
                "(no purpose)" if line.name is None else line.name,
                str(totals.attempts),
                str(totals.ok),
                failures or "-",
                f"{totals.input_tokens:,}",
                f"{totals.output_tokens:,}",
                f"{totals.cached_tokens:,}",
                totals.spend,
            )
        )
    return rows


def _window_text(window: UsageWindow) -> list[str]:
    total = window.total
    heading = f"{window.window.label} (since {window.window.since_text})"
    if not total.attempts:
        return [f"{heading}: no attempts", ""]
    return [
        f"{heading}: {total.attempts} attempts, {total.ok} ok, {total.failed} failed; "
        f"spend {total.spend}",
        "",
        text_table(_line_rows("PURPOSE", window.purposes)),
        "",
        text_table(_line_rows("MODEL", window.models)),
        "",
    ]


def format_usage(summary: UsageSummary) -> str:
    """Render the summary as the plain text ``datasette llm usage`` prints."""
    where = (
        f"the database {summary.database!r}"
        if summary.database
        else "Datasette's internal database"
    )
    if summary.error is not None:
        lines = [summary.error, ""]
    elif not summary.recorded:
        lines = [f"No usage recorded yet (the ledger table is not in {where}).", ""]
    else:
        lines = [f"Usage recorded in {where}, as of {summary.now_text}.", ""]
        for window in summary.windows:
            lines.extend(_window_text(window))
    if not summary.enabled:
        lines.extend(["Recording is off (usage: {enabled: false}).", ""])
    if summary.budgets:
        rows = [("PURPOSE", "SPENT", "BUDGET", "USED", "PERIOD", "ONCE SPENT")]
        for status in summary.budgets:
            spent = status.spent_text
            if status.unpriced:
                spent += f" (+ {status.unpriced} without a price, not counted)"
            rows.append(
                (
                    status.purpose,
                    spent,
                    status.budget_text,
                    f"{status.percent:.0f}%" + (" EXCEEDED" if status.exceeded else ""),
                    status.period_text,
                    status.budget.then,
                )
            )
        lines.extend(["Budgets:", text_table(rows), ""])
    return "\n".join(lines).rstrip() + "\n"


async def _usage(datasette: Datasette, since: str | None) -> UsageSummary:
    from ..config_source import config_for
    from .usage_report import build_usage

    await datasette.invoke_startup()
    now = time.time()
    windows = None if since is None else [parse_since(since, now)]
    return await build_usage(datasette, config_for(datasette), windows, now)


def add_usage_command(group: click.Group) -> None:
    """Add ``usage`` to the ``datasette llm`` group."""

    @group.command(name="usage")
    @click.argument("files", type=click.Path(exists=True), nargs=-1)
    @datasette_options
    @click.option("--json", "as_json", is_flag=True, help="Output the sums as JSON")
    @click.option(
        "--since",
        metavar="DURATION_OR_DATE",
        help="Sum from this time to now: 24h, 7d, 2w, or an ISO date or time (UTC). "
        "Default: the last 24 hours, 7 days and 30 days.",
    )
    def usage(
        files: tuple[str, ...],
        config: Any,
        metadata: Any,
        plugins_dir: str | None,
        internal: str | None,
        as_json: bool,
        since: str | None,
    ) -> None:
        """Show attempts, tokens and spend per purpose and per model, and each budget.

        Reads the ledger where datasette serve keeps it: Datasette's internal database (pass
        the file of datasette serve --internal) or the database usage: database names (pass
        it as FILES).
        """
        from ..errors import ConfigurationError

        if since is not None:
            parse_since(since, time.time())  # a bad --since fails before anything starts
        datasette = datasette_from_files(config, metadata, plugins_dir, internal, files)
        try:
            summary = asyncio.run(_usage(datasette, since))
        except ConfigurationError as error:
            click.echo(format_problems(error.problems, False), err=True)
            raise SystemExit(1) from None
        if as_json:
            click.echo(json.dumps(summary.to_json(), indent=2))
        else:
            click.echo(format_usage(summary), nl=False)
