"""The one rule that decides whether a model may serve a purpose for an actor.

Routing, ``LLM.models()``, ``LLM.resolve()``, validation and ``datasette llm check``, the routing
page and the fake router all ask this module: nothing else reads the allow and block lists or
matches a model to its configured reference.

A model may serve a purpose when, in this order:

1. no blocklist names it (``blocked_models``, ``purposes.<name>.blocked_models``);
2. an allowlist, if any, names it (``allowlist_of``): the purpose's ``models`` and the global
   ``models`` together, with the purpose's ``model`` and the global ``default_model`` always
   included;
3. it supports what the call requires (``Purpose.requires``, ``requires=``);
4. its API key is available, when keys are required (``require_keys``);
5. every ``llm_filter_models`` hook keeps it, for this actor.

A refused model gets a ``Refusal`` naming which of these checks refused it (``RefusalKind``) and
why: pages and messages read the kind from here, never work it out again.

A purpose's ``fallbacks`` are asked about like any other model, each just before it is tried.

Names are compared through llm's aliases both ways: an alias in a list stands for the model it
names, and a model is named by any of its aliases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, get_args

from .._hooks import implementations
from ..config.values import (
    EMPTY_OPTIONS,
    KeySetting,
    LLMConfig,
    ModelRef,
    Resilience,
    settings_for,
)
from ..state import Slot, state_of
from .hooks import call_llm_filter_models
from .keys import KeyStatus, key_status
from .requirements import NOTHING_REQUIRED, Requirements

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from ..actors import Actor
    from .models import ModelRegistry

__all__ = [
    "REFUSAL_KINDS",
    "Policy",
    "Reference",
    "Refusal",
    "RefusalKind",
    "Screening",
    "allowlist_of",
    "model_limits",
    "policy_for",
    "screen",
]

RefusalKind: TypeAlias = Literal[
    "blocked", "not_allowed", "lacks_requirement", "keyless", "filtered"
]
"""Which check of the policy refuses a model (see the module), in the order they are made."""

REFUSAL_KINDS: Final[tuple[RefusalKind, ...]] = get_args(RefusalKind)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the policy refuses a model for a purpose: the check that said no, and its reason.

    Attributes:
        kind: ``"blocked"`` (a blocklist names it), ``"not_allowed"`` (the allowlist does not),
            ``"lacks_requirement"`` (it lacks what the call requires), ``"keyless"`` (its API
            key is not available) or ``"filtered"`` (an ``llm_filter_models`` hook removed it).
        reason: The reason as a phrase for messages and pages, e.g. "it is in blocked_models".
    """

    kind: RefusalKind
    reason: str

    def __str__(self) -> str:
        return self.reason


