"""The ``datasette llm`` commands: ``purposes``, ``check`` (``--live``) and ``usage``.

``purposes`` and ``check`` show the routing report in a terminal (``purposes`` with one line
on coordination, ``check`` warning of a Redis that does not answer); ``check --live`` sends a
short prompt through each purpose's routed chain; ``usage`` shows the usage ledger's sums (per
purpose and model, or ``--by actor``), or JSON, saying whose rows they are.
Each builds the Datasette that ``datasette serve`` would build from the same options.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from ..usage.summary import (
    DAY,
    ActorLine,
    Totals,
    UsageLine,
    UsageSummary,
    UsageWindow,
    Window,
    utc_text,
)
from .live import LIVE_PROMPT, LiveResult, try_route, unknown_purpose
from .status import internal_not_yet

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..errors import ConfigProblem
    from .report import Chain, ChainLink, Route, RoutingReport, Setting
    from .status import CoordinationView, LedgerSource, PurposeStatus

__all__ = [
    "BY_DEFAULT",
    "BY_GROUPINGS",
    "SINCE_FORMS",
    "add_commands",
    "add_usage_command",
    "check_json",
    "datasette_from_files",
    "datasette_options",
    "format_chains",
    "format_live",
    "format_problems",
    "format_statuses",
    "format_table",
    "format_usage",
    "live_json",
    "live_purposes",
    "parse_since",
    "run_live",
    "text_table",
]


# What the commands share: the Datasette ``serve`` would build, text tables.

F = TypeVar("F", bound=Callable[..., Any])


def datasette_options(function: F) -> F:
    """Add the options ``datasette serve`` uses to find configuration and plugins."""
    options = [
        click.option(
            "-c",
            "--config",
            type=click.File("r"),
            help="Path to a datasette.yaml (or JSON) configuration file",
        ),
        click.option(
            "-m",
            "--metadata",
            type=click.File("r"),
            help="Path to a metadata.yaml (or JSON) file; its plugins: section counts too",
        ),
        click.option(
            "--plugins-dir",
            type=click.Path(exists=True, file_okay=False, dir_okay=True),
            help="Path to a directory containing custom plugins",
        ),
        click.option(
            "--internal",
            type=click.Path(dir_okay=False),
            help="Path to the internal database datasette serve --internal uses "
            "(where datasette-secrets keeps its encrypted store, the usage ledger and the "
            "routing overrides are kept); one that does not exist yet (before the first "
            "datasette serve) is read as empty, and not created",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _load(file: Any, label: str) -> dict[str, Any] | None:
    if file is None:
        return None
    from datasette.utils import parse_metadata

    try:
        parsed = parse_metadata(file.read())
    except Exception as error:
        raise click.ClickException(f"Could not parse {label} {file.name}: {error}") from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise click.ClickException(f"{label} {file.name} must be a mapping at the top level.")
    return parsed


def datasette_from_files(
    config: Any,
    metadata: Any,
    plugins_dir: str | None,
    internal: str | None,
    files: Sequence[str] = (),
) -> Datasette:
    """Build the Datasette ``datasette serve FILES -c ... -m ...`` would, without serving it.

    Startup validation is deferred: the command reports problems itself. An ``internal``
    database that does not exist yet (a deploy pipeline checks before the first ``datasette
    serve``) is read as empty: an in-memory one stands in, and no file is created.
    """
    from datasette.app import Datasette

    from ..config.source import metadata_replaces_config
    from .checks import defer_startup_validation

    config_data = _load(config, "configuration")
    metadata_data = _load(metadata, "metadata")
    if config is not None and metadata is not None:
        conflict = metadata_replaces_config(config_data, metadata_data, config.name, metadata.name)
        if conflict is not None:
            raise click.ClickException(conflict)
    not_yet: str | None = None
    if internal is not None and not os.path.exists(internal):
        click.echo(f"{internal} does not exist yet: read as an empty internal database.", err=True)
        internal, not_yet = None, internal
    datasette = Datasette(
        list(files),
        memory=True,
        config=config_data,
        metadata=metadata_data,
        plugins_dir=plugins_dir,
        internal=internal,
    )
    if not_yet is not None:
        internal_not_yet(datasette, not_yet)
    defer_startup_validation(datasette)
    return datasette


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Render ``rows`` (the first is the header) as aligned columns under a rule."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_problems(problems: Sequence[ConfigProblem], strict: bool) -> str:
    """Render problems one per line, errors first, then a count."""
    lines = []
    errors = 0
    for problem in problems:
        severity = "error" if strict else problem.severity
        if severity == "error":
            errors += 1
        lines.append(f"{severity}: {problem.path}: {problem.message}")
    warnings = len(problems) - errors
    lines.append(
        f"{errors} error{'s' if errors != 1 else ''}, "
        f"{warnings} warning{'s' if warnings != 1 else ''}"
        + (" (strict: warnings count as errors)" if strict and problems else "")
    )
    return "\n".join(lines)


# ``datasette llm usage``.

SINCE_FORMS: Final = (
    "a number of hours, days or weeks (24h, 7d, 2w), an ISO date (2024-05-01, from midnight "
    "UTC) or an ISO time (2024-05-01T09:30, UTC unless it gives an offset)"
)
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([hdw])")
_UNITS: Final = {"h": (3_600.0, "hour"), "d": (DAY, "day"), "w": (7 * DAY, "week")}


def parse_since(text: str, now: float) -> Window:
    """Read ``--since``: a duration before ``now`` or an ISO date or time (see ``SINCE_FORMS``).

    Raises:
        click.BadParameter: ``text`` is none of those, or is later than ``now`` or before 1970.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is not None:
        number, unit = float(match[1]), match[2]
        seconds, name = _UNITS[unit]
        plural = "s" if number != 1 else ""
        since_epoch = now - number * seconds
        if since_epoch < 0:
            raise click.BadParameter(
                f"{text!r} reaches back before 1970-01-01 (UTC), earlier than any usage row: "
                f"give a shorter duration (at most {now / seconds:.0f}{unit}), or leave out "
                "--since for the last 24 hours, 7 days and 30 days.",
                param_hint="'--since'",
            )
        return Window(text, f"Last {number:g} {name}{plural}", since_epoch)
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
    if since.timestamp() < 0:
        raise click.BadParameter(
            f"{text!r} is before 1970-01-01 (UTC), earlier than any usage row: give a later "
            "date, or leave out --since for the last 24 hours, 7 days and 30 days.",
            param_hint="'--since'",
        )
    return Window(text, f"Since {utc_text(since.timestamp())}", since.timestamp())


