"""The routing report: which model serves each purpose and why, as one frozen typed value.

Built once per request of ``/-/llm`` (and by ``datasette llm purposes``) from the configuration,
the registered purposes, the installed models and a real routing of every purpose, as a call
with no actor would be routed. It holds secret *names* only, never a key, and reading it reads
no stored secret: keys are only looked for (``key_status``), never read.

For each purpose it holds:

- its chain: the routed model, then every fallback in order, each with whether the policy would
  admit it (``policy.screen``, its key required, as ``routing.route.admit`` asks just before a
  prompt tries it) and if not why, and the settings that apply (``retries``, ``timeout``,
  ``deadline``, ``fallback_on``, ``max_wait``) each with the configuration path that sets it;
- who may use it (the ``llm-use`` action), read from the configuration: the global block
  ``permissions: {llm-use: ...}``, the purpose's own ``allow:`` and the deprecated
  ``databases: {<purpose>: {permissions: {llm-use: ...}}}``. Rules a permissions plugin adds
  through ``permission_resources_sql`` depend on the actor and are not listed; the page says so.

``serving_problems`` is what ``datasette llm check`` adds to validation: a purpose no model can
serve is an error (its calls raise ``ModelNotFoundError``); a configured model passed over for
want of a key while another serves the purpose, a fallback without a key or one a filter hook
removes, is a warning. ``log_key_problems_at_startup`` logs its key warnings when
``datasette serve`` starts, without building the report: only a configured model that needs a
key is looked at, and its purpose routed only when that key is missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import llm

from ..config.values import CONFIG_ROOT, LLMConfig, Resilience, settings_for
from ..errors import (
    ConfigProblem,
    ConfigurationError,
    ModelNotFoundError,
    Substituted,
    quoted,
    shown,
)
from ..log import logger
from ..prompting.attempts import client_retries, tries_of
from ..prompting.clients import adapt
from ..routing.catalog import get_purpose_collisions, get_purpose_owner
from ..routing.keys import KeyStatus, key_status, secret_variable
from ..routing.models import ModelRegistry, current_registry, find_model
from ..routing.overlay import config_for
from ..routing.permissions import UseRule, use_rules, who_may
from ..routing.policy import Policy, RefusalKind, allowlist_of, policy_for, screen
from ..routing.purposes import Purpose, purpose_name
from ..routing.requirements import NOTHING_REQUIRED, Requirements
from ..routing.route import requirements_for, route
from .checks import (
    MissingModel,
    UnregisteredPurpose,
    find_missing_models,
    find_unregistered_purposes,
    purposes_or_problem,
    startup_validation_deferred,
    validate_datasette,
)

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from ..config.values import LLMConfig, ModelRef
    from ..routing.models import ModelRegistry
    from ..routing.policy import Policy
    from ..routing.purposes import PurposeCollision
    from ..routing.route import ResolutionStep

__all__ = [
    "AllowedModel",
    "Chain",
    "ChainLink",
    "MayUse",
    "PurposeRoute",
    "ROUTE_TIMEOUT_SECONDS",
    "RefusedAs",
    "Route",
    "RoutingReport",
    "Setting",
    "SettingValue",
    "UseRule",
    "build_chain",
    "build_report",
    "key_json",
    "key_problems_at_startup",
    "log_key_problems_at_startup",
    "missing_key",
    "serving_problems",
    "who_may_use",
    "with_may_use",
]


# Who may use each purpose.


@dataclass(frozen=True, slots=True)
class MayUse:
    """Who may use one purpose.

    Attributes:
        everyone: No rule is configured and Datasette allows ``llm-use`` by default.
        rules: The configured rules that apply: the purpose's own first (its ``allow:``, then
            the deprecated ``databases:`` block), then the global one.
        text: Who may, in words ("everyone", "only the actors alice and bob", "nobody but
            root"), derived from the rules that decide for the purpose.
    """

    everyone: bool
    rules: tuple[UseRule, ...]
    text: str

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "everyone": self.everyone,
            "rules": [rule.to_json() for rule in self.rules],
            "text": self.text,
        }


def who_may_use(datasette: Datasette, names: Iterable[str]) -> dict[str, MayUse]:
    """Return, for each purpose name, who the configuration lets use it."""
    report: dict[str, MayUse] = {}
    for name in names:
        rules = use_rules(datasette, name)
        everyone = not rules and not datasette.default_deny
        report[name] = MayUse(everyone, rules, who_may(datasette, name))
    return report


def with_may_use(document: dict[str, object], may_use: Mapping[str, MayUse]) -> dict[str, object]:
    """Add ``may_use`` to each purpose of the ``/-/llm.json`` document; return the document."""
    purposes = document.get("purposes")
    for purpose in purposes if isinstance(purposes, list) else ():
        shown = may_use.get(str(purpose.get("name"))) if isinstance(purpose, dict) else None
        if shown is not None:
            purpose["may_use"] = shown.to_json()
    return document


# Each purpose's chain: the routed model, then every fallback in order.

RefusedAs: TypeAlias = Literal[
    RefusalKind,
    "not_installed",
    "routed_model",
    "repeated",
    "unchecked",
]
"""Why a fallback would not be tried (see ``ChainLink.refused_as``): the policy's own kind of
refusal (``RefusalKind``), or one about the chain itself."""

SettingValue: TypeAlias = "int | float | tuple[str, ...] | None"
_DEFAULTS: Final = Resilience()
_ROUTED_MODEL: Final = (
    "it is the routed model: a failing model is retried (retries), not tried again as its "
    "own fallback"
)


def key_json(key: KeyStatus | None) -> dict[str, object] | None:
    """Return a key status as JSON: where the key comes from, never the key."""
    if key is None:
        return None
    return {"source": key.source, "secret_name": key.secret_name, "available": key.available}


@dataclass(frozen=True, slots=True)
class Setting:
    """One resilience setting as it applies to a purpose.

    Attributes:
        value: The value in effect.
        set_at: The configuration path that sets it, or ``None`` for the built-in default.
    """

    value: SettingValue
    set_at: str | None

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"value": value, "set_at": self.set_at}


@dataclass(frozen=True, slots=True)
class ChainLink:
    """One model of a purpose's chain: the routed model, or a fallback.

    Attributes:
        model_id: The id as routed, or the fallback's id as written.
        role: ``"routed"`` or ``"fallback"``.
        path: Where the fallback is written; ``None`` for the routed model.
        refusal: Why the policy would not admit it, or ``None`` when it would be tried.
        refused_as: The kind of ``refusal``, for tooling.
        key: Its key status, or ``None`` when it is not installed or not checked.
        rpm: Its requests-per-minute limit, if configured.
        concurrency: Its concurrent-requests limit, if configured.
        adapted: Whether datasette-llm owns its client's retries: each try is one request,
            through a client pooled per endpoint and key (``prompting/clients.py``).
        client_retries: How many times the provider's client library retries by itself (0
            when ``adapted``).
        tries: How many times datasette-llm itself tries it (each try is up to
            ``1 + client_retries`` requests).
    """

    model_id: str
    role: Literal["routed", "fallback"]
    path: str | None
    refusal: str | None
    refused_as: RefusedAs | None
    key: KeyStatus | None
    rpm: float | None
    concurrency: int | None
    adapted: bool
    client_retries: int
    tries: int

    @property
    def admitted(self) -> bool:
        """Whether a prompt would try it."""
        return self.refusal is None

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "model_id": self.model_id,
            "role": self.role,
            "path": self.path,
            "admitted": self.admitted,
            "refusal": self.refusal,
            "refused_as": self.refused_as,
            "key": key_json(self.key),
            "rpm": self.rpm,
            "concurrency": self.concurrency,
            "adapted": self.adapted,
            "client_retries": self.client_retries,
            "tries": self.tries,
        }


@dataclass(frozen=True, slots=True)
class Chain:
    """What a prompt for one purpose tries, in order, and the settings that apply.

    Attributes:
        links: The routed model (when routing found one), then each fallback as written.
        retries: ``retries``: how many more times one model is tried.
        timeout: ``timeout``: seconds per attempt.
        deadline: ``deadline``: seconds for the whole prompt.
        fallback_on: ``fallback_on``: the error kinds that move on to the next fallback.
        max_wait: ``max_wait``: without a deadline, the longest wait for a ``Retry-After`` or
            a cool-down.
    """

    links: tuple[ChainLink, ...]
    retries: Setting
    timeout: Setting
    deadline: Setting
    fallback_on: Setting
    max_wait: Setting

    @property
    def fallbacks(self) -> tuple[ChainLink, ...]:
        """The fallback links, in order."""
        return tuple(link for link in self.links if link.role == "fallback")

    @property
    def worth_showing(self) -> bool:
        """Whether anything here differs from a bare route: fallbacks, settings or limits."""
        settings = (self.retries, self.timeout, self.deadline, self.fallback_on, self.max_wait)
        limited = any(link.rpm is not None or link.concurrency is not None for link in self.links)
        return bool(self.fallbacks) or limited or any(s.set_at for s in settings)

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "models": [link.to_json() for link in self.links],
            "retries": self.retries.to_json(),
            "timeout": self.timeout.to_json(),
            "deadline": self.deadline.to_json(),
            "fallback_on": self.fallback_on.to_json(),
            "max_wait": self.max_wait.to_json(),
        }


def _settings(policy: Policy) -> tuple[Setting, Setting, Setting, Setting, Setting]:
    """Each setting for the purpose as ``settings_for`` reads it, with where it is set."""
    settings = settings_for(policy.config, policy.purpose)
    applied, set_at = settings.resilience, settings.set_at
    return (
        Setting(applied.retries, set_at["retries"]),
        Setting(applied.timeout, set_at["timeout"]),
        Setting(applied.deadline, set_at["deadline"]),
        Setting(applied.fallback_on, set_at["fallback_on"]),
        Setting(applied.max_wait, set_at["max_wait"]),
    )


def _written(policy: Policy) -> list[tuple[str, ModelRef]]:
    """The fallbacks that apply to the purpose, as written, each with its path."""
    return settings_for(policy.config, policy.purpose).fallback_paths()


def _link(
    policy: Policy,
    retries: int,
    model_id: str,
    path: str | None,
    refusal: tuple[str, RefusedAs] | None,
    key: KeyStatus | None,
) -> ChainLink:
    """Build one link, its limits and the provider client's own retries read for it."""
    model = find_model(model_id, policy.registry)
    reference = policy.reference(model_id)
    by_client = client_retries(model) if model is not None else 0
    return ChainLink(
        model_id=model_id,
        role="routed" if path is None else "fallback",
        path=path,
        refusal=None if refusal is None else refusal[0],
        refused_as=None if refusal is None else refusal[1],
        key=key,
        rpm=reference.rpm,
        concurrency=reference.concurrency,
        adapted=model is not None and adapt(model),
        client_retries=by_client,
        tries=tries_of(model, retries) if model is not None else 1 + retries,
    )