def allowlist_of(config: LLMConfig, purpose: str | None) -> tuple[str, ...] | None:
    """Return the ids ``purpose`` may use, as written and in order; ``None`` when any may.

    There is an allowlist when the global ``models`` or the purpose's ``models`` is set. Its
    order is the one ``models()`` and the routing page follow: the purpose's ``model``, the
    purpose's ``models``, the global ``models``, then ``default_model`` (the configured
    defaults are always allowed). Each id comes once, where first written; aliases are left
    as written (``Policy`` resolves them).
    """
    purpose_config = config.purpose(purpose)
    listed = None if purpose_config is None else purpose_config.models
    if config.models is None and listed is None:
        return None
    own = None if purpose_config is None else purpose_config.model
    names = [
        *(() if own is None else (own.model_id,)),
        *(ref.model_id for ref in listed or ()),
        *(config.models or ()),
        *(() if config.default_model is None else (config.default_model.model_id,)),
    ]
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class Reference:
    """What the configuration says about one model for one purpose.

    Attributes:
        keys: Where its API key may come from, most specific reference first.
        options: Its default model options (from the most specific reference that has any).
        rpm: Its client-side requests-per-minute limit, if any reference sets one.
        concurrency: Its client-side concurrent-requests limit, if any reference sets one.
    """

    keys: tuple[KeySetting, ...] = ()
    options: Mapping[str, object] = field(default_factory=lambda: EMPTY_OPTIONS)
    rpm: float | None = None
    concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """The operator's rules for one purpose, with every name resolved through llm's aliases.

    Get it with ``policy_for``, which reuses it while the configuration and the installed
    models stay the same objects, or from ``Policies``.

    Attributes:
        config: The parsed configuration.
        purpose: The purpose name, or ``None`` for a call without one.
        registry: The installed models, whose aliases names are compared through.
        allowlist: The ids the purpose may use, or ``None`` when any installed model may.
        order: The allowlist's ids in order (``allowlist_of``); empty without an allowlist.
        blocked: Each blocked id, with the configuration setting that blocks it.
        references: For each configured model id, its keys and options for this purpose.
        fallbacks: The ids the purpose falls back to, in order (``purposes.<name>.fallbacks``,
            else the global ``fallbacks``).
        resilience: What routing does on failure for the purpose (``settings_for``).
    """

    config: LLMConfig
    purpose: str | None
    registry: ModelRegistry
    limits: Mapping[str, tuple[float | None, int | None]] | None = field(
        default=None, compare=False, repr=False
    )
    allowlist: frozenset[str] | None = field(init=False)
    order: tuple[str, ...] = field(init=False)
    blocked: Mapping[str, str] = field(init=False)
    references: Mapping[str, Reference] = field(init=False)
    fallbacks: tuple[str, ...] = field(init=False)
    resilience: Resilience = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        purpose_config = config.purpose(self.purpose)
        listed = purpose_config.models if purpose_config is not None else None
        # The configured defaults: the purpose's model, then default_model.
        candidates = [purpose_config.model if purpose_config is not None else None]
        defaults: list[ModelRef] = [
            ref for ref in (*candidates, config.default_model) if ref is not None
        ]
        blocked: dict[str, str] = {}
        if purpose_config is not None:
            for name in purpose_config.blocked_models:
                blocked[self.canonical(name)] = f"purposes.{self.purpose}.blocked_models"
        for name in config.blocked_models:
            blocked[self.canonical(name)] = "blocked_models"
        written = allowlist_of(config, self.purpose)
        order = tuple(dict.fromkeys(self.canonical(name) for name in written or ()))
        resilience = settings_for(config, self.purpose).resilience
        fallbacks = resilience.fallbacks
        # Most specific first: the purpose's models entries, its model, default_model, then
        # the fallbacks. Limits are a model's wherever they are given (the parser checks that
        # they agree), so every reference in the configuration counts for them.
        keys: dict[str, list[KeySetting]] = {}
        options: dict[str, Mapping[str, object]] = {}
        for ref in (*(listed or ()), *defaults, *fallbacks):
            model_id = self.canonical(ref.model_id)
            keys.setdefault(model_id, [])
            if ref.key is not None:
                keys[model_id].append(ref.key)
            if ref.options and model_id not in options:
                options[model_id] = ref.options
        limits = self.limits if self.limits is not None else model_limits(config, self.registry)
        references = {
            model_id: Reference(
                tuple(settings),
                options.get(model_id, EMPTY_OPTIONS),
                *limits.get(model_id, NO_LIMITS),
            )
            for model_id, settings in keys.items()
        }
        for model_id, (rpm, concurrency) in limits.items():
            if model_id not in references:
                references[model_id] = Reference((), EMPTY_OPTIONS, rpm, concurrency)
        object.__setattr__(self, "allowlist", None if written is None else frozenset(order))
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "blocked", MappingProxyType(blocked))
        object.__setattr__(self, "references", MappingProxyType(references))
        canonical_fallbacks = (self.canonical(ref.model_id) for ref in fallbacks)
        object.__setattr__(self, "fallbacks", tuple(dict.fromkeys(canonical_fallbacks)))
        object.__setattr__(self, "resilience", resilience)

    def canonical(self, name: str) -> str:
        """Return the model id ``name`` stands for (through llm's aliases), else ``name``."""
        return self.registry.canonical(name)

    def refusal(self, name: str) -> Refusal | None:
        """Return why the configuration refuses model ``name`` for this purpose, or ``None``."""
        model_id = self.canonical(name)
        where = self.blocked.get(model_id)
        if where is not None:
            return Refusal("blocked", f"it is in {where}")
        if self.allowlist is not None and model_id not in self.allowlist:
            return Refusal("not_allowed", "it is not in the allowlist for this purpose")
        return None

    def reference(self, name: str) -> Reference:
        """Return the keys and options the configuration gives model ``name`` for this purpose.

        References count in this order: the purpose's ``models`` entries, the purpose's
        ``model``, then ``default_model``; each matches through llm's aliases.
        """
        return self.references.get(self.canonical(name), _NO_REFERENCE)

    def preferred(self) -> list[str]:
        """Return the ids configured for this purpose, in the order ``models()`` lists them.

        The allowlist's order (``allowlist_of``); none when there is no allowlist.
        """
        return list(self.order)


def model_limits(
    config: LLMConfig, registry: ModelRegistry
) -> Mapping[str, tuple[float | None, int | None]]:
    """Each model's limits (``rpm``, ``concurrency``), by model id through llm's aliases, from
    every reference of ``config`` that gives them (the parser checks that they agree): a
    model's limits are the same for every purpose, so ``Policies`` works them out once."""
    limits: dict[str, tuple[float | None, int | None]] = {}
    for ref in config.limit_refs():
        limits.setdefault(registry.canonical(ref.model_id), (ref.rpm, ref.concurrency))
    return MappingProxyType(limits)