BY_GROUPINGS: Final = ("purpose", "model", "actor")
"""What ``datasette llm usage --by`` can sum per, in the order its tables are printed."""
BY_DEFAULT: Final = ("purpose", "model")
"""The tables ``datasette llm usage`` prints without ``--by``."""


def _totals_row(name: str, totals: Totals) -> tuple[str, ...]:
    failures = ", ".join(f"{count} {kind}" for kind, count in totals.failures.items())
    return (
        name,
        str(totals.attempts),
        str(totals.ok),
        str(totals.cancelled),
        failures or "-",
        f"{totals.input_tokens:,}",
        f"{totals.output_tokens:,}",
        f"{totals.cached_tokens:,}",
        totals.spend,
    )


def _line_rows(
    label: str, lines: Sequence[UsageLine | ActorLine], none: str = "(no purpose)"
) -> list[tuple[str, ...]]:
    header = (
        label,
        "ATTEMPTS",
        "OK",
        "CANCELLED",
        "FAILURES",
        "INPUT",
        "OUTPUT",
        "CACHED",
        "SPEND",
    )
    rows: list[tuple[str, ...]] = [header]
    for line in lines:
        rows.append(_totals_row(none if line.name is None else line.name, line.totals))
        if isinstance(line, ActorLine):  # each actor's purposes under it, indented
            for part in line.purposes:
                name = "(no purpose)" if part.name is None else part.name
                rows.append(_totals_row(f"  {name}", part.totals))
    return rows


def _window_text(window: UsageWindow, by: Sequence[str]) -> list[str]:
    total = window.total
    heading = f"{window.window.label} (since {window.window.since_text})"
    if not total.attempts:
        return [f"{heading}: no attempts", ""]
    tables: dict[str, tuple[str, Sequence[UsageLine | ActorLine], str]] = {
        "purpose": ("PURPOSE", window.purposes, "(no purpose)"),
        "model": ("MODEL", window.models, "(no purpose)"),
        "actor": ("ACTOR", window.actors, "(no actor)"),
    }
    lines = [
        f"{heading}: {total.attempts} attempts, {total.ok} ok, {total.cancelled} cancelled, "
        f"{total.failed} failed; spend {total.spend}",
        "",
    ]
    for grouping in BY_GROUPINGS:
        if grouping in by:
            lines.extend([text_table(_line_rows(*tables[grouping])), ""])
    return lines


