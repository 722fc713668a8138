"""Reading the ``plugins: datasette-llm:`` configuration from Datasette into typed values.

The configuration is read as written in ``datasette.yaml`` (or metadata, or ``config=``), before
Datasette substitutes ``{$env: NAME}`` and ``{$file: PATH}``: those are resolved here, except
under ``key:``, where they stay references, so that a key's value is read only when it is used
and is never mistaken for the name of a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from .config import (
    CONFIG_ROOT,
    EMPTY_OPTIONS,
    KeySetting,
    LLMConfig,
    ModelRef,
    PurposeConfig,
)
from .errors import (
    ConfigProblem,
    ConfigurationError,
    Substituted,
    is_text,
    lone_surrogate,
    nearest,
    quoted,
    shown,
)

__all__ = ["ParsedConfig", "parse_config", "parse_with_sources"]

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
_FAILED: Final = object()  # what value() returns when a $env or $file reference fails
# A datasette-secrets secret is also read from the environment variable DATASETTE_SECRETS_<NAME>,
# so its name is an environment variable name. Anything else under key: is a pasted key.
_SECRET_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _looks_like_a_key(name: str) -> bool:
    """A long name mixing lower case and digits (``gsk_3fX...``) is a key, not a secret's name."""
    return len(name) >= 24 and any(c.islower() for c in name) and any(c.isdigit() for c in name)


def _got(value: object) -> str:
    """What a message says was found instead: the type, then the value (never a substituted one)."""
    type_name = "str" if isinstance(value, str) else type(value).__name__
    return f"{type_name}: {quoted(value)}"


def _reference(value: object) -> tuple[str, str] | None:
    """Return ``("env", NAME)`` or ``("file", PATH)`` for Datasette's ``{$env: ...}`` syntax."""
    if isinstance(value, Mapping) and len(value) == 1:
        ((marker, target),) = value.items()
        if marker in ("$env", "$file") and isinstance(target, str):
            return marker[1:], target
    return None


