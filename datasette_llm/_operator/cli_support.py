"""What the ``datasette llm`` commands share: the Datasette ``serve`` would build, text tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..errors import ConfigProblem

__all__ = ["datasette_from_files", "datasette_options", "format_problems", "text_table"]

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
            type=click.Path(exists=True, dir_okay=False),
            help="Path to the internal database datasette serve --internal uses "
            "(where datasette-secrets keeps its encrypted store and the usage ledger is kept)",
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

    Startup validation is deferred: the command reports problems itself.
    """
    from datasette.app import Datasette

    from ..config_source import metadata_replaces_config
    from .validation import defer_startup_validation

    config_data = _load(config, "configuration")
    metadata_data = _load(metadata, "metadata")
    if config is not None and metadata is not None:
        conflict = metadata_replaces_config(config_data, metadata_data, config.name, metadata.name)
        if conflict is not None:
            raise click.ClickException(conflict)
    datasette = Datasette(
        list(files),
        memory=True,
        config=config_data,
        metadata=metadata_data,
        plugins_dir=plugins_dir,
        internal=internal,
    )
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