def format_usage(
    summary: UsageSummary, by: Sequence[str] = BY_DEFAULT, ledger: LedgerSource | None = None
) -> str:
    """Render the summary as the plain text ``datasette llm usage`` prints.

    Args:
        summary: The sums.
        by: The tables of each window, of ``BY_GROUPINGS`` (printed in that order).
        ledger: Whose rows the ledger holds, said under the first line when given.
    """
    where = (
        f"the database {summary.database!r}"
        if summary.database
        else "Datasette's internal database"
    )
    if summary.error is not None:
        lines = [summary.error, ""]
    elif not summary.recorded:
        lines = [f"No usage recorded yet (the ledger table is not in {where})."]
        lines.extend([] if ledger is None else [ledger.text])
        lines.append("")
    else:
        lines = [f"Usage recorded in {where}, as of {summary.now_text}."]
        lines.extend([] if ledger is None else [ledger.text])
        lines.append("")
        for window in summary.windows:
            lines.extend(_window_text(window, by))
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


async def _usage(datasette: Datasette, since: str | None) -> tuple[UsageSummary, LedgerSource]:
    from ..routing.overlay import config_for
    from ..usage.summary import build_usage
    from .status import ledger_source

    await datasette.invoke_startup()
    now = time.time()
    windows = None if since is None else [parse_since(since, now)]
    config = config_for(datasette)
    summary = await build_usage(datasette, config, windows, now)
    return summary, ledger_source(datasette, config)


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
    @click.option(
        "--by",
        type=click.Choice(BY_GROUPINGS),
        multiple=True,
        help="Print a table per purpose, model or actor (each actor with its purposes, the "
        "most spent first); repeat for several. Default: --by purpose --by model. "
        "--json has all three.",
    )
    def usage(
        files: tuple[str, ...],
        config: Any,
        metadata: Any,
        plugins_dir: str | None,
        internal: str | None,
        as_json: bool,
        since: str | None,
        by: tuple[str, ...],
    ) -> None:
        """Show attempts, tokens and spend per purpose, model or actor, and each budget.

        Reads the ledger where datasette serve keeps it: Datasette's internal database (pass
        the file of datasette serve --internal) or the database usage: database names (pass
        it as FILES). Each process writes its own rows there: the output says whose they are.
        """
        from ..errors import ConfigurationError

        if since is not None:
            parse_since(since, time.time())  # a bad --since fails before anything starts
        datasette = datasette_from_files(config, metadata, plugins_dir, internal, files)
        try:
            summary, ledger = asyncio.run(_usage(datasette, since))
        except ConfigurationError as error:
            click.echo(format_problems(error.problems, False), err=True)
            raise SystemExit(1) from None
        if as_json:
            click.echo(json.dumps({**summary.to_json(), "ledger": ledger.to_json()}, indent=2))
        else:
            click.echo(format_usage(summary, by or BY_DEFAULT, ledger), nl=False)


# ``datasette llm check --live``.


def live_purposes(report: RoutingReport, only: str | None) -> list[str]:
    """Return the purposes to test: every purpose of the report, or ``only``.

    Raises:
        click.BadParameter: ``only`` is not one of them (with the nearest name).
    """
    names = [purpose.name for purpose in report.purposes]
    if only is None:
        return names
    if only not in names:
        raise click.BadParameter(unknown_purpose(only, names), param_hint="'--purpose'")
    return [only]


async def _test_each(
    datasette: Datasette, names: Sequence[str], progress: Callable[[int, str], None]
) -> list[LiveResult]:
    from ..usage.ledger import flush_usage

    results = []
    for name in names:
        progress(0, name)
        results.append(await try_route(datasette, name))
        progress(1, name)
    await flush_usage(datasette)
    return results


def _shown(name: str | None) -> str | None:
    return name


def run_live(datasette: Datasette, names: Sequence[str]) -> list[LiveResult]:
    """Test each purpose in turn, with a progress bar on stderr; return the results."""
    with click.progressbar(
        list(names),
        label="Testing routes",
        file=sys.stderr,
        item_show_func=_shown,
    ) as bar:
        return asyncio.run(_test_each(datasette, names, bar.update))


def _tokens(result: LiveResult) -> str:
    if result.input_tokens is None and result.output_tokens is None:
        return "-"
    shown = [
        "?" if count is None else str(count)
        for count in (result.input_tokens, result.output_tokens)
    ]
    return " in, ".join(shown) + " out"


