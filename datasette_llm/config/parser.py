"""Read the ``plugins: datasette-llm:`` configuration into typed values, each problem with its path.

The configuration is read as written in ``datasette.yaml`` (or metadata, or ``config=``), before
Datasette substitutes ``{$env: NAME}`` and ``{$file: PATH}``: those are resolved here, except
under ``key:``, where they stay references, so that a key's value is read only when it is used
and is never mistaken for the name of a secret.

``Reader`` reads single values, each checked where it stands, and collects every problem with
its configuration path instead of stopping at the first; ``parse_config`` and
``parse_with_sources`` build the whole configuration with it, the usage settings (``pricing``,
``usage``, each purpose's ``budget``) included.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypedDict

from ..errors import (
    ConfigProblem,
    ConfigurationError,
    Substituted,
    is_text,
    lone_surrogate,
    nearest,
    quoted,
    shown,
)
from ..provider_errors import ERROR_KINDS, ErrorKind
from .values import (
    CONFIG_ROOT,
    DEFAULT_PREFIX,
    EMPTY_OPTIONS,
    Budget,
    BudgetPeriod,
    CoordinationSettings,
    KeySetting,
    LLMConfig,
    ModelRef,
    Price,
    PurposeConfig,
    Resilience,
    UsageSettings,
)

__all__ = [
    "FAILED",
    "FALLBACK_KINDS",
    "ParsedConfig",
    "Reader",
    "got",
    "limit_problems",
    "parse_config",
    "parse_with_sources",
    "reference",
    "retention_problems",
]


# Single values.

FALLBACK_KINDS: Final = tuple(kind for kind in ERROR_KINDS if kind != "unknown")
FAILED: Final = object()  # what value() returns when a $env or $file reference fails
# A datasette-secrets secret is also read from the environment variable DATASETTE_SECRETS_<NAME>,
# so its name is an environment variable name. Anything else under key: is a pasted key.
_SECRET_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _looks_like_a_key(name: str) -> bool:
    """A long name mixing lower case and digits (``gsk_3fX...``) is a key, not a secret's name."""
    return len(name) >= 24 and any(c.islower() for c in name) and any(c.isdigit() for c in name)


def _finite(value: float) -> bool:
    """Whether ``value`` is a finite number a float can hold (YAML and JSON read a whole number
    of any size: one beyond a float's range is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def got(value: object) -> str:
    """What a message says was found instead: the type, then the value (never a substituted one)."""
    type_name = "str" if isinstance(value, str) else type(value).__name__
    return f"{type_name}: {quoted(value)}"


def reference(value: object) -> tuple[str, str] | None:
    """Return ``("env", NAME)`` or ``("file", PATH)`` for Datasette's ``{$env: ...}`` syntax."""
    if isinstance(value, Mapping) and len(value) == 1:
        ((marker, target),) = value.items()
        if marker in ("$env", "$file") and isinstance(target, str):
            return marker[1:], target
    return None