def _retries(setting: Setting) -> int:
    return setting.value if isinstance(setting.value, int) else _DEFAULTS.retries


async def build_chain(
    datasette: Datasette,
    policy: Policy,
    routed: tuple[str | None, KeyStatus | None],
    requires: Requirements = NOTHING_REQUIRED,
    *,
    timeout: float,
) -> Chain:
    """Return the chain for ``policy``'s purpose, as a prompt with no actor would try it.

    Args:
        routed: The model routing chose (``None`` when it found none) and its key status.
        requires: What the purpose requires of a model (``Purpose.requires``).
        timeout: Seconds to wait for the policy's answers (a hanging ``llm_filter_models``):
            past it, the fallbacks are shown unchecked.
    """
    if not _written(policy):
        return await _chain(datasette, policy, routed, requires)
    try:
        return await asyncio.wait_for(_chain(datasette, policy, routed, requires), timeout)
    except asyncio.TimeoutError:
        reason = (
            "not checked: the policy did not answer in time (a hook, llm_default_model or "
            "llm_filter_models, is not answering)"
        )
    except Exception as error:
        reason = (
            f"not checked: asking the policy raised {type(error).__name__}: {shown(error)} "
            "(a plugin's llm_filter_models fails)"
        )
    return _unchecked_chain(policy, routed[0], reason)


