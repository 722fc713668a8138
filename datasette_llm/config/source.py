"""Where the configuration comes from: the section Datasette holds, parsed once per change.

``datasette_llm.routing.overlay`` lays the routing overrides set on ``/-/llm`` over it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..state import Slot, state_of
from .parser import parse_with_sources
from .values import PLUGIN_NAME, LLMConfig

if TYPE_CHECKING:
    from datasette.app import Datasette

__all__ = [
    "metadata_replaces_config",
    "raw_section",
    "served_files_conflict",
    "written_config_for",
]


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A parsed configuration and what it was parsed from, to tell when to parse again."""

    settings: object
    plugins: object
    section: object
    environment: tuple[tuple[str, str | None], ...]
    files: tuple[tuple[str, float | None], ...]
    config: LLMConfig

    def is_current(self, settings: object, plugins: object, section: object) -> bool:
        return (
            settings is self.settings
            and plugins is self.plugins
            and section is self.section
            and all(os.environ.get(name) == value for name, value in self.environment)
            and all(_mtime(path) == stamp for path, stamp in self.files)
        )


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def raw_section(datasette: Datasette) -> tuple[object, object, object]:
    """Return Datasette's configuration, its ``plugins`` and our section, as written.

    Datasette moves ``plugins:`` from metadata into its configuration when it starts, so this is
    where every source of configuration ends up.
    """
    settings = datasette.config
    plugins = settings.get("plugins") if isinstance(settings, Mapping) else None
    section = plugins.get(PLUGIN_NAME) if isinstance(plugins, Mapping) else None
    return settings, plugins, section


def _plugins(document: object) -> Mapping[str, object] | None:
    plugins = document.get("plugins") if isinstance(document, Mapping) else None
    return plugins if isinstance(plugins, Mapping) else None


def metadata_replaces_config(
    config: object, metadata: object, config_name: str, metadata_name: str
) -> str | None:
    """Say how ``metadata``'s ``plugins:`` hides ``config``'s datasette-llm section, if it does.

    Datasette moves ``plugins:`` from metadata into its configuration by replacing the whole
    ``plugins`` mapping, so a datasette-llm section (a blocklist, say) written in datasette.yaml
    is silently dropped whenever metadata has a ``plugins:`` section too.

    Returns:
        A message naming both files and the fix, or ``None`` when nothing is lost.
    """
    config_plugins = _plugins(config)
    metadata_plugins = _plugins(metadata)
    if config_plugins is None or metadata_plugins is None or PLUGIN_NAME not in config_plugins:
        return None
    if PLUGIN_NAME in metadata_plugins:
        where = f"is configured in both {config_name} and {metadata_name}"
    else:
        where = f"is configured in {config_name}, and {metadata_name} has a plugins: section too"
    return (
        f"plugins.{PLUGIN_NAME} {where}: Datasette keeps only the plugins: section of "
        f"{metadata_name}, so the datasette-llm settings in {config_name} (its blocklists "
        f"included) are ignored. Move the plugins: section of {metadata_name} into "
        f"{config_name}, under one plugins.{PLUGIN_NAME}."
    )


def _read(file: object) -> object:
    from datasette.utils import parse_metadata

    path = file if isinstance(file, str) else getattr(file, "name", None)
    if not isinstance(path, str):
        return None
    try:
        with open(path) as opened:
            return parse_metadata(opened.read())
    except Exception:  # Datasette reports an unreadable file itself
        return None


def served_files_conflict() -> str | None:
    """Check the files of the running ``datasette serve`` with ``metadata_replaces_config``.

    Reads the ``-c`` and ``-m`` paths from the current Click context, if the process is a
    ``datasette serve`` (a ``Datasette`` built in code has no files to compare).
    """
    import click

    context = click.get_current_context(silent=True)
    if context is None or context.command.name != "serve":
        return None
    config_file = context.params.get("config")
    metadata_file = context.params.get("metadata")
    if config_file is None or metadata_file is None:
        return None
    return metadata_replaces_config(
        _read(config_file),
        _read(metadata_file),
        str(getattr(config_file, "name", config_file)),
        str(getattr(metadata_file, "name", metadata_file)),
    )


_PARSED: Final[Slot[_Parsed]] = Slot("the configuration as written")


def written_config_for(datasette: Datasette) -> LLMConfig:
    """Return the configuration as written (datasette.yaml), without the routing overrides.

    It is parsed again when ``datasette.config``, its ``plugins`` mapping or the datasette-llm
    section is replaced by another object, or when an environment variable or file it names with
    ``$env``/``$file`` changes. Changing values inside the section in place is not noticed:
    assign a new mapping instead.

    Raises:
        ConfigurationError: The configuration is malformed (``problems`` lists where).
    """
    settings, plugins, section = raw_section(datasette)
    state = state_of(datasette)
    cached = state.get(_PARSED)
    if cached is not None and cached.is_current(settings, plugins, section):
        return cached.config
    parsed = parse_with_sources(section)
    state.put(
        _PARSED,
        _Parsed(
            settings,
            plugins,
            section,
            tuple((name, os.environ.get(name)) for name in parsed.env_names),
            tuple((path, _mtime(path)) for path in parsed.file_paths),
            parsed.config,
        ),
    )
    return parsed.config
