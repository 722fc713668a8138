"""The ``plugins: datasette-llm:`` configuration, parsed once into frozen typed values."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final
from weakref import WeakKeyDictionary

from .errors import ConfigProblem, ConfigurationError, is_text, lone_surrogate, nearest, shown

if TYPE_CHECKING:
    from datasette.app import Datasette

__all__ = [
    "CONFIG_ROOT",
    "LLMConfig",
    "ModelRef",
    "PurposeConfig",
    "config_for",
    "parse_config",
]

CONFIG_ROOT: Final = "plugins.datasette-llm"
PLUGIN_NAME: Final = "datasette-llm"

_TOP_KEYS: Final = (
    "default_model",
    "models",
    "blocked_models",
    "require_keys",
    "purposes",
    "strict",
)
_PURPOSE_KEYS: Final = ("model", "models", "blocked_models")
_REF_KEYS: Final = ("model", "key", "options")
_EMPTY: Final[Mapping[str, object]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A reference to a model in configuration: an id, optionally with a key and options.

    Attributes:
        model_id: The llm model id (or alias).
        key: The datasette-secrets secret name holding the API key to use, or ``None``.
        options: Default model options; the caller's own options win.
    """

    model_id: str
    key: str | None = None
    options: Mapping[str, object] = field(default_factory=lambda: _EMPTY, compare=False)


@dataclass(frozen=True, slots=True)
class PurposeConfig:
    """Configuration under ``purposes.<name>``.

    Attributes:
        model: The model for this purpose, or ``None``.
        models: The purpose's allowlist (overrides the global one), or ``None``.
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
        require_keys: Whether ``models()`` leaves out models with no API key available.
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

    def allowlist(self, purpose: str | None) -> frozenset[str] | None:
        """Return the ids allowed for ``purpose`` (``None`` means all), defaults included."""
        purpose_config = self.purpose(purpose)
        if purpose_config is not None and purpose_config.models is not None:
            allowed = {ref.model_id for ref in purpose_config.models}
            if purpose_config.model is not None:
                allowed.add(purpose_config.model.model_id)
            return frozenset(allowed)
        if self.models is None:
            return None
        allowed = set(self.models)
        if self.default_model is not None:
            allowed.add(self.default_model.model_id)
        if purpose_config is not None and purpose_config.model is not None:
            allowed.add(purpose_config.model.model_id)
        return frozenset(allowed)

    def blocklist(self, purpose: str | None) -> frozenset[str]:
        """Return the ids blocked for ``purpose``: the global blocklist plus the purpose's."""
        purpose_config = self.purpose(purpose)
        if purpose_config is None or not purpose_config.blocked_models:
            return self.blocked_models
        return self.blocked_models | purpose_config.blocked_models

    def refs_for(self, model_id: str, purpose: str | None) -> Iterator[ModelRef]:
        """Yield the references to ``model_id``, most specific first.

        The purpose's ``models`` entries, then the purpose's ``model``, then ``default_model``.
        """
        purpose_config = self.purpose(purpose)
        if purpose_config is not None:
            for ref in purpose_config.models or ():
                if ref.model_id == model_id:
                    yield ref
            if purpose_config.model is not None and purpose_config.model.model_id == model_id:
                yield purpose_config.model
        if self.default_model is not None and self.default_model.model_id == model_id:
            yield self.default_model

    def key_secret_for(self, model_id: str, purpose: str | None) -> str | None:
        """Return the secret name configured as ``model_id``'s key for ``purpose``, if any."""
        for ref in self.refs_for(model_id, purpose):
            if ref.key:
                return ref.key
        return None

    def options_for(self, model_id: str, purpose: str | None) -> Mapping[str, object]:
        """Return the default options configured for ``model_id`` for ``purpose``."""
        for ref in self.refs_for(model_id, purpose):
            if ref.options:
                return ref.options
        return _EMPTY

    def all_refs(self) -> Iterator[tuple[str, ModelRef]]:
        """Yield ``(config_path, ref)`` for every model reference in the configuration."""
        if self.default_model is not None:
            yield f"{CONFIG_ROOT}.default_model", self.default_model
        for name, purpose_config in self.purposes.items():
            if purpose_config.model is not None:
                yield f"{CONFIG_ROOT}.purposes.{name}.model", purpose_config.model
            for index, ref in enumerate(purpose_config.models or ()):
                yield f"{CONFIG_ROOT}.purposes.{name}.models[{index}]", ref


