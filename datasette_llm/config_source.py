"""Where the configuration comes from: the section Datasette holds, parsed once per change."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from .config import PLUGIN_NAME, LLMConfig
from .config_parser import parse_with_sources

if TYPE_CHECKING:
    from datasette.app import Datasette

__all__ = ["config_for", "raw_section"]


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


_cache: WeakKeyDictionary[Datasette, _Parsed] = WeakKeyDictionary()


def config_for(datasette: Datasette) -> LLMConfig:
    """Return the parsed configuration of ``datasette``.

    It is parsed again when ``datasette.config``, its ``plugins`` mapping or the datasette-llm
    section is replaced by another object, or when an environment variable or file it names with
    ``$env``/``$file`` changes. Changing values inside the section in place is not noticed:
    assign a new mapping instead.

    Raises:
        ConfigurationError: The configuration is malformed (``problems`` lists where).
    """
    settings, plugins, section = raw_section(datasette)
    cached = _cache.get(datasette)
    if cached is not None and cached.is_current(settings, plugins, section):
        return cached.config
    parsed = parse_with_sources(section)
    _cache[datasette] = _Parsed(
        settings,
        plugins,
        section,
        tuple((name, os.environ.get(name)) for name in parsed.env_names),
        tuple((path, _mtime(path)) for path in parsed.file_paths),
        parsed.config,
    )
    return parsed.config