async def _chain(
    datasette: Datasette,
    policy: Policy,
    routed: tuple[str | None, KeyStatus | None],
    requires: Requirements,
) -> Chain:
    settings = _settings(policy)
    retries = _retries(settings[0])
    routed_id, routed_key = routed
    chain: list[ChainLink] = []
    if routed_id is not None:
        chain.append(_link(policy, retries, routed_id, None, None, routed_key))
    seen: dict[str, str] = {}
    for path, ref in _written(policy):
        model_id = policy.canonical(ref.model_id)
        model = find_model(ref.model_id, policy.registry)
        refusal: tuple[str, RefusedAs] | None = None
        key: KeyStatus | None = None
        if model_id == routed_id:
            refusal = (_ROUTED_MODEL, "routed_model")
        elif model_id in seen:
            refusal = (f"it is already in the chain at {seen[model_id]}", "repeated")
        elif model is None:
            refusal = ("it is not installed", "not_installed")
        else:
            key = await key_status(datasette, policy.reference(model_id).keys, model)
            refusal = await _screened(datasette, policy, model, requires)
        seen.setdefault(model_id, path)
        chain.append(_link(policy, retries, ref.model_id, path, refusal, key))
    return Chain(tuple(chain), *settings)


async def _screened(
    datasette: Datasette,
    policy: Policy,
    model: AsyncModel,
    requires: Requirements,
) -> tuple[str, RefusedAs] | None:
    """Ask the policy about ``model`` as ``routing.admit`` does: its reason and kind, if any."""
    screening = await screen(datasette, policy, [model], None, require_keys=True, requires=requires)
    if screening.models:
        return None
    refusal = screening.refused[model.model_id]
    return refusal.reason, refusal.kind


