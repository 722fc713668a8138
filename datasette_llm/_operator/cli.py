"""``datasette llm purposes`` and ``datasette llm check``: the routing report in a terminal.

``datasette llm usage`` is in ``usage_cli``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from .cli_support import datasette_from_files, datasette_options, format_problems, text_table
from .live_cli import format_live, live_json, live_purposes, run_live
from .usage_cli import add_usage_command

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..errors import ConfigProblem
    from .report import Route, RoutingReport
    from .resilience import Chain, ChainLink, Setting

__all__ = ["add_commands", "check_json", "format_chains", "format_problems", "format_table"]


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


def format_table(report: RoutingReport) -> str:
    """Render the report as the plain-text table ``datasette llm purposes`` prints."""
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
    elif name in ("timeout", "deadline"):
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
    if link.client_retries:
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


async def _report(datasette: Datasette) -> RoutingReport:
    from .report import build_report

    await datasette.invoke_startup()
    return await build_report(datasette)


def add_commands(cli: click.Group) -> None:
    """Add the ``llm`` command group to Datasette's CLI."""

    @cli.group(name="llm")
    def llm_group() -> None:
        """Inspect datasette-llm's purpose routing and usage."""

    add_usage_command(llm_group)

    @llm_group.command(name="purposes")
    @datasette_options
    @click.option("--json", "as_json", is_flag=True, help="Output the report as JSON")
    def purposes(
        config: Any, metadata: Any, plugins_dir: str | None, internal: str | None, as_json: bool
    ) -> None:
        """Show every purpose, the model it resolves to, and why."""
        from ..errors import ConfigurationError

        datasette = datasette_from_files(config, metadata, plugins_dir, internal)
        try:
            report = asyncio.run(_report(datasette))
        except ConfigurationError as error:
            click.echo(format_problems(error.problems, False), err=True)
            raise SystemExit(1) from None
        if as_json:
            click.echo(json.dumps(report.to_json(), indent=2))
        else:
            click.echo(format_table(report))

    @llm_group.command(name="check")
    @datasette_options
    @click.option("--strict", is_flag=True, help="Treat warnings as errors (like strict: true)")
    @click.option("--json", "as_json", is_flag=True, help="Output problems and routing as JSON")
    @click.option(
        "--live", is_flag=True, help="Then send a short prompt through each purpose's chain"
    )
    @click.option("--purpose", "only", metavar="NAME", help="With --live: test only this purpose")
    def check(
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

        With --live, also prompt each purpose's routed chain (real calls, recorded as usage);
        exit 1 if any fails.
        """
        if only is not None and not live:
            raise click.UsageError("--purpose NAME needs --live.")
        datasette = datasette_from_files(config, metadata, plugins_dir, internal)
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
    from ..config_source import config_for
    from ..models import current_registry
    from .report import build_report
    from .serving import serving_problems
    from .validation import validate_datasette

    await datasette.invoke_startup()
    validation = validate_datasette(datasette)
    problems = list(validation.problems)
    report = None
    if validation.config is not None:
        report = await build_report(datasette)
        config = config_for(datasette)
        problems.extend(await serving_problems(datasette, report, config, current_registry()))
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
