"""The ``plugins: datasette-llm:`` configuration as frozen typed values.

``datasette_llm.config_parser`` reads it from Datasette into these. ``settings_for`` reads what
routing does on failure for one purpose, each value with the configuration path that sets it:
prompts, the routing page, ``datasette llm`` and validation all read the settings there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, get_args

from ..provider_errors import DEFAULT_FALLBACK_ON, ErrorKind

__all__ = [
    "Price",
    "CONFIG_ROOT",
    "DEFAULT_PREFIX",
    "EMPTY_OPTIONS",
    "PLUGIN_NAME",
    "KeySetting",
    "KeySettingSource",
    "LLMConfig",
    "ModelRef",
    "Budget",
    "BudgetPeriod",
    "CoordinationSettings",
    "PurposeConfig",
    "Resilience",
    "SETTING_NAMES",
    "SettingName",
    "Settings",
    "UsageSettings",
    "settings_for",
    "shown_url",
]

BudgetPeriod: TypeAlias = Literal["day", "week", "month"]
"""The period a budget is spent over: the calendar day, ISO week or month, in UTC."""

CONFIG_ROOT: Final = "plugins.datasette-llm"
PLUGIN_NAME: Final = "datasette-llm"

EMPTY_OPTIONS: Final[Mapping[str, object]] = MappingProxyType({})
"""No options: the ``options`` of a model reference that has none."""

KeySettingSource: TypeAlias = Literal["secret", "env", "file"]
"""Where a configured key is read from: a datasette-secrets secret, a variable or a file."""


@dataclass(frozen=True, slots=True)
class Price:
    """What a model costs, in US dollars per million tokens.

    Attributes:
        input: Per million input tokens.
        output: Per million output tokens.
        cached_input: Per million cached input tokens (counted within the input tokens), or
            ``None`` to price them as input.
    """

    input: float
    output: float
    cached_input: float | None = None


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
        rpm: At most this many requests per minute to this model, spread evenly; ``None``
            for no limit.
        concurrency: At most this many requests to this model at once; ``None`` for no limit.
    """

    model_id: str
    key: KeySetting | None = None
    options: Mapping[str, object] = field(default_factory=lambda: EMPTY_OPTIONS, compare=False)
    rpm: float | None = None
    concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Resilience:
    """What routing does when a provider fails, for one purpose (its own settings over the
    global ones).

    Attributes:
        fallbacks: The models to try, in order, once the routed model has failed.
        retries: How many more requests one model gets on a ``rate_limit``, ``timeout``,
            ``server_error`` or ``connection`` error, counting those the provider's client
            library retries by itself (the ``openai`` client retries twice per try).
        timeout: Seconds one attempt may take, or ``None`` for the provider client's own.
        deadline: Seconds the whole prompt may take, every attempt and wait included, or
            ``None`` for no limit.
        fallback_on: The error kinds that move on to the next fallback.
        max_wait: Without a ``deadline``, the longest a prompt waits for a model's
            ``Retry-After`` (or its cool-down); a longer one moves on to the next fallback at
            once. With a deadline, the time left bounds each wait instead.
    """

    fallbacks: tuple[ModelRef, ...] = ()
    retries: int = 2
    timeout: float | None = None
    deadline: float | None = None
    fallback_on: tuple[ErrorKind, ...] = DEFAULT_FALLBACK_ON
    max_wait: float = 60.0


@dataclass(frozen=True, slots=True)
class Budget:
    """What a purpose may spend, and what happens once it has.

    Attributes:
        usd: US dollars per period, at the configured ``pricing``.
        per: The period: ``"day"``, ``"week"`` or ``"month"`` (UTC calendar periods).
        then: ``"refuse"``: prompts raise ``BudgetExceededError``; ``"fallback"``: prompts go to
            the purpose's fallbacks, skipping its routed model.
        estimate_usd: US dollars reserved for each prompt in flight, or ``None`` to estimate
            it from the prompt's ``max_tokens`` (else the model's) at the configured price.
    """

    usd: float
    per: BudgetPeriod = "month"
    then: Literal["refuse", "fallback"] = "refuse"
    estimate_usd: float | None = None


@dataclass(frozen=True, slots=True)
class UsageSettings:
    """Where the usage ledger is kept.

    Attributes:
        enabled: Whether a row is recorded for every attempt.
        database: The database the table goes in, or ``None`` for Datasette's internal one.
        retention_days: Rows older than this are deleted, or ``None`` to keep every row.
    """

    enabled: bool = True
    database: str | None = None
    retention_days: float | None = None