def _unchecked_chain(policy: Policy, routed_id: str | None, reason: str) -> Chain:
    """Return the chain with every fallback left unchecked, for ``reason`` (a hanging hook)."""
    settings = _settings(policy)
    retries = _retries(settings[0])
    links: list[ChainLink] = []
    if routed_id is not None:
        links.append(_link(policy, retries, routed_id, None, None, None))
    for path, ref in _written(policy):
        links.append(_link(policy, retries, ref.model_id, path, (reason, "unchecked"), None))
    return Chain(tuple(links), *settings)


# The report.

ROUTE_TIMEOUT_SECONDS: float = 2.0
"""How long the report waits for one purpose's routing and the check of its fallbacks together
(a hanging ``llm_default_model`` or ``llm_filter_models`` hook)."""


@dataclass(frozen=True, slots=True)
class AllowedModel:
    """A model in an allowlist, as an operator needs to see it.

    Attributes:
        model_id: The id as written in configuration.
        installed: Whether an installed llm plugin provides it.
        refusal: Why the policy refuses it for this purpose (a blocklist), or ``None``.
        key: Its key status, or ``None`` when it is not installed.
    """

    model_id: str
    installed: bool
    refusal: str | None
    key: KeyStatus | None

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "model_id": self.model_id,
            "installed": self.installed,
            "blocked": self.refusal is not None,
            "refusal": self.refusal,
            "key": key_json(self.key),
        }