class _Parser:
    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []
        self.env_names: list[str] = []
        self.file_paths: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path=path, message=message))

    def value(self, value: object, path: str) -> object:
        """Return ``value``, a ``{$env: NAME}`` or ``{$file: PATH}`` resolved as Datasette would."""
        reference = _reference(value)
        if reference is None:
            return value
        kind, target = reference
        if kind == "env":
            self.env_names.append(target)
            if target not in os.environ:
                self.fail(path, f"the environment variable {target} named by $env is not set.")
                return _FAILED
            return Substituted(os.environ[target], "env", target)
        self.file_paths.append(target)
        try:
            with open(target) as file:
                return Substituted(file.read().strip(), "file", target)
        except OSError as error:
            self.fail(path, f"cannot read the file {target!r} named by $file: {error.strerror}.")
            return _FAILED

    def mapping(
        self, value: object, path: str, expected: str, valid_keys: tuple[str, ...]
    ) -> Mapping[object, object] | None:
        """Return ``value`` if it is a mapping, reporting any key not in ``valid_keys``."""
        if not isinstance(value, Mapping):
            self.fail(path, f"expected {expected}, got {_got(value)}.")
            return None
        for key in value:
            if key not in valid_keys:
                suggestion = nearest(str(key), valid_keys) if isinstance(key, str) else None
                hint = f" Did you mean {suggestion!r}?" if suggestion else ""
                self.fail(
                    f"{path}.{shown(key)}",
                    f"unknown key {key!r}.{hint} Valid keys here: {', '.join(valid_keys)}.",
                )
        return value

    def model_id(self, value: object, path: str) -> str | None:
        value = self.value(value, path)
        if value is _FAILED:
            return None
        if not isinstance(value, str):
            self.fail(path, f"expected a model id string, got {_got(value)}.")
            return None
        if not value.strip():
            self.fail(path, "model id is empty: give a model id such as 'gpt-5.4-mini'.")
            return None
        if not is_text(value):
            self.fail(path, lone_surrogate("model id", value))
            return None
        return value

    def key(self, value: object, path: str) -> KeySetting | None:
        """Parse ``key:``; a value that is not a secret name is refused without being quoted."""
        reference = _reference(value)
        if reference is not None:
            kind, target = reference
            return KeySetting("env" if kind == "env" else "file", target)
        if not isinstance(value, str) or not value.strip():
            self.fail(
                path,
                "expected the name of a datasette-secrets secret (such as OPENAI_API_KEY), "
                f"{{$env: VARIABLE}} or {{$file: PATH}}, got {type(value).__name__}.",
            )
            return None
        if not is_text(value):
            self.fail(path, lone_surrogate("the secret name", None))
            return None
        if not _SECRET_NAME.match(value) or _looks_like_a_key(value):
            self.fail(
                path,
                "this is not a secret name (letters, digits and underscores, such as "
                "ENRICHMENTS_OPENAI_KEY): it looks like an API key pasted in, so it is not "
                "shown. Store the key with datasette-secrets and name the secret here, or use "
                "{$env: VARIABLE}.",
            )
            return None
        return KeySetting("secret", value)

    def options(self, value: object, path: str) -> Mapping[str, object]:
        if not isinstance(value, Mapping):
            self.fail(path, f"expected a mapping of model options, got {_got(value)}.")
            return EMPTY_OPTIONS
        options: dict[str, object] = {}
        for name, option in value.items():
            if not isinstance(name, str):
                self.fail(path, f"option names must be strings, got {name!r}.")
            elif not is_text(name):
                self.fail(path, lone_surrogate("option name", name))
            else:
                option = self.value(option, f"{path}.{name}")
                if option is _FAILED:
                    continue
                if isinstance(option, str) and not is_text(option):
                    self.fail(f"{path}.{name}", lone_surrogate("value", option))
                options[name] = option
        return MappingProxyType(options) if options else EMPTY_OPTIONS

    def model_ref(self, value: object, path: str) -> ModelRef | None:
        value = self.value(value, path)
        if value is _FAILED:
            return None
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
        key = None if value.get("key") is None else self.key(value["key"], f"{path}.key")
        options = value.get("options")
        parsed = EMPTY_OPTIONS if options is None else self.options(options, f"{path}.options")
        if model_id is None:
            return None
        return ModelRef(model_id=model_id, key=key, options=parsed)

    def id_list(self, value: object, path: str) -> tuple[str, ...] | None:
        value = self.value(value, path)
        if value is _FAILED:
            return None
        if not isinstance(value, list | tuple):
            self.fail(path, f"expected a list of model ids, got {_got(value)}.")
            return None
        ids: list[str] = []
        for index, item in enumerate(value):
            if isinstance(item, Mapping) and _reference(item) is None:
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
        value = self.value(value, path)
        if value is _FAILED:
            return None
        if not isinstance(value, list | tuple):
            self.fail(path, f"expected a list of model references, got {_got(value)}.")
            return None
        refs = [self.model_ref(item, f"{path}[{index}]") for index, item in enumerate(value)]
        return tuple(ref for ref in refs if ref is not None)

    def boolean(self, value: object, path: str, default: bool) -> bool:
        value = self.value(value, path)
        if value is _FAILED:
            return default
        if isinstance(value, bool):
            return value
        self.fail(path, f"expected true or false, got {_got(value)}.")
        return default

    def blocklist(self, value: object, path: str) -> frozenset[str]:
        return frozenset(self.id_list(value, path) or ()) if value is not None else frozenset()

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
        return PurposeConfig(
            model=None if model is None else self.model_ref(model, f"{path}.model"),
            models=None if models is None else self.ref_list(models, f"{path}.models"),
            blocked_models=self.blocklist(value.get("blocked_models"), f"{path}.blocked_models"),
        )

    def purposes(self, value: object) -> Mapping[str, PurposeConfig]:
        path = f"{CONFIG_ROOT}.purposes"
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, Mapping):
            self.fail(
                path,
                f"expected a mapping of purpose name to its configuration, got {_got(value)}.",
            )
            return MappingProxyType({})
        purposes: dict[str, PurposeConfig] = {}
        for name, purpose_value in value.items():
            purpose_path = f"{path}.{shown(name)}"
            if not isinstance(name, str) or not name:
                self.fail(purpose_path, f"purpose names must be non-empty strings, got {name!r}.")
            elif not is_text(name):
                self.fail(purpose_path, lone_surrogate("purpose name", name))
            else:
                parsed = self.purpose(purpose_value, purpose_path)
                if parsed is not None:
                    purposes[name] = parsed
        return MappingProxyType(purposes)

    def config(self, raw: object) -> LLMConfig:
        if raw is None:
            return LLMConfig()
        raw = self.mapping(raw, CONFIG_ROOT, "a mapping", _TOP_KEYS)
        if raw is None:
            return LLMConfig()
        default = raw.get("default_model")
        models = raw.get("models")
        purposes = self.purposes(raw.get("purposes"))
        return LLMConfig(
            default_model=(
                None if default is None else self.model_ref(default, f"{CONFIG_ROOT}.default_model")
            ),
            models=None if models is None else self.id_list(models, f"{CONFIG_ROOT}.models"),
            blocked_models=self.blocklist(
                raw.get("blocked_models"), f"{CONFIG_ROOT}.blocked_models"
            ),
            require_keys=self.boolean(
                raw.get("require_keys", True), f"{CONFIG_ROOT}.require_keys", True
            ),
            strict=self.boolean(raw.get("strict", False), f"{CONFIG_ROOT}.strict", False),
            purposes=purposes,
        )


def parse_config(raw: object) -> LLMConfig:
    """Parse the raw plugin configuration, raising ``ConfigurationError`` listing every problem."""
    return parse_with_sources(raw).config


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    """A parsed configuration and the environment variables and files its ``$env``/``$file`` read.

    Attributes:
        config: The parsed configuration.
        env_names: The environment variables it read, in order, without repeats.
        file_paths: The files it read, in order, without repeats.
    """

    config: LLMConfig
    env_names: tuple[str, ...]
    file_paths: tuple[str, ...]


def parse_with_sources(raw: object) -> ParsedConfig:
    """Parse like ``parse_config``, also saying which variables and files were read."""
    parser = _Parser()
    config = parser.config(raw)
    if parser.problems:
        raise ConfigurationError(parser.problems)
    return ParsedConfig(
        config, tuple(dict.fromkeys(parser.env_names)), tuple(dict.fromkeys(parser.file_paths))
    )
