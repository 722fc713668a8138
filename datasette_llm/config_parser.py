"""Reading the ``plugins: datasette-llm:`` configuration from Datasette into typed values.

The configuration is read as written in ``datasette.yaml`` (or metadata, or ``config=``), before
Datasette substitutes ``{$env: NAME}`` and ``{$file: PATH}``: those are resolved here, except
under ``key:``, where they stay references, so that a key's value is read only when it is used
and is never mistaken for the name of a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypedDict

from .config import (
    CONFIG_ROOT,
    EMPTY_OPTIONS,
    LLMConfig,
    ModelRef,
    PurposeConfig,
    Resilience,
)
from .config_reader import FAILED, got, reference
from .config_usage import UsageReader
from .errors import (
    ConfigurationError,
    is_text,
    lone_surrogate,
    quoted,
    shown,
)
from .provider_errors import ErrorKind

__all__ = ["ParsedConfig", "parse_config", "parse_with_sources"]

_RESILIENCE_KEYS: Final = ("fallbacks", "retries", "timeout", "deadline", "fallback_on")
_TOP_KEYS: Final = (
    "default_model",
    "models",
    "blocked_models",
    "require_keys",
    "purposes",
    "strict",
    *_RESILIENCE_KEYS,
    "pricing",
    "usage",
)
_PURPOSE_KEYS: Final = (
    "model",
    "models",
    "blocked_models",
    *_RESILIENCE_KEYS,
    "budget",
    "locked",
)
_REF_KEYS: Final = ("model", "key", "options", "rpm", "concurrency")
_MAX_RETRIES: Final = 10


class _Settings(TypedDict):
    """What routing does on failure, as written at one level (``None``: not set there)."""

    fallbacks: tuple[ModelRef, ...] | None
    retries: int | None
    timeout: float | None
    deadline: float | None
    fallback_on: tuple[ErrorKind, ...] | None


class _Parser(UsageReader):
    """Builds the whole configuration from its values."""

    def model_ref(self, value: object, path: str) -> ModelRef | None:
        value = self.value(value, path)
        if value is FAILED:
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
        rpm = self.number(value.get("rpm"), f"{path}.rpm", "requests per minute")
        concurrency = self.count(value.get("concurrency"), f"{path}.concurrency", minimum=1)
        if model_id is None:
            return None
        return ModelRef(model_id, key, parsed, rpm, concurrency)

    def resilience(self, value: Mapping[object, object], path: str) -> _Settings:
        """The resilience settings at ``path`` (``None`` for each one not set)."""
        fallbacks = value.get("fallbacks")
        timeout = self.number(value.get("timeout"), f"{path}.timeout", "seconds")
        deadline = self.number(value.get("deadline"), f"{path}.deadline", "seconds")
        if timeout is not None and deadline is not None and timeout > deadline:
            self.fail(
                f"{path}.timeout",
                f"the timeout of one attempt ({timeout:g} s) is longer than the deadline of "
                f"the whole prompt ({deadline:g} s at {path}.deadline): lower it, or raise "
                "the deadline.",
            )
        retries = self.count(value.get("retries"), f"{path}.retries", minimum=0)
        if retries is not None and retries > _MAX_RETRIES:
            self.fail(
                f"{path}.retries",
                f"{retries} retries of one model is more than {_MAX_RETRIES}: a provider still "
                "failing after that is down; add fallbacks instead.",
            )
            retries = None
        return _Settings(
            fallbacks=(
                None if fallbacks is None else self.ref_list(fallbacks, f"{path}.fallbacks")
            ),
            retries=retries,
            timeout=timeout,
            deadline=deadline,
            fallback_on=self.kinds(value.get("fallback_on"), f"{path}.fallback_on"),
        )

    def id_list(self, value: object, path: str) -> tuple[str, ...] | None:
        value = self.value(value, path)
        if value is FAILED:
            return None
        if not isinstance(value, list | tuple):
            self.fail(path, f"expected a list of model ids, got {got(value)}.")
            return None
        ids: list[str] = []
        for index, item in enumerate(value):
            if isinstance(item, Mapping) and reference(item) is None:
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
        if value is FAILED:
            return None
        if not isinstance(value, list | tuple):
            self.fail(path, f"expected a list of model references, got {got(value)}.")
            return None
        refs = [self.model_ref(item, f"{path}[{index}]") for index, item in enumerate(value)]
        return tuple(ref for ref in refs if ref is not None)

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
            **self.resilience(value, path),
            budget=self.budget(value.get("budget"), f"{path}.budget"),
            locked=self.boolean(value.get("locked", False), f"{path}.locked", False),
        )

    def purposes(self, value: object) -> Mapping[str, PurposeConfig]:
        path = f"{CONFIG_ROOT}.purposes"
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, Mapping):
            self.fail(
                path,
                f"expected a mapping of purpose name to its configuration, got {got(value)}.",
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
        settings = self.resilience(raw, CONFIG_ROOT)
        unset = Resilience()
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
            pricing=self.pricing(raw.get("pricing")),
            usage=self.usage(raw.get("usage")),
            resilience=Resilience(
                fallbacks=unset.fallbacks
                if settings["fallbacks"] is None
                else settings["fallbacks"],
                retries=unset.retries if settings["retries"] is None else settings["retries"],
                timeout=settings["timeout"],
                deadline=settings["deadline"],
                fallback_on=(
                    unset.fallback_on
                    if settings["fallback_on"] is None
                    else settings["fallback_on"]
                ),
            ),
        )


def _check_limits(parser: _Parser, config: LLMConfig) -> None:
    """A model's limits hold for every purpose: two references may not give it different ones."""
    first: dict[str, tuple[str, float | None, int | None]] = {}
    for path, ref in config.all_refs():
        if ref.rpm is None and ref.concurrency is None:
            continue
        seen = first.setdefault(ref.model_id, (path, ref.rpm, ref.concurrency))
        if seen[1:] != (ref.rpm, ref.concurrency):
            parser.fail(
                path,
                f"limits for {quoted(ref.model_id)} (rpm {ref.rpm}, concurrency "
                f"{ref.concurrency}) differ from those at {seen[0]} (rpm {seen[1]}, concurrency "
                f"{seen[2]}): a model's limits are shared by every purpose, so give them once, "
                "or give both the same values.",
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
    _check_limits(parser, config)
    if parser.problems:
        raise ConfigurationError(parser.problems)
    return ParsedConfig(
        config, tuple(dict.fromkeys(parser.env_names)), tuple(dict.fromkeys(parser.file_paths))
    )