@dataclass(frozen=True, slots=True)
class Route:
    """Where a call goes: the routed model and the step that chose it, or why none was found.

    Attributes:
        model_id: The model that serves the call, or ``None`` when routing failed.
        step: The routing step that chose it (see ``Resolution.step``).
        chosen_by: For step ``"hook"``, the plugin whose ``llm_default_model`` chose it.
        key: The routed model's key status.
        skipped: Candidates refused on the way, each with its reason.
        error: Why no model could be chosen, when ``model_id`` is ``None``.
    """

    model_id: str | None
    step: ResolutionStep | None
    chosen_by: str | None
    key: KeyStatus | None
    skipped: tuple[str, ...]
    error: str | None

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "model_id": self.model_id,
            "step": self.step,
            "chosen_by": self.chosen_by,
            "key": key_json(self.key),
            "skipped": list(self.skipped),
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class PurposeRoute:
    """One purpose: who declared it, what is configured, and where its calls go.

    Attributes:
        name: The purpose name.
        registered: Whether an installed plugin registers it (``False``: only in configuration).
        owner: The declaring plugin, if registered.
        description: What it is for, if registered.
        recommended_model: The owner's ``Purpose.default_model``, if any.
        configured_model: ``purposes.<name>.model`` from configuration, if set.
        options: The default options configured for the routed model, if any.
        route: The model that actually serves it, and the step.
        allowed: The allowlist for this purpose, or ``None`` when every installed model is allowed.
        blocked_models: Models this purpose may never use (global and its own), sorted.
        chain: The routed model, then each fallback, and the retry and timeout settings.
        requires: What the purpose requires of a model (``Purpose.requires``), as phrases.
    """

    name: str
    registered: bool
    owner: str | None
    description: str | None
    recommended_model: str | None
    configured_model: str | None
    options: Mapping[str, object]
    route: Route
    allowed: tuple[AllowedModel, ...] | None
    blocked_models: tuple[str, ...]
    chain: Chain
    requires: tuple[str, ...] = ()

    @property
    def shown_options(self) -> dict[str, object]:
        """The options to show: a value from ``$env``/``$file`` is replaced by where it is from."""
        return {
            name: quoted(value) if isinstance(value, Substituted) else value
            for name, value in self.options.items()
        }

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "registered": self.registered,
            "owner": self.owner,
            "description": self.description,
            "recommended_model": self.recommended_model,
            "configured_model": self.configured_model,
            "options": self.shown_options,
            "resolved": self.route.to_json(),
            "allowed_models": (
                None if self.allowed is None else [model.to_json() for model in self.allowed]
            ),
            "blocked_models": list(self.blocked_models),
            "requires": list(self.requires),
            "chain": self.chain.to_json(),
        }


@dataclass(frozen=True, slots=True)
class RoutingReport:
    """Everything the routing page and ``datasette llm purposes`` show.

    Attributes:
        purposes: Registered purposes in registration order, then configured-only ones.
        default_model: The configured ``default_model`` id, if any.
        default_route: Where a call without a purpose goes.
        default_chain: What a call without a purpose tries when its model fails.
        models: The global allowlist, or ``None`` when every installed model is allowed.
        blocked_models: The global blocklist, sorted.
        require_keys: Whether models without an available key are left out of routing.
        strict: Whether warnings stop startup.
        collisions: Purpose names registered by more than one owner.
        unregistered_purposes: Purposes configured but registered by no plugin.
        missing_models: Model ids in configuration that are not installed.
        problems: Every configuration problem (errors and warnings).
        installed_model_count: How many async models llm has installed.
    """

    purposes: tuple[PurposeRoute, ...]
    default_model: str | None
    default_route: Route
    default_chain: Chain
    models: tuple[str, ...] | None
    blocked_models: tuple[str, ...]
    require_keys: bool
    strict: bool
    collisions: tuple[PurposeCollision, ...]
    unregistered_purposes: tuple[UnregisteredPurpose, ...]
    missing_models: tuple[MissingModel, ...]
    problems: tuple[ConfigProblem, ...]
    installed_model_count: int

    def to_json(self) -> dict[str, object]:
        """Return the JSON document served at ``/-/llm.json``."""
        return {
            "purposes": [purpose.to_json() for purpose in self.purposes],
            "default_model": self.default_model,
            "default_resolved": self.default_route.to_json(),
            "default_chain": self.default_chain.to_json(),
            "models": None if self.models is None else list(self.models),
            "blocked_models": list(self.blocked_models),
            "require_keys": self.require_keys,
            "strict": self.strict,
            "collisions": [
                {
                    "name": collision.name,
                    "kept_owner": collision.kept_owner,
                    "ignored_owner": collision.ignored_owner,
                    "kept_description": collision.kept.description,
                    "ignored_description": collision.ignored.description,
                }
                for collision in self.collisions
            ],
            "unregistered_purposes": [
                {"name": item.name, "nearest": item.nearest} for item in self.unregistered_purposes
            ],
            "missing_models": [
                {"model_id": item.model_id, "path": item.path, "nearest": item.nearest}
                for item in self.missing_models
            ],
            "problems": [
                {"path": problem.path, "message": problem.message, "severity": problem.severity}
                for problem in self.problems
            ],
            "installed_model_count": self.installed_model_count,
        }