class Reader:
    """Reads configuration values, collecting every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []
        self.env_names: list[str] = []
        self.file_paths: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path=path, message=message))

    def value(self, value: object, path: str) -> object:
        """Return ``value``, a ``{$env: NAME}`` or ``{$file: PATH}`` resolved as Datasette would."""
        found = reference(value)
        if found is None:
            return value
        kind, target = found
        if kind == "env":
            self.env_names.append(target)
            if target not in os.environ:
                self.fail(path, f"the environment variable {target} named by $env is not set.")
                return FAILED
            return Substituted(os.environ[target], "env", target)
        self.file_paths.append(target)
        try:
            with open(target) as file:
                return Substituted(file.read().strip(), "file", target)
        except OSError as error:
            self.fail(path, f"cannot read the file {target!r} named by $file: {error.strerror}.")
            return FAILED

    def mapping(
        self, value: object, path: str, expected: str, valid_keys: tuple[str, ...]
    ) -> Mapping[object, object] | None:
        """Return ``value`` if it is a mapping, reporting any key not in ``valid_keys``."""
        if not isinstance(value, Mapping):
            self.fail(path, f"expected {expected}, got {got(value)}.")
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
        if value is FAILED:
            return None
        if not isinstance(value, str):
            self.fail(path, f"expected a model id string, got {got(value)}.")
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
        found = reference(value)
        if found is not None:
            kind, target = found
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
            self.fail(path, f"expected a mapping of model options, got {got(value)}.")
            return EMPTY_OPTIONS
        options: dict[str, object] = {}
        for name, option in value.items():
            if not isinstance(name, str):
                self.fail(path, f"option names must be strings, got {name!r}.")
            elif not is_text(name):
                self.fail(path, lone_surrogate("option name", name))
            else:
                option = self.value(option, f"{path}.{name}")
                if option is FAILED:
                    continue
                if isinstance(option, str) and not is_text(option):
                    self.fail(f"{path}.{name}", lone_surrogate("value", option))
                options[name] = option
        return MappingProxyType(options) if options else EMPTY_OPTIONS

    def number(self, value: object, path: str, what: str) -> float | None:
        """A positive number of seconds (or of ``what``), or ``None`` when not set."""
        value = self.value(value, path)
        if value is None or value is FAILED:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            self.fail(path, f"expected a positive number of {what}, got {got(value)}.")
            return None
        if not _finite(value):
            self.fail(path, f"expected a finite number of {what}: leave it out for no limit.")
            return None
        return float(value)

    def count(self, value: object, path: str, minimum: int) -> int | None:
        """A whole number of at least ``minimum``, or ``None`` when not set."""
        value = self.value(value, path)
        if value is None or value is FAILED:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(path, f"expected a whole number of at least {minimum}, got {got(value)}.")
            return None
        return value

    def kinds(self, value: object, path: str) -> tuple[ErrorKind, ...] | None:
        value = self.value(value, path)
        if value is None or value is FAILED:
            return None
        if not isinstance(value, list | tuple):
            self.fail(
                path,
                f"expected a list of error kinds ({', '.join(FALLBACK_KINDS)}), got {got(value)}.",
            )
            return None
        kinds: set[ErrorKind] = set()
        for index, item in enumerate(value):
            kind = next((k for k in FALLBACK_KINDS if k == item), None)
            if kind is not None:
                kinds.add(kind)
                continue
            if item == "unknown":
                self.fail(
                    f"{path}[{index}]",
                    "'unknown' errors never fall back or retry: an error datasette-llm does "
                    "not recognise may be a bug in the calling code, and is raised as it is. "
                    "Remove it.",
                )
                continue
            suggestion = nearest(item, FALLBACK_KINDS) if isinstance(item, str) else None
            hint = f" Did you mean {suggestion!r}?" if suggestion else ""
            self.fail(
                f"{path}[{index}]",
                f"unknown error kind {quoted(item)}.{hint} "
                f"Error kinds: {', '.join(FALLBACK_KINDS)}.",
            )
        return tuple(kind for kind in FALLBACK_KINDS if kind in kinds)

    def boolean(self, value: object, path: str, default: bool) -> bool:
        value = self.value(value, path)
        if value is FAILED:
            return default
        if isinstance(value, bool):
            return value
        self.fail(path, f"expected true or false, got {got(value)}.")
        return default


# The usage settings: ``pricing``, ``usage`` and each purpose's ``budget``.

_PRICE_KEYS: Final = ("input", "output", "cached_input")
_USAGE_KEYS: Final = ("enabled", "database", "retention_days")
_BUDGET_KEYS: Final = ("usd", "per", "then", "estimate_usd")
_PERIODS: Final[tuple[BudgetPeriod, ...]] = ("day", "week", "month")
_THEN: Final = ("refuse", "fallback")
_COORDINATION_KEYS: Final = ("redis", "processes", "prefix")
_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")


# The whole configuration.

_RESILIENCE_KEYS: Final = (
    "fallbacks",
    "retries",
    "timeout",
    "deadline",
    "fallback_on",
    "max_wait",
)
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
    "coordination",
)
_PURPOSE_KEYS: Final = (
    "model",
    "models",
    "blocked_models",
    *_RESILIENCE_KEYS,
    "budget",
    "locked",
    "allow",
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
    max_wait: float | None


class _Parser(Reader):
    """Builds the whole configuration from its values: models, purposes, resilience, and what
    the usage ledger needs (prices, where rows go, budgets)."""

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
            max_wait=self.number(value.get("max_wait"), f"{path}.max_wait", "seconds"),
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
            allow=self.allow(value.get("allow"), f"{path}.allow"),
        )

    def allow(self, value: object, path: str) -> bool | Mapping[str, object] | None:
        """Read a purpose's ``allow:``: a Datasette allow block, frozen (lists become tuples).

        ``true`` or ``false``, or a mapping of actor key to a value or a list of values
        (``{id: [alice, bob]}``, ``{id: "*"}``, ``{roles: [staff]}``), as Datasette's
        ``actor_matches_allow`` reads it; ``None`` when not set.
        """
        if value is None or isinstance(value, bool):
            return value
        if not isinstance(value, Mapping):
            self.fail(
                path,
                "expected a Datasette allow block: true, false, or a mapping of actor key to "
                f"the values allowed, such as {{id: [alice, bob]}}, got {got(value)}.",
            )
            return None
        block: dict[str, object] = {}
        for key, values in value.items():
            where = f"{path}.{shown(key)}"
            if not isinstance(key, str) or not key:
                self.fail(where, f"actor keys must be non-empty strings, got {key!r}.")
                continue
            if isinstance(values, list | tuple):
                found = [
                    self.allowed_value(item, f"{where}[{index}]")
                    for index, item in enumerate(values)
                ]
                if all(item is not FAILED for item in found):
                    block[key] = tuple(found)
            else:
                one = self.allowed_value(values, where)
                if one is not FAILED:
                    block[key] = one
        return MappingProxyType(block)

    def allowed_value(self, value: object, path: str) -> object:
        """Read one value an allow block matches: a string (``"*"``: any) or a number."""
        value = self.value(value, path)
        if value is FAILED:
            return FAILED
        if isinstance(value, str | int | float):  # bool is an int
            return value
        self.fail(
            path,
            f"expected an actor value (a string, {quoted('*')} for any, or a number), "
            f"or a list of them, got {got(value)}.",
        )
        return FAILED

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
        # A global setting not written is the built-in default: Resilience's own field default.
        written = self.resilience(raw, CONFIG_ROOT)
        settings: dict[str, Any] = {
            name: value for name, value in written.items() if value is not None
        }
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
            coordination=self.coordination(raw.get("coordination")),
            resilience=Resilience(**settings),
        )

    def price_number(self, value: object, path: str) -> float | None:
        value = self.value(value, path)
        if value is FAILED:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not _finite(value)
            or value < 0
        ):
            self.fail(
                path,
                f"expected dollars per million tokens, a finite number of 0 or more, "
                f"got {got(value)}.",
            )
            return None
        return float(value)

    def pricing(self, value: object) -> Mapping[str, Price]:
        path = f"{CONFIG_ROOT}.pricing"
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, Mapping):
            self.fail(
                path,
                "expected a mapping of model id to {input: ..., output: ..., cached_input: ...} "
                f"in dollars per million tokens, got {got(value)}.",
            )
            return MappingProxyType({})
        prices: dict[str, Price] = {}
        for model_id, entry in value.items():
            where = f"{path}.{model_id}"
            if not isinstance(model_id, str) or not model_id or not is_text(model_id):
                self.fail(
                    where,
                    lone_surrogate("model id", None)
                    if isinstance(model_id, str) and model_id
                    else f"expected a model id, got {model_id!r}.",
                )
                continue
            entry = self.mapping(
                entry, where, "{input: ..., output: ..., cached_input: ...}", _PRICE_KEYS
            )
            if entry is None:
                continue
            missing = [name for name in ("input", "output") if name not in entry]
            if missing:
                self.fail(
                    where,
                    f"a price needs {' and '.join(missing)}: dollars per million tokens "
                    "(write 0 for a free model).",
                )
                continue
            numbers = {
                name: self.price_number(entry.get(name), f"{where}.{name}") for name in entry
            }
            if any(number is None for name, number in numbers.items() if name in _PRICE_KEYS):
                continue
            prices[model_id] = Price(
                input=numbers["input"] or 0.0,
                output=numbers["output"] or 0.0,
                cached_input=numbers.get("cached_input"),
            )
        return MappingProxyType(prices)

    def usage(self, value: object) -> UsageSettings:
        path = f"{CONFIG_ROOT}.usage"
        if value is None:
            return UsageSettings()
        value = self.mapping(
            value, path, "a mapping with enabled, database, retention_days", _USAGE_KEYS
        )
        if value is None:
            return UsageSettings()
        database = self.value(value.get("database"), f"{path}.database")
        if (
            database is not None
            and database is not FAILED
            and (not isinstance(database, str) or not database)
        ):
            self.fail(f"{path}.database", f"expected a database name, got {got(database)}.")
            database = None
        enabled = self.boolean(value.get("enabled", True), f"{path}.enabled", True)
        retention = self.number(value.get("retention_days"), f"{path}.retention_days", "days")
        return UsageSettings(
            enabled=enabled,
            database=database if isinstance(database, str) else None,
            retention_days=retention,
        )

    def coordination(self, value: object) -> CoordinationSettings | None:
        """Read ``coordination: {redis: URL, processes: N, prefix: TEXT}``; the URL is never
        quoted in a message (it may hold a password)."""
        path = f"{CONFIG_ROOT}.coordination"
        if value is None:
            return None
        value = self.mapping(
            value, path, "a mapping {redis: {$env: REDIS_URL}, processes: N}", _COORDINATION_KEYS
        )
        if value is None:
            return None
        processes = self.count(value.get("processes"), f"{path}.processes", minimum=1)
        prefix = self.value(value.get("prefix", DEFAULT_PREFIX), f"{path}.prefix")
        if prefix is not FAILED and (
            not isinstance(prefix, str) or not prefix.strip() or not is_text(prefix)
        ):
            self.fail(
                f"{path}.prefix",
                f"expected the text every Redis key starts with, got {got(prefix)}.",
            )
            prefix = FAILED
        if "redis" not in value:
            self.fail(
                path,
                "coordination needs redis: the URL of the Redis server every process shares, "
                "such as redis: {$env: REDIS_URL}. Leave coordination out to keep limits, "
                "cool-downs and budgets in each process.",
            )
            return None
        url = self.value(value["redis"], f"{path}.redis")
        if url is FAILED:
            return None
        if not isinstance(url, str) or not url.startswith(_REDIS_SCHEMES):
            # Never the value itself: a URL may hold a password.
            if isinstance(url, Substituted):
                found = f"{quoted(url)}, which does not"
            elif isinstance(url, str):
                found = "a string that does not"
            else:
                found = f"{type(url).__name__}, which does not"
            self.fail(
                f"{path}.redis",
                f"expected a Redis URL starting with {', '.join(_REDIS_SCHEMES)}; got {found}. "
                "Write it as redis://HOST:PORT/DB, or read it from the environment: "
                "{$env: REDIS_URL}.",
            )
            return None
        if prefix is FAILED or not isinstance(prefix, str):
            return None
        return CoordinationSettings(redis=str(url), processes=processes, prefix=str(prefix))

    def budget(self, value: object, path: str) -> Budget | None:
        if value is None:
            return None
        value = self.mapping(
            value, path, "a mapping {usd: 50, per: month, then: refuse}", _BUDGET_KEYS
        )
        if value is None:
            return None
        usd = self.number(value.get("usd"), f"{path}.usd", "US dollars")
        if usd is None and "usd" not in value:
            self.fail(path, "a budget needs usd: the dollars the purpose may spend per period.")
        per = self.choice(value.get("per", "month"), f"{path}.per", _PERIODS)
        then = self.choice(value.get("then", "refuse"), f"{path}.then", _THEN)
        estimate = self.number(value.get("estimate_usd"), f"{path}.estimate_usd", "US dollars")
        if usd is None or per is None or then is None:
            return None
        return Budget(usd=usd, per=per, then=then, estimate_usd=estimate)  # type: ignore[arg-type]

    def choice(self, value: object, path: str, choices: tuple[str, ...]) -> str | None:
        value = self.value(value, path)
        if value is FAILED:
            return None
        if value in choices:
            return str(value)
        suggestion = nearest(value, choices) if isinstance(value, str) else None
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        self.fail(path, f"expected one of {', '.join(choices)}, got {got(value)}.{hint}")
        return None


def limit_problems(
    config: LLMConfig, canonical: Callable[[str], str] = str
) -> Iterator[ConfigProblem]:
    """Yield an error for each reference giving a model other limits than an earlier one does.

    A model's limits hold for every purpose, so two references to it may not disagree.

    Args:
        canonical: The model id a reference's id or alias stands for (``_operator/checks.py``
            resolves llm's aliases with the installed models); by default, the id as written.
    """
    first: dict[str, tuple[str, ModelRef]] = {}
    for path, ref in config.all_refs():
        if ref.rpm is None and ref.concurrency is None:
            continue
        model_id = canonical(ref.model_id)
        seen_path, seen = first.setdefault(model_id, (path, ref))
        if (seen.rpm, seen.concurrency) == (ref.rpm, ref.concurrency):
            continue
        alias = (
            ""
            if seen.model_id == ref.model_id
            else f" ({quoted(seen.model_id)} and {quoted(ref.model_id)} are the same model, "
            f"{quoted(model_id)}, through llm's aliases)"
        )
        yield ConfigProblem(
            path,
            f"limits for {quoted(ref.model_id)} (rpm {ref.rpm}, concurrency {ref.concurrency}) "
            f"differ from those at {seen_path} (rpm {seen.rpm}, concurrency "
            f"{seen.concurrency}){alias}: a model's limits are shared by every purpose, so give "
            "them once, or give both the same values.",
        )


_PERIOD_DAYS: Final[Mapping[BudgetPeriod, int]] = {"day": 1, "week": 7, "month": 31}
"""The age of the oldest row a budget of each period counts, in whole days."""


def retention_problems(config: LLMConfig) -> Iterator[ConfigProblem]:
    """Yield an error for each budget counting rows that ``usage.retention_days`` deletes."""
    retention = config.usage.retention_days
    if retention is None:
        return
    for name, purpose_config in config.purposes.items():
        budget = purpose_config.budget
        if budget is None or retention >= _PERIOD_DAYS[budget.per]:
            continue
        days = _PERIOD_DAYS[budget.per]
        yield ConfigProblem(
            f"{CONFIG_ROOT}.usage.retention_days",
            f"keeping usage rows {retention:g} days deletes rows the budget at "
            f"{CONFIG_ROOT}.purposes.{shown(name)}.budget.per ({budget.per}) counts, so its spend "
            f"would be forgotten and a spent budget allowed again. Raise retention_days to at "
            f"least {days} (a {budget.per} holds up to {days} days of rows), or give the budget "
            "a shorter period.",
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
    parser.problems.extend(limit_problems(config))
    parser.problems.extend(retention_problems(config))
    if parser.problems:
        raise ConfigurationError(parser.problems)
    return ParsedConfig(
        config, tuple(dict.fromkeys(parser.env_names)), tuple(dict.fromkeys(parser.file_paths))
    )
