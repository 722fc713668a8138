"""The one rule that decides whether a model may serve a purpose for an actor.

Routing, ``LLM.models()``, ``LLM.resolve()``, validation and ``datasette llm check``, the routing
page and the fake router all ask this module: nothing else reads the allow and block lists or
matches a model to its configured reference.

A model may serve a purpose when, in this order:

1. no blocklist names it (``blocked_models``, ``purposes.<name>.blocked_models``);
2. an allowlist, if any, names it: the purpose's ``models`` and the global ``models`` together,
   with the purpose's ``model`` and the global ``default_model`` always included;
3. it supports what the call requires (``Purpose.requires``, ``requires=``);
4. its API key is available, when keys are required (``require_keys``);
5. every ``llm_filter_models`` hook keeps it, for this actor.

A purpose's ``fallbacks`` are asked about like any other model, each just before it is tried.

Names are compared through llm's aliases both ways: an alias in a list stands for the model it
names, and a model is named by any of its aliases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from .._hooks import implementations
from ..config.values import (
    EMPTY_OPTIONS,
    KeySetting,
    LLMConfig,
    ModelRef,
)
from .hooks import call_llm_filter_models
from .keys import KeyStatus, key_status
from .requirements import NOTHING_REQUIRED, Requirements

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from ..actors import Actor
    from .models import ModelRegistry

__all__ = ["Policy", "Reference", "Screening", "policy_for", "screen"]


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

    Build it with ``policy_for``, which reuses it while the configuration and the installed
    models stay the same objects.

    Attributes:
        config: The parsed configuration.
        purpose: The purpose name, or ``None`` for a call without one.
        registry: The installed models, whose aliases names are compared through.
        allowlist: The ids the purpose may use, or ``None`` when any installed model may.
        blocked: Each blocked id, with the configuration setting that blocks it.
        references: For each configured model id, its keys and options for this purpose.
        fallbacks: The ids the purpose falls back to, in order (``purposes.<name>.fallbacks``,
            else the global ``fallbacks``).
    """

    config: LLMConfig
    purpose: str | None
    registry: ModelRegistry
    allowlist: frozenset[str] | None = field(init=False)
    blocked: Mapping[str, str] = field(init=False)
    references: Mapping[str, Reference] = field(init=False)
    fallbacks: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        purpose_config = config.purpose(self.purpose)
        listed = purpose_config.models if purpose_config is not None else None
        # The configured defaults, always allowed: the purpose's model, then default_model.
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
        allowlist: frozenset[str] | None = None
        if config.models is not None or listed is not None:
            names = [*(ref.model_id for ref in listed or ()), *(config.models or ())]
            names.extend(ref.model_id for ref in defaults)
            allowlist = frozenset(self.canonical(name) for name in names)
        fallbacks = config.resilience_for(self.purpose).fallbacks
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
        limits: dict[str, tuple[float | None, int | None]] = {}
        for _, ref in config.all_refs():
            if ref.rpm is not None or ref.concurrency is not None:
                limits.setdefault(self.canonical(ref.model_id), (ref.rpm, ref.concurrency))
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
        object.__setattr__(self, "allowlist", allowlist)
        object.__setattr__(self, "blocked", MappingProxyType(blocked))
        object.__setattr__(self, "references", MappingProxyType(references))
        canonical_fallbacks = (self.canonical(ref.model_id) for ref in fallbacks)
        object.__setattr__(self, "fallbacks", tuple(dict.fromkeys(canonical_fallbacks)))

    def canonical(self, name: str) -> str:
        """Return the model id ``name`` stands for (through llm's aliases), else ``name``."""
        return self.registry.canonical(name)

    def refusal(self, name: str) -> str | None:
        """Return why the configuration refuses model ``name`` for this purpose, or ``None``."""
        model_id = self.canonical(name)
        where = self.blocked.get(model_id)
        if where is not None:
            return f"it is in {where}"
        if self.allowlist is not None and model_id not in self.allowlist:
            return "it is not in the allowlist for this purpose"
        return None

    def reference(self, name: str) -> Reference:
        """Return the keys and options the configuration gives model ``name`` for this purpose.

        References count in this order: the purpose's ``models`` entries, the purpose's
        ``model``, then ``default_model``; each matches through llm's aliases.
        """
        return self.references.get(self.canonical(name), _NO_REFERENCE)

    def preferred(self) -> list[str]:
        """Return the ids configured for this purpose, in the order ``models()`` lists them.

        The purpose's ``models`` in configuration order, then the global ``models``.
        """
        purpose_config = self.config.purpose(self.purpose)
        names = [ref.model_id for ref in (purpose_config.models or ())] if purpose_config else []
        names.extend(self.config.models or ())
        return list(dict.fromkeys(self.canonical(name) for name in names))


_NO_REFERENCE: Final = Reference()
NO_LIMITS: Final = (None, None)
_policies: dict[tuple[int, int, str | None], Policy] = {}
_MAX_POLICIES: Final = 4096


def policy_for(config: LLMConfig, purpose: str | None, registry: ModelRegistry) -> Policy:
    """Return the policy for ``purpose``, reused while ``config`` and ``registry`` are the same.

    Both are frozen snapshots, replaced (never changed) when the configuration or the installed
    models change, so their identity says whether a cached policy still holds.
    """
    key = (id(config), id(registry), purpose)
    policy = _policies.get(key)
    if policy is not None and policy.config is config and policy.registry is registry:
        return policy
    if len(_policies) >= _MAX_POLICIES:
        _policies.clear()
    policy = _policies[key] = Policy(config, purpose, registry)
    return policy


@dataclass(frozen=True, slots=True)
class Screening:
    """Which models passed the policy and why the others did not.

    Attributes:
        models: The models that may serve, in the order given.
        refused: For each model that may not, why.
        keys: The key status of each model whose key was checked.
    """

    models: list[AsyncModel]
    refused: Mapping[str, str]
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
    refused: dict[str, str] = {}
    statuses: dict[str, KeyStatus] = {}
    passed: list[AsyncModel] = []
    known: dict[tuple[object, ...], KeyStatus] = {}
    has_lists = bool(policy.blocked) or policy.allowlist is not None
    for model in models:
        reason = policy.refusal(model.model_id) if has_lists else None
        if reason is None and requires:
            lacking = requires.missing(model)
            if lacking:
                reason = f"it does not support {' or '.join(lacking)}, which the call requires"
        if reason is None and require_keys and getattr(model, "needs_key", None):
            settings = policy.reference(model.model_id).keys
            group = _key_group(model, settings)
            if group not in known:
                known[group] = await key_status(datasette, settings, model)
            statuses[model.model_id] = status = known[group]
            if not status.available:
                reason = f"it has no API key (set the secret {status.secret_name})"
        if reason is None:
            passed.append(model)
        else:
            refused[model.model_id] = reason
    if passed and implementations("llm_filter_models"):
        passed, removed_by = await call_llm_filter_models(datasette, passed, actor, policy.purpose)
        for model_id, plugin_name in removed_by.items():
            refused[model_id] = f"llm_filter_models in plugin {plugin_name!r} removed it"
    return Screening(passed, MappingProxyType(refused), MappingProxyType(statuses))