DEFAULT_PREFIX: Final = "datasette-llm"
"""The start of every Redis key datasette-llm writes, unless ``coordination.prefix`` says."""


@dataclass(frozen=True, slots=True)
class CoordinationSettings:
    """Where the processes serving one Datasette share their limits, cool-downs and budgets.

    Attributes:
        redis: The Redis URL (``redis://``, ``rediss://`` or ``unix://``). It may hold a
            password: show it with ``shown_url``, never as it is.
        processes: How many processes share the limits: while Redis cannot be reached, each
            keeps ``1 / processes`` of every model's ``rpm`` and ``concurrency`` to itself, or
            ``None`` to keep the whole limits (each process alone would then allow them all).
        prefix: The start of every key written, so that several deployments can share one
            Redis database.
    """

    redis: str
    processes: int | None = None
    prefix: str = DEFAULT_PREFIX

    def __repr__(self) -> str:
        return (
            f"CoordinationSettings(redis={shown_url(self.redis)!r}, "
            f"processes={self.processes!r}, prefix={self.prefix!r})"
        )


def shown_url(url: str) -> str:
    """Return ``url`` with any password in it replaced by ``***``."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    credentials, at, place = rest.rpartition("@")
    if not at:
        return url
    user, colon, _password = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{place}"


@dataclass(frozen=True, slots=True)
class PurposeConfig:
    """Configuration under ``purposes.<name>``.

    Attributes:
        model: The model for this purpose, or ``None``.
        models: The purpose's allowlist (added to the global one), or ``None``.
        blocked_models: Models this purpose may never use.
        fallbacks: The purpose's fallbacks, or ``None`` for the global ``fallbacks``.
        retries: The purpose's ``retries``, or ``None`` for the global value.
        timeout: The purpose's ``timeout``, or ``None`` for the global value.
        deadline: The purpose's ``deadline``, or ``None`` for the global value.
        fallback_on: The purpose's ``fallback_on``, or ``None`` for the global value.
        max_wait: The purpose's ``max_wait``, or ``None`` for the global value.
        budget: What the purpose may spend, or ``None`` for no limit.
        locked: Whether datasette.yaml alone decides it: no override (``/-/llm``) may change it.
        allow: Who may use it (the ``llm-use`` action): a Datasette allow block (``True``,
            ``False``, or a mapping such as ``{"id": ("alice", "bob")}``, lists frozen as
            tuples), or ``None`` for the rules of Datasette's own configuration only. Left
            out of comparison and hashing, as ``ModelRef.options`` is.
    """

    model: ModelRef | None = None
    models: tuple[ModelRef, ...] | None = None
    blocked_models: frozenset[str] = frozenset()
    fallbacks: tuple[ModelRef, ...] | None = None
    retries: int | None = None
    timeout: float | None = None
    deadline: float | None = None
    fallback_on: tuple[ErrorKind, ...] | None = None
    max_wait: float | None = None
    budget: Budget | None = None
    locked: bool = False
    allow: bool | Mapping[str, object] | None = field(default=None, compare=False)

    def allow_block(self) -> bool | dict[str, object] | None:
        """Return ``allow`` as Datasette's ``actor_matches_allow`` reads it (lists, not tuples)."""
        if isinstance(self.allow, Mapping):
            return {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in self.allow.items()
            }
        return self.allow


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
        resilience: What routing does when a provider fails, unless a purpose says otherwise
            (``fallbacks``, ``retries``, ``timeout``, ``deadline``, ``fallback_on``,
            ``max_wait``).
        pricing: The price of each model id, in dollars per million tokens.
        usage: Where the usage ledger is kept.
        coordination: Where the processes serving this Datasette share their limits,
            cool-downs and budgets, or ``None`` to keep them in each process.
        carried_limits: datasette.yaml's model references that give limits, kept by the
            configuration that routing overrides are laid over (``routing.overlay``): a
            model's limits hold wherever they are written, even where an override has routed
            a purpose away from the reference that gives them.
    """

    default_model: ModelRef | None = None
    models: tuple[str, ...] | None = None
    blocked_models: frozenset[str] = frozenset()
    require_keys: bool = True
    purposes: Mapping[str, PurposeConfig] = field(
        default_factory=lambda: MappingProxyType({}), compare=False
    )
    strict: bool = False
    resilience: Resilience = Resilience()
    pricing: Mapping[str, Price] = field(
        default_factory=lambda: MappingProxyType({}), compare=False
    )
    usage: UsageSettings = UsageSettings()
    coordination: CoordinationSettings | None = None
    carried_limits: tuple[ModelRef, ...] = field(default=(), compare=False)

    def purpose(self, name: str | None) -> PurposeConfig | None:
        """Return the configuration of purpose ``name``, if any."""
        if name is None:
            return None
        return self.purposes.get(name)

    def resilience_for(self, name: str | None) -> Resilience:
        """Return what routing does on failure for purpose ``name``: its settings, else global.

        The values of ``settings_for(self, name)``, without where each is set.
        """
        return settings_for(self, name).resilience

    def limit_refs(self) -> Iterator[ModelRef]:
        """Yield every model reference that gives a model limits (``rpm``, ``concurrency``):
        those of ``all_refs``, then ``carried_limits``."""
        for _, ref in self.all_refs():
            if ref.rpm is not None or ref.concurrency is not None:
                yield ref
        yield from self.carried_limits

    def all_refs(self) -> Iterator[tuple[str, ModelRef]]:
        """Yield ``(config_path, ref)`` for every model reference in the configuration."""
        if self.default_model is not None:
            yield f"{CONFIG_ROOT}.default_model", self.default_model
        for name, purpose_config in self.purposes.items():
            if purpose_config.model is not None:
                yield f"{CONFIG_ROOT}.purposes.{name}.model", purpose_config.model
            for index, ref in enumerate(purpose_config.models or ()):
                yield f"{CONFIG_ROOT}.purposes.{name}.models[{index}]", ref
            for index, ref in enumerate(purpose_config.fallbacks or ()):
                yield f"{CONFIG_ROOT}.purposes.{name}.fallbacks[{index}]", ref
        for index, ref in enumerate(self.resilience.fallbacks):
            yield f"{CONFIG_ROOT}.fallbacks[{index}]", ref


SettingName: TypeAlias = Literal[
    "fallbacks", "retries", "timeout", "deadline", "fallback_on", "max_wait"
]
"""A setting of what routing does on failure, at the top level or under ``purposes.<name>``."""

SETTING_NAMES: Final[tuple[SettingName, ...]] = get_args(SettingName)

_BUILT_IN: Final = Resilience()


@dataclass(frozen=True, slots=True)
class Settings:
    """What routing does on failure for one purpose, and where each value is set.

    Attributes:
        purpose: The purpose, or ``None`` for calls without one.
        resilience: The values in effect: the purpose's own, else the global ones, else the
            built-in defaults.
        set_at: For each setting, the configuration path that sets it, or ``None`` for the
            built-in default (a global value equal to the default counts as the default).
    """

    purpose: str | None
    resilience: Resilience
    set_at: Mapping[SettingName, str | None]

    def is_own(self, name: SettingName) -> bool:
        """Return whether the purpose sets ``name`` itself, under ``purposes.<purpose>``."""
        return self.purpose is not None and self.set_at[name] == _own_path(self.purpose, name)

    def fallback_paths(self) -> list[tuple[str, ModelRef]]:
        """Return each fallback with the path of its entry, e.g. ``...fallbacks[0]``."""
        base = self.set_at["fallbacks"]
        if base is None:
            return []
        return [(f"{base}[{index}]", ref) for index, ref in enumerate(self.resilience.fallbacks)]


def settings_for(config: LLMConfig, purpose: str | None) -> Settings:
    """Return what routing does on failure for ``purpose``, each value with where it is set.

    A setting under ``purposes.<purpose>`` wins over the global one, which wins over the
    built-in default. ``purpose`` ``None`` is a call without a purpose: the global settings.
    """
    own = config.purpose(purpose)
    values: dict[str, Any] = {}
    set_at: dict[SettingName, str | None] = {}
    for name in SETTING_NAMES:
        mine = None if own is None else getattr(own, name)
        if mine is not None:
            values[name] = mine
            set_at[name] = _own_path(purpose, name)
            continue
        values[name] = written = getattr(config.resilience, name)
        set_at[name] = None if written == getattr(_BUILT_IN, name) else f"{CONFIG_ROOT}.{name}"
    resilience = config.resilience if own is None else Resilience(**values)
    return Settings(purpose, resilience, MappingProxyType(set_at))


def _own_path(purpose: str | None, name: SettingName) -> str:
    return f"{CONFIG_ROOT}.purposes.{purpose}.{name}"
