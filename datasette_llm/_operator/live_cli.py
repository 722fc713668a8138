"""``datasette llm check --live``: send a short prompt through each purpose's routed chain."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import click

from .cli_support import text_table
from .live import LIVE_PROMPT, LiveResult, try_route, unknown_purpose

if TYPE_CHECKING:
    from datasette.app import Datasette

    from .report import RoutingReport

__all__ = ["format_live", "live_json", "live_purposes", "run_live"]


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
    from ..ledger import flush_usage

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