def _attempts(result: LiveResult) -> str:
    return "; ".join(
        f"{attempt.model_id} {attempt.error or 'ok'} {attempt.duration:.2f}s"
        for attempt in result.attempts
    )


def format_live(results: Sequence[LiveResult]) -> str:
    """Render the results as a table of purposes, then one line per failure's message."""
    rows: list[tuple[str, ...]] = [
        ("PURPOSE", "RESULT", "ANSWERED BY", "LATENCY", "TOKENS", "ATTEMPTS")
    ]
    for result in results:
        rows.append(
            (
                result.purpose,
                "ok" if result.error is None else f"FAILED ({result.error})",
                result.model_id or "-",
                f"{result.latency:.2f}s",
                _tokens(result),
                _attempts(result) or "-",
            )
        )
    lines = [f"Live test ({LIVE_PROMPT!r} through each purpose's routed chain):", text_table(rows)]
    lines.extend(f"{result.purpose}: {result.message}" for result in results if result.message)
    failed = sum(1 for result in results if not result.ok)
    total = len(results)
    if failed:
        lines.append(
            f"{failed} of {total} purpose{'s' if total != 1 else ''} failed the live test."
        )
    else:
        lines.append(f"Every purpose answered ({total} tested).")
    return "\n".join(lines)


def live_json(results: Sequence[LiveResult]) -> dict[str, object]:
    """Return what ``check --live --json`` adds under ``live``."""
    return {
        "prompt": LIVE_PROMPT,
        "failed": sum(1 for result in results if not result.ok),
        "results": [result.to_json() for result in results],
    }


# ``datasette llm purposes`` and ``datasette llm check``.


def _key_text(route: Route) -> str:
    key = route.key
    if key is None:
        return "-"
    if key.source == "not_needed":
        return "not needed"
    if key.source == "missing":
        return f"MISSING ({key.secret_name})"
    if key.source == "llm":
        return "set (llm keys)"
    where = key.secret_name if key.source == "secret" else f"${key.source} {key.secret_name}"
    return f"set ({where})"


def format_table(report: RoutingReport, coordination: CoordinationView | None = None) -> str:
    """Render the report as the plain-text table ``datasette llm purposes`` prints, with the
    coordination in one line after the global settings when given and configured (without it,
    each process keeps its own limits, as ``--json`` says)."""
    header = ("PURPOSE", "OWNER", "CONFIGURED", "RESOLVES TO", "STEP", "KEY")
    rows: list[tuple[str, ...]] = [header]
    for purpose in report.purposes:
        route = purpose.route
        name = purpose.name if purpose.registered else f"{purpose.name} (unregistered)"
        rows.append(
            (
                name,
                purpose.owner or "-",
                purpose.configured_model or "-",
                route.model_id or "(none)",
                route.step or "-",
                _key_text(route),
            )
        )
    default = report.default_route
    rows.append(
        (
            "(no purpose)",
            "-",
            report.default_model or "-",
            default.model_id or "(none)",
            default.step or "-",
            _key_text(default),
        )
    )
    lines = [text_table(rows), ""]
    notes = [
        f"{purpose.name}: {line}"
        for purpose in report.purposes
        for line in (*purpose.route.skipped, *filter(None, [purpose.route.error]))
    ]
    if notes:
        lines.extend([*notes, ""])
    chains = format_chains(report)
    if chains:
        lines.extend([chains, ""])
    allowed = "any installed model" if report.models is None else ", ".join(report.models)
    lines.append(f"Allowed models: {allowed or 'none'}")
    lines.append(f"Blocked models: {', '.join(report.blocked_models) or 'none'}")
    if coordination is not None and coordination.backend != "local":
        lines.append(coordination.text)
    for collision in report.collisions:
        lines.append(
            f"Collision: {collision.name!r} registered by {collision.kept_owner!r} (kept) "
            f"and {collision.ignored_owner!r} (ignored)"
        )
    if report.problems:
        lines.append("")
        lines.append(format_problems(report.problems, report.strict))
    return "\n".join(lines)


def _setting_text(name: str, setting: Setting) -> str:
    value = setting.value
    if value is None:
        shown = "none"
    elif isinstance(value, tuple):
        shown = ", ".join(value) or "none"
    elif name in ("timeout", "deadline", "max_wait"):
        shown = f"{value:g}s"
    else:
        shown = str(value)
    return f"{name} {shown} ({setting.set_at or 'default'})"