async def _route(
    datasette: Datasette, config: LLMConfig, registry: ModelRegistry, purpose: str | Purpose | None
) -> tuple[Route, Mapping[str, object], Chain]:
    """Route one purpose, then check its fallbacks, within ``ROUTE_TIMEOUT_SECONDS``."""
    started = time.monotonic()
    route_, options = await _routed(datasette, config, registry, purpose)
    policy = policy_for(datasette, config, purpose_name(purpose), registry)
    left = max(0.0, ROUTE_TIMEOUT_SECONDS - (time.monotonic() - started))
    routed = (route_.model_id, route_.key)
    requires = requirements_for(datasette, purpose)
    chain = await build_chain(datasette, policy, routed, requires, timeout=left)
    return route_, options, chain


async def _routed(
    datasette: Datasette, config: LLMConfig, registry: ModelRegistry, purpose: str | Purpose | None
) -> tuple[Route, Mapping[str, object]]:
    """Route one purpose; any failure (a hook raising or hanging) becomes that route's error."""

    def failed(message: str) -> tuple[Route, Mapping[str, object]]:
        return Route(None, None, None, None, (), message), {}

    timeout = ROUTE_TIMEOUT_SECONDS
    try:
        routed = await asyncio.wait_for(
            route(datasette, config, None, purpose, None, read_key=False, registry=registry),
            timeout,
        )
    except ModelNotFoundError as error:
        return failed(str(error))
    except llm.UnknownModelError as error:
        message = error.args[0] if error.args else repr(error)
        return failed(str(message))
    except asyncio.TimeoutError:
        return failed(
            f"Routing did not finish within {timeout:g} seconds: a hook (llm_default_model or "
            "llm_filter_models) is not answering. Fix or remove the plugin that hangs."
        )
    except Exception as error:
        return failed(
            f"Routing raised {type(error).__name__}: {shown(error)}. A plugin's hook "
            "(llm_default_model or llm_filter_models) fails: fix or remove it."
        )
    resolution = routed.resolution
    route_ = Route(
        resolution.model_id,
        resolution.step,
        resolution.chosen_by,
        resolution.key,
        resolution.skipped,
        None,
    )
    return route_, routed.reference.options


async def _allowed(
    datasette: Datasette, policy: Policy, registry: ModelRegistry
) -> tuple[AllowedModel, ...] | None:
    """List the purpose's allowlist as written, in its order (``allowlist_of``)."""
    written = allowlist_of(policy.config, policy.purpose)
    if written is None:
        return None
    allowed: list[AllowedModel] = []
    for model_id in written:
        model = registry.by_name.get(model_id)
        key = None
        if model is not None:
            key = await key_status(datasette, policy.reference(model_id).keys, model)
        refusal = policy.refusal(model_id)
        reason = None if refusal is None else refusal.reason
        allowed.append(AllowedModel(model_id, model is not None, reason, key))
    return tuple(allowed)


async def _purpose_route(
    datasette: Datasette,
    config: LLMConfig,
    registry: ModelRegistry,
    name: str,
    declared: Purpose | None,
) -> PurposeRoute:
    purpose_config = config.purpose(name)
    configured = purpose_config.model if purpose_config is not None else None
    policy = policy_for(datasette, config, name, registry)
    route_, options, chain = await _route(datasette, config, registry, declared or name)
    return PurposeRoute(
        name=name,
        registered=declared is not None,
        owner=None if declared is None else get_purpose_owner(datasette, name),
        description=None if declared is None else declared.description,
        recommended_model=None if declared is None else declared.default_model,
        configured_model=None if configured is None else configured.model_id,
        options=options,
        route=route_,
        allowed=await _allowed(datasette, policy, registry),
        blocked_models=tuple(sorted(policy.blocked)),
        chain=chain,
        requires=tuple(requirements_for(datasette, declared or name).names()),
    )