def _unknown_key(path: str, key: object, valid: tuple[str, ...]) -> ConfigProblem:
    suggestion = nearest(str(key), valid) if isinstance(key, str) else None
    hint = f" Did you mean {suggestion!r}?" if suggestion else ""
    return ConfigProblem(
        path=f"{path}.{shown(key)}",
        message=f"unknown key {key!r}.{hint} Valid keys here: {', '.join(valid)}.",
    )


def _type_name(value: object) -> str:
    return type(value).__name__


class _Parser:
    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path=path, message=message))

    def mapping(
        self, value: object, path: str, expected: str, valid_keys: tuple[str, ...]
    ) -> Mapping[object, object] | None:
        """Return ``value`` if it is a mapping, reporting any key not in ``valid_keys``."""
        if not isinstance(value, Mapping):
            self.fail(path, f"expected {expected}, got {_type_name(value)}: {value!r}.")
            return None
        for key in value:
            if key not in valid_keys:
                self.problems.append(_unknown_key(path, key, valid_keys))
        return value

    def model_id(self, value: object, path: str) -> str | None:
        if not isinstance(value, str):
            self.fail(path, f"expected a model id string, got {_type_name(value)}: {value!r}.")
            return None
        if not value.strip():
            self.fail(path, "model id is empty: give a model id such as 'gpt-5.4-mini'.")
            return None
        if not is_text(value):
            self.fail(path, lone_surrogate("model id", value))
            return None
        return value

    def model_ref(self, value: object, path: str) -> ModelRef | None:
        if isinstance(value, str):
            model_id = self.model_id(value, path)
            return None if model_id is None else ModelRef(model_id)
        value = self.mapping(
            value,
            path,
            "a model id string or a mapping {model: ID, key: SECRET_NAME, options: {...}}",
            _REF_KEYS,
        )
        if value is None:
            return None
        if "model" not in value:
            self.fail(
                path,
                "model reference has no 'model': add model: <model id> "
                "(key and options are optional).",
            )
            return None
        model_id = self.model_id(value["model"], f"{path}.model")
        key = value.get("key")
        if key is not None and (not isinstance(key, str) or not key.strip()):
            self.fail(
                f"{path}.key",
                "expected the name of a datasette-secrets secret (a non-empty string), "
                f"got {_type_name(key)}.",
            )
            key = None
        if key is not None and not is_text(key):
            self.fail(f"{path}.key", lone_surrogate("secret name", key))
            key = None
        options = value.get("options")
        if options is not None and not isinstance(options, Mapping):
            self.fail(
                f"{path}.options",
                f"expected a mapping of model options, got {_type_name(options)}: {options!r}.",
            )
            options = None
        if options is not None:
            for option_name, option_value in options.items():
                if not isinstance(option_name, str):
                    self.fail(
                        f"{path}.options",
                        f"option names must be strings, got {option_name!r}.",
                    )
                elif not is_text(option_name):
                    self.fail(f"{path}.options", lone_surrogate("option name", option_name))
                elif isinstance(option_value, str) and not is_text(option_value):
                    self.fail(
                        f"{path}.options.{option_name}", lone_surrogate("value", option_value)
                    )
        if model_id is None:
            return None
        return ModelRef(
            model_id=model_id,
            key=key,
            options=MappingProxyType(dict(options)) if options else _EMPTY,
        )

    def id_list(self, value: object, path: str) -> tuple[str, ...] | None:
        if not isinstance(value, list | tuple):
            self.fail(path, f"expected a list of model ids, got {_type_name(value)}: {value!r}.")
            return None
        ids: list[str] = []
        for index, item in enumerate(value):
            if isinstance(item, Mapping):
                self.fail(
                    f"{path}[{index}]",
                    "expected a model id string here; put key and options on default_model "
                    "or on a purpose's model/models entries.",
                )
                continue
            model_id = self.model_id(item, f"{path}[{index}]")
            if model_id is not None:
                ids.append(model_id)
        return tuple(ids)

    def ref_list(self, value: object, path: str) -> tuple[ModelRef, ...] | None:
        if not isinstance(value, list | tuple):
            self.fail(
                path, f"expected a list of model references, got {_type_name(value)}: {value!r}."
            )
            return None
        refs = [self.model_ref(item, f"{path}[{index}]") for index, item in enumerate(value)]
        return tuple(ref for ref in refs if ref is not None)

    def boolean(self, value: object, path: str, default: bool) -> bool:
        if isinstance(value, bool):
            return value
        self.fail(path, f"expected true or false, got {_type_name(value)}: {value!r}.")
        return default

    def purpose(self, value: object, path: str) -> PurposeConfig | None:
        if value is None:
            return PurposeConfig()
        value = self.mapping(
            value, path, "a mapping with model, models and/or blocked_models", _PURPOSE_KEYS
        )
        if value is None:
            return None
        model = value.get("model")
        models = value.get("models")
        blocked = value.get("blocked_models")
        return PurposeConfig(
            model=None if model is None else self.model_ref(model, f"{path}.model"),
            models=None if models is None else self.ref_list(models, f"{path}.models"),
            blocked_models=frozenset(
                self.id_list(blocked, f"{path}.blocked_models") or () if blocked is not None else ()
            ),
        )

    def config(self, raw: object) -> LLMConfig:
        if raw is None:
            return LLMConfig()
        raw = self.mapping(raw, CONFIG_ROOT, "a mapping", _TOP_KEYS)
        if raw is None:
            return LLMConfig()
        default = raw.get("default_model")
        models = raw.get("models")
        blocked = raw.get("blocked_models")
        purposes_raw = raw.get("purposes")
        purposes: dict[str, PurposeConfig] = {}
        if purposes_raw is not None:
            if not isinstance(purposes_raw, Mapping):
                self.fail(
                    f"{CONFIG_ROOT}.purposes",
                    "expected a mapping of purpose name to its configuration, "
                    f"got {_type_name(purposes_raw)}: {purposes_raw!r}.",
                )
            else:
                for name, value in purposes_raw.items():
                    path = f"{CONFIG_ROOT}.purposes.{shown(name)}"
                    if not isinstance(name, str) or not name:
                        self.fail(path, f"purpose names must be non-empty strings, got {name!r}.")
                        continue
                    if not is_text(name):
                        self.fail(path, lone_surrogate("purpose name", name))
                        continue
                    parsed = self.purpose(value, path)
                    if parsed is not None:
                        purposes[name] = parsed
        return LLMConfig(
            default_model=(
                None if default is None else self.model_ref(default, f"{CONFIG_ROOT}.default_model")
            ),
            models=None if models is None else self.id_list(models, f"{CONFIG_ROOT}.models"),
            blocked_models=frozenset(
                self.id_list(blocked, f"{CONFIG_ROOT}.blocked_models") or ()
                if blocked is not None
                else ()
            ),
            require_keys=self.boolean(
                raw.get("require_keys", True), f"{CONFIG_ROOT}.require_keys", True
            ),
            strict=self.boolean(raw.get("strict", False), f"{CONFIG_ROOT}.strict", False),
            purposes=MappingProxyType(purposes),
        )


def parse_config(raw: object) -> LLMConfig:
    """Parse the raw plugin configuration, raising ``ConfigurationError`` listing every problem."""
    parser = _Parser()
    config = parser.config(raw)
    if parser.problems:
        raise ConfigurationError(parser.problems)
    return config


_cache: WeakKeyDictionary[Datasette, tuple[object, LLMConfig]] = WeakKeyDictionary()


def config_for(datasette: Datasette) -> LLMConfig:
    """Return the parsed configuration of ``datasette``, re-parsing only when it changed."""
    raw = datasette.plugin_config(PLUGIN_NAME)
    cached = _cache.get(datasette)
    if cached is not None and cached[0] == raw:
        return cached[1]
    config = parse_config(raw)
    _cache[datasette] = (copy.deepcopy(raw), config)
    return config