def _link_text(index: int, link: ChainLink) -> str:
    where = "routed" if link.path is None else f"fallback, {link.path}"
    text = f"{index}. {link.model_id} ({where}): "
    if link.refusal is not None:
        return text + f"NOT TRIED: {link.refusal}"
    tries = f"tries {link.tries}"
    if link.adapted:
        tries += ", one request per try (datasette-llm owns its client's retries)"
    elif link.client_retries:
        tries += f" of up to {1 + link.client_retries} requests (its client retries itself)"
    limits = [
        f"{name} {value:g}"
        for name, value in (("rpm", link.rpm), ("concurrency", link.concurrency))
        if value is not None
    ]
    return text + "; ".join([tries, *limits])


def _chain_text(name: str, chain: Chain) -> list[str]:
    settings = (
        ("retries", chain.retries),
        ("timeout", chain.timeout),
        ("deadline", chain.deadline),
        ("fallback_on", chain.fallback_on),
        ("max_wait", chain.max_wait),
    )
    lines = [f"  {name}: " + "; ".join(_setting_text(*setting) for setting in settings)]
    lines.extend(f"    {_link_text(index, link)}" for index, link in enumerate(chain.links, 1))
    return lines


def format_chains(report: RoutingReport) -> str:
    """Render each chain with fallbacks, settings or limits configured; ``""`` when none has."""
    lines: list[str] = []
    for purpose in report.purposes:
        if purpose.chain.worth_showing:
            lines.extend(_chain_text(purpose.name, purpose.chain))
    if report.default_chain.worth_showing:
        lines.extend(_chain_text("(no purpose)", report.default_chain))
    if not lines:
        return ""
    return "\n".join(["Fallbacks and retries (tried in order):", *lines])


async def _report(
    datasette: Datasette,
) -> tuple[RoutingReport, tuple[PurposeStatus, ...], CoordinationView]:
    """The routing report, each purpose's status (by the ledger, with ``--internal``), and the
    coordination (Redis pinged now)."""
    from ..coordination import PING_SECONDS
    from ..errors import ConfigurationError
    from ..routing.overlay import config_for
    from ..usage.summary import build_usage
    from .report import build_report
    from .status import build_coordination, build_status

    await datasette.invoke_startup()
    report = await build_report(datasette)
    config = config_for(datasette)
    coordination = await build_coordination(datasette, config, ping=PING_SECONDS)
    try:
        usage = await build_usage(datasette, config)
    except ConfigurationError:
        return report, (), coordination  # usage.database is not attached: check says so
    statuses, _ = await build_status(datasette, report, config, usage)
    return report, statuses, coordination


def format_statuses(statuses: Sequence[PurposeStatus]) -> str:
    """One line for each purpose whose calls are not all answered as routed: what
    ``datasette llm purposes`` prints first (nothing when every purpose is ok)."""
    return "\n".join(f"{status.name}: {status.text}" for status in statuses if status.kind != "ok")