async def build_report(datasette: Datasette) -> RoutingReport:
    """Route every purpose as a call with no actor would, and collect what an operator needs.

    Raises:
        ConfigurationError: The configuration is malformed (``problems`` lists where).
    """
    validation = validate_datasette(datasette)
    config = config_for(datasette)
    registry = current_registry(datasette)
    purposes, catalog_problem = purposes_or_problem(datasette)
    routes = [
        await _purpose_route(datasette, config, registry, purpose.name, purpose)
        for purpose in purposes
    ]
    registered = {purpose.name for purpose in purposes}
    for name in config.purposes:
        if name not in registered:
            routes.append(await _purpose_route(datasette, config, registry, name, None))
    default_route, _, default_chain = await _route(datasette, config, registry, None)
    return RoutingReport(
        purposes=tuple(routes),
        default_model=None if config.default_model is None else config.default_model.model_id,
        default_route=default_route,
        default_chain=default_chain,
        models=config.models,
        blocked_models=tuple(sorted(config.blocked_models)),
        require_keys=config.require_keys,
        strict=config.strict,
        collisions=() if catalog_problem else tuple(get_purpose_collisions(datasette)),
        unregistered_purposes=tuple(find_unregistered_purposes(config, purposes)),
        missing_models=tuple(find_missing_models(config, registry)),
        problems=validation.problems,
        installed_model_count=len(registry.models),
    )


# Whether every purpose can be served.

_ASKED: Final = frozenset({"keyless", "filtered", "unchecked"})
"""Refusals only asking the policy finds; validation reports the configuration's own."""


def _configured(config: LLMConfig, names: Iterable[str]) -> Iterator[tuple[str | None, ModelRef]]:
    """Yield ``(purpose, reference)`` for every configured model a route should start from:
    each named purpose's ``model``, then ``default_model`` (purpose ``None``)."""
    for name in names:
        purpose_config = config.purpose(name)
        if purpose_config is not None and purpose_config.model is not None:
            yield name, purpose_config.model
    if config.default_model is not None:
        yield None, config.default_model


async def missing_key(
    datasette: Datasette,
    config: LLMConfig,
    registry: ModelRegistry,
    purpose: str | None,
    ref: ModelRef,
) -> KeyStatus | None:
    """The key status of the configured model ``ref`` when it is installed, needs a key, is not
    blocked (validation says so) and no key is found for it; else ``None``."""
    model = registry.by_name.get(ref.model_id)
    if model is None or not getattr(model, "needs_key", None):
        return None  # not installed (validation says so), or no key to look for
    policy = policy_for(datasette, config, purpose, registry)
    if policy.refusal(ref.model_id) is not None:
        return None
    status = await key_status(datasette, policy.reference(ref.model_id).keys, model)
    return None if status.available else status


def _key_problem(
    purpose: str | None, ref: ModelRef, status: KeyStatus, routed_to: str | None
) -> ConfigProblem:
    """The warning for a configured model without a key: its calls go to ``routed_to``, or
    fail when routing finds no other model (``None``). It names the secret, never a key."""
    calls = f"calls for purpose {purpose!r}" if purpose is not None else "calls without a purpose"
    path = f"{CONFIG_ROOT}.purposes.{purpose}.model" if purpose else f"{CONFIG_ROOT}.default_model"
    goes = (
        f"{calls} fail: no other model may serve them"
        if routed_to is None
        else f"{calls} go to {quoted(routed_to)} instead"
    )
    return ConfigProblem(
        path,
        f"{quoted(ref.model_id)} has no API key, so {goes}. Set the secret "
        f"{status.secret_name} (datasette-secrets, or the environment variable "
        f"{secret_variable(status.secret_name or '')}), or configure another model.",
        "warning",
    )