_NO_REFERENCE: Final = Reference()
NO_LIMITS: Final = (None, None)
_MAX_PURPOSES: Final = 4096  # purpose names are the callers': forget them all past this many


class Policies:
    """Build the policy of each purpose under one configuration and registry, once each.

    Attributes:
        config: The parsed configuration.
        registry: The installed models.
    """

    __slots__ = ("_by_purpose", "_limits", "config", "registry")

    def __init__(self, config: LLMConfig, registry: ModelRegistry) -> None:
        self.config = config
        self.registry = registry
        self._by_purpose: dict[str | None, Policy] = {}
        self._limits: Mapping[str, tuple[float | None, int | None]] | None = None

    def of(self, purpose: str | None) -> Policy:
        """Return the policy for ``purpose`` (``None``: a call without one)."""
        policy = self._by_purpose.get(purpose)
        if policy is None:
            if len(self._by_purpose) >= _MAX_PURPOSES:
                self._by_purpose.clear()
            if self._limits is None:  # once for every purpose: they read every reference
                self._limits = model_limits(self.config, self.registry)
            policy = Policy(self.config, purpose, self.registry, self._limits)
            self._by_purpose[purpose] = policy
        return policy


# The policies under the last configurations, newest first: the configuration in effect, and
# the one as written that the routing page and the overrides are checked against.
_POLICIES: Final[Slot[tuple[Policies, ...]]] = Slot("the policies")
_KEPT: Final = 2


def policy_for(
    datasette: Datasette, config: LLMConfig, purpose: str | None, registry: ModelRegistry
) -> Policy:
    """Return the policy for ``purpose``, reused while ``config`` and ``registry`` are the same.

    Both are frozen snapshots, replaced (never changed) when the configuration or the installed
    models change, so their identity says whether the policies kept in ``datasette``'s
    ``State`` still hold. Code without a Datasette (validating a configuration) makes its own
    ``Policies``.
    """
    state = state_of(datasette)
    kept = state.get(_POLICIES) or ()
    for policies in kept:
        if policies.config is config and policies.registry is registry:
            return policies.of(purpose)
    policies = Policies(config, registry)
    state.put(_POLICIES, (policies, *kept[: _KEPT - 1]))
    return policies.of(purpose)


@dataclass(frozen=True, slots=True)
class Screening:
    """Which models passed the policy and why the others did not.

    Attributes:
        models: The models that may serve, in the order given.
        refused: For each model that may not, why (the check that refused it, and its reason).
        keys: The key status of each model whose key was checked.
    """

    models: list[AsyncModel]
    refused: Mapping[str, Refusal]
    keys: Mapping[str, KeyStatus]


def _key_group(model: AsyncModel, settings: tuple[KeySetting, ...]) -> tuple[object, ...]:
    """Models with the same provider, key variable and settings have the same key status."""
    return (getattr(model, "needs_key", None), getattr(model, "key_env_var", None), settings)


async def screen(
    datasette: Datasette,
    policy: Policy,
    models: Sequence[AsyncModel],
    actor: Actor | None,
    *,
    require_keys: bool,
    requires: Requirements = NOTHING_REQUIRED,
) -> Screening:
    """Check ``models`` against ``policy``: configuration, requirements, keys, filter hooks.

    Args:
        require_keys: Leave out models whose API key is not available.
        requires: Leave out models that lack one of these.
    """
    refused: dict[str, Refusal] = {}
    statuses: dict[str, KeyStatus] = {}
    passed: list[AsyncModel] = []
    known: dict[tuple[object, ...], KeyStatus] = {}
    has_lists = bool(policy.blocked) or policy.allowlist is not None
    required = bool(requires)  # once: every installed model may pass through this loop
    for model in models:
        refusal = policy.refusal(model.model_id) if has_lists else None
        if refusal is None and required:
            lacking = requires.missing(model)
            if lacking:
                needs = " or ".join(lacking)
                refusal = Refusal(
                    "lacks_requirement", f"it does not support {needs}, which the call requires"
                )
        if refusal is None and require_keys and getattr(model, "needs_key", None):
            settings = policy.reference(model.model_id).keys
            group = _key_group(model, settings)
            if group not in known:
                known[group] = await key_status(datasette, settings, model)
            statuses[model.model_id] = status = known[group]
            if not status.available:
                missing = f"it has no API key (set the secret {status.secret_name})"
                refusal = Refusal("keyless", missing)
        if refusal is None:
            passed.append(model)
        else:
            refused[model.model_id] = refusal
    if passed and implementations("llm_filter_models"):
        passed, removed_by = await call_llm_filter_models(datasette, passed, actor, policy.purpose)
        for model_id, plugin_name in removed_by.items():
            removed = f"llm_filter_models in plugin {plugin_name!r} removed it"
            refused[model_id] = Refusal("filtered", removed)
    return Screening(passed, MappingProxyType(refused), MappingProxyType(statuses))