def add_commands(cli: click.Group) -> None:
    """Add the ``llm`` command group to Datasette's CLI."""

    @cli.group(name="llm")
    def llm_group() -> None:
        """Inspect datasette-llm's purpose routing and usage."""

    add_usage_command(llm_group)

    @llm_group.command(name="purposes")
    @click.argument("files", type=click.Path(exists=True), nargs=-1)
    @datasette_options
    @click.option("--json", "as_json", is_flag=True, help="Output the report as JSON")
    def purposes(
        files: tuple[str, ...],
        config: Any,
        metadata: Any,
        plugins_dir: str | None,
        internal: str | None,
        as_json: bool,
    ) -> None:
        """Show every purpose, the model it resolves to, and why; and whether the processes
        share their limits through Redis (asked now).

        Pass the database files datasette serve attaches (FILES), such as the one usage:
        database names.
        """
        from ..errors import ConfigurationError

        datasette = datasette_from_files(config, metadata, plugins_dir, internal, files)
        try:
            report, statuses, coordination = asyncio.run(_report(datasette))
        except ConfigurationError as error:
            click.echo(format_problems(error.problems, False), err=True)
            raise SystemExit(1) from None
        if as_json:
            status = {
                "status": [purpose.to_json() for purpose in statuses],
                "coordination": coordination.to_json(),
            }
            click.echo(json.dumps({**status, **report.to_json()}, indent=2))
        else:
            leading = format_statuses(statuses)
            if leading:
                click.echo(leading + "\n")
            click.echo(format_table(report, coordination))

    @llm_group.command(name="check")
    @click.argument("files", type=click.Path(exists=True), nargs=-1)
    @datasette_options
    @click.option("--strict", is_flag=True, help="Treat warnings as errors (like strict: true)")
    @click.option("--json", "as_json", is_flag=True, help="Output problems and routing as JSON")
    @click.option(
        "--live", is_flag=True, help="Then send a short prompt through each purpose's chain"
    )
    @click.option("--purpose", "only", metavar="NAME", help="With --live: test only this purpose")
    def check(
        files: tuple[str, ...],
        config: Any,
        metadata: Any,
        plugins_dir: str | None,
        internal: str | None,
        strict: bool,
        as_json: bool,
        live: bool,
        only: str | None,
    ) -> None:
        """Validate the configuration and that every purpose can be served; exit 1 on errors.

        Pass the database files datasette serve attaches (FILES), such as the one usage:
        database names, and with --internal the internal database datasette serve uses: the
        routing overrides stored there are checked as calls will use them (one that no longer
        fits is a warning). With coordination: {redis: ...}, Redis is pinged: one that does not
        answer is a warning. With --live, also prompt each purpose's routed chain (real calls,
        recorded as usage); exit 1 if any fails.
        """
        if only is not None and not live:
            raise click.UsageError("--purpose NAME needs --live.")
        datasette = datasette_from_files(config, metadata, plugins_dir, internal, files)
        problems, config_strict, report = asyncio.run(_check(datasette))
        strict = strict or config_strict
        failing = [p for p in problems if strict or p.severity == "error"]
        names = live_purposes(report, only) if live and report is not None else []
        results = run_live(datasette, names) if names else []
        if as_json:
            data = check_json(problems, strict, report)
            if live:
                data["live"] = live_json(results)
                data["ok"] = data["ok"] and all(result.ok for result in results)
            click.echo(json.dumps(data, indent=2))
        else:
            chains = "" if report is None else format_chains(report)
            if chains:
                click.echo(chains + "\n")
            if problems:
                click.echo(format_problems(problems, strict))
            else:
                click.echo("datasette-llm configuration OK: no problems found.")
            if live:
                click.echo("\n" + format_live(results))
        if failing or not all(result.ok for result in results):
            raise SystemExit(1)


async def _check(
    datasette: Datasette,
) -> tuple[list[ConfigProblem], bool, RoutingReport | None]:
    """Validate, then route every purpose; return all problems, errors first."""
    from ..routing.models import current_registry
    from ..routing.overlay import layers_for
    from .checks import ignored_override_problems, validate_datasette
    from .report import build_report, serving_problems
    from .status import coordination_problems, status_problems

    await datasette.invoke_startup()  # loads the overrides stored in the --internal database
    validation = validate_datasette(datasette)
    problems = list(validation.problems)
    report = None
    if validation.config is not None:
        report = await build_report(datasette)
        layers = layers_for(datasette)  # what calls use: datasette.yaml and the overrides
        problems.extend(ignored_override_problems(layers))
        problems.extend(
            await serving_problems(datasette, report, layers.config, current_registry(datasette))
        )
        problems.extend(await status_problems(datasette, report, layers.config))
        problems.extend(await coordination_problems(datasette, layers.config))
    problems.sort(key=lambda problem: problem.severity != "error")
    return problems, validation.strict, report


def check_json(
    problems: Sequence[ConfigProblem], strict: bool, report: RoutingReport | None
) -> dict[str, object]:
    """Return what ``datasette llm check --json`` prints: problems, and every purpose's route.

    ``severity`` is what counts (``"error"`` for every problem under ``--strict``);
    ``purposes`` and ``default_resolved`` are ``null`` when the configuration is malformed.
    """
    shown = [
        {
            "path": problem.path,
            "message": problem.message,
            "severity": "error" if strict else problem.severity,
        }
        for problem in problems
    ]
    errors = sum(1 for problem in shown if problem["severity"] == "error")
    return {
        "ok": errors == 0,
        "strict": strict,
        "errors": errors,
        "warnings": len(shown) - errors,
        "problems": shown,
        "purposes": None
        if report is None
        else [
            {
                "name": purpose.name,
                "registered": purpose.registered,
                **purpose.route.to_json(),
                "requires": list(purpose.requires),
                "chain": purpose.chain.to_json(),
            }
            for purpose in report.purposes
        ],
        "default_resolved": None if report is None else report.default_route.to_json(),
        "default_chain": None if report is None else report.default_chain.to_json(),
    }