def _fallback_problems(report: RoutingReport) -> list[ConfigProblem]:
    """Warn once per fallback the policy refuses when asked (a key, a filter hook)."""
    refused: dict[tuple[str, str, str, bool], list[str | None]] = {}
    chains = [(purpose.name, purpose.chain) for purpose in report.purposes]
    for name, chain in [*chains, (None, report.default_chain)]:
        for link in chain.fallbacks:
            if link.path is not None and link.refused_as in _ASKED:
                key = (link.path, link.model_id, link.refusal or "", link.refused_as == "keyless")
                refused.setdefault(key, []).append(name)
    problems = []
    for (path, model_id, refusal, keyless), names in refused.items():
        subjects = ", ".join(
            f"purpose {name!r}" if name is not None else "calls without a purpose" for name in names
        )
        fix = (
            "Set the secret, or remove it from fallbacks (a fallback is only tried with its "
            "key, whatever require_keys says)."
            if keyless
            else "Fix the plugin, or remove it from fallbacks."
        )
        problems.append(
            ConfigProblem(
                path,
                f"fallback {quoted(model_id)} is never tried for {subjects}: {refusal}. {fix}",
                "warning",
            )
        )
    return problems


async def serving_problems(
    datasette: Datasette, report: RoutingReport, config: LLMConfig, registry: ModelRegistry
) -> list[ConfigProblem]:
    """Return an error for every purpose no model can serve, and key warnings (see the module)."""
    problems: list[ConfigProblem] = []
    for purpose in report.purposes:
        if purpose.route.model_id is None:
            problems.append(
                ConfigProblem(
                    f"{CONFIG_ROOT}.purposes.{purpose.name}",
                    f"purpose {purpose.name!r} cannot be served: {purpose.route.error}",
                )
            )
    default_route = report.default_route
    if config.default_model is not None and default_route.model_id is None:
        problems.append(
            ConfigProblem(
                f"{CONFIG_ROOT}.default_model",
                f"calls without a purpose cannot be served: {default_route.error}",
            )
        )
    problems.extend(_fallback_problems(report))
    if not config.require_keys:
        return problems
    routes = {purpose.name: purpose.route for purpose in report.purposes}
    for name, ref in _configured(config, routes):
        route = routes[name] if name is not None else default_route
        if route.model_id is None or route.model_id == registry.canonical(ref.model_id):
            continue  # cannot be served (an error above), or not passed over
        status = await missing_key(datasette, config, registry, name, ref)
        if status is not None:
            problems.append(_key_problem(name, ref, status, route.model_id))
    return problems


async def key_problems_at_startup(datasette: Datasette) -> list[ConfigProblem]:
    """Return the key warnings of ``serving_problems`` for the configuration in effect, and
    one for each purpose whose configured model has no key and that no other model may serve.

    Cheap where it has nothing to say: a configured model that needs no key costs no await,
    and a purpose is routed (as a call with no actor) only when its model's key is missing.

    Raises:
        ConfigurationError: The configuration is malformed (startup validation reports it).
    """
    config = config_for(datasette)
    if not config.require_keys:
        return []
    registry = current_registry(datasette)
    problems: list[ConfigProblem] = []
    for name, ref in _configured(config, config.purposes):
        status = await missing_key(datasette, config, registry, name, ref)
        if status is None:
            continue
        route_, _ = await _routed(datasette, config, registry, name)
        if route_.model_id != registry.canonical(ref.model_id):
            problems.append(_key_problem(name, ref, status, route_.model_id))
    return problems


async def log_key_problems_at_startup(datasette: Datasette) -> None:
    """Log each of ``key_problems_at_startup`` once, as a warning (the ``startup`` hook; not
    when a ``datasette llm`` command, which reports them itself, starts Datasette).

    Raises:
        StartupError: ``strict: true`` is set, under which warnings stop startup.
    """
    if startup_validation_deferred(datasette):
        return
    try:
        problems = await key_problems_at_startup(datasette)
    except ConfigurationError:
        return  # startup validation has reported it
    if problems and config_for(datasette).strict:
        from datasette.utils import StartupError

        message = str(ConfigurationError(problems))
        raise StartupError(f"{message}\nWarnings count as errors because strict: true is set.")
    for problem in problems:
        logger.warning("datasette-llm: %s", problem)
