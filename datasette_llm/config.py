"""The ``plugins: datasette-llm:`` configuration as frozen typed values.

``datasette_llm.config_parser`` reads it from Datasette into these.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

__all__ = [
    "CONFIG_ROOT",
    "EMPTY_OPTIONS",
    "PLUGIN_NAME",
    "KeySetting",
    "KeySettingSource",
    "LLMConfig",
    "ModelRef",
    "PurposeConfig",
]

CONFIG_ROOT: Final = "plugins.datasette-llm"
PLUGIN_NAME: Final = "datasette-llm"

EMPTY_OPTIONS: Final[Mapping[str, object]] = MappingProxyType({})
"""No options: the ``options`` of a model reference that has none."""

KeySettingSource: TypeAlias = Literal["secret", "env", "file"]
"""Where a configured key is read from: a datasette-secrets secret, a variable or a file."""


@dataclass(frozen=True, slots=True)
class KeySetting:
    """Where the ``key`` of a model reference comes from. Never the key itself.

    Attributes:
        source: ``"secret"`` (``key: NAME``), ``"env"`` (``key: {$env: VAR}``) or ``"file"``
            (``key: {$file: PATH}``).
        name: The secret's name, the environment variable's name, or the file's path.
    """

    source: KeySettingSource
    name: str

    def __str__(self) -> str:
        if self.source == "secret":
            return self.name
        return f"${self.source} {self.name}"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A reference to a model in configuration: an id, optionally with a key and options.

    Attributes:
        model_id: The llm model id or alias, as written.
        key: Where this model's API key comes from for this reference, or ``None``.
        options: Default model options; the caller's own options win.
    """

    model_id: str
    key: KeySetting | None = None
    options: Mapping[str, object] = field(default_factory=lambda: EMPTY_OPTIONS, compare=False)


@dataclass(frozen=True, slots=True)
class PurposeConfig:
    """Configuration under ``purposes.<name>``.

    Attributes:
        model: The model for this purpose, or ``None``.
        models: The purpose's allowlist (added to the global one), or ``None``.
        blocked_models: Models this purpose may never use.
    """

    model: ModelRef | None = None
    models: tuple[ModelRef, ...] | None = None
    blocked_models: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LLMConfig:
    """The whole parsed ``datasette-llm`` configuration.

    Attributes:
        default_model: The model used when nothing more specific is configured.
        models: The global allowlist, or ``None`` for every installed model.
        blocked_models: Models nobody may be routed to.
        require_keys: Whether a model with no API key available is left out of routing and
            ``models()``.
        purposes: Per-purpose configuration by purpose name.
        strict: Whether suspicious configuration stops startup instead of logging a warning.
    """

    default_model: ModelRef | None = None
    models: tuple[str, ...] | None = None
    blocked_models: frozenset[str] = frozenset()
    require_keys: bool = True
    purposes: Mapping[str, PurposeConfig] = field(
        default_factory=lambda: MappingProxyType({}), compare=False
    )
    strict: bool = False

    def purpose(self, name: str | None) -> PurposeConfig | None:
        """Return the configuration of purpose ``name``, if any."""
        if name is None:
            return None
        return self.purposes.get(name)

    def all_refs(self) -> Iterator[tuple[str, ModelRef]]:
        """Yield ``(config_path, ref)`` for every model reference in the configuration."""
        if self.default_model is not None:
            yield f"{CONFIG_ROOT}.default_model", self.default_model
        for name, purpose_config in self.purposes.items():
            if purpose_config.model is not None:
                yield f"{CONFIG_ROOT}.purposes.{name}.model", purpose_config.model
            for index, ref in enumerate(purpose_config.models or ()):
                yield f"{CONFIG_ROOT}.purposes.{name}.models[{index}]", ref
