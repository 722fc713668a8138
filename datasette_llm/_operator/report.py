"""The routing report: which model serves each purpose and why, as one frozen typed value.

Built once per request of ``/-/llm`` (and by ``datasette llm purposes``) from the configuration,
the registered purposes, the installed models and a real routing of every purpose, as a call
with no actor would be routed. It holds secret *names* only, never a key, and reading it reads
no stored secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llm

from ..capabilities import NOTHING_REQUIRED
from ..config import LLMConfig
from ..config_source import config_for
from ..errors import ConfigProblem, ModelNotFoundError, Substituted, quoted, shown
from ..keys import KeyStatus, key_status
from ..models import ModelRegistry, current_registry
from ..policy import Policy, policy_for
from ..purpose_catalog import get_purpose_collisions, get_purpose_owner
from ..purposes import Purpose, purpose_name
from ..routing import route
from .resilience import Chain, build_chain, key_json
from .validation import (
    MissingModel,
    UnregisteredPurpose,
    find_missing_models,
    find_unregistered_purposes,
    purposes_or_problem,
    validate_datasette,
)

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..purposes import PurposeCollision
    from ..resolution import ResolutionStep

__all__ = [
    "ROUTE_TIMEOUT_SECONDS",
    "AllowedModel",
    "PurposeRoute",
    "Route",
    "RoutingReport",
    "build_report",
]

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
    declared = purpose if isinstance(purpose, Purpose) else None
    policy = policy_for(config, purpose_name(purpose), registry)
    left = max(0.0, ROUTE_TIMEOUT_SECONDS - (time.monotonic() - started))
    routed = (route_.model_id, route_.key)
    requires = declared.requires if declared else NOTHING_REQUIRED
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
    """List the purpose's allowlist: configured defaults first, then configuration order."""
    if policy.allowlist is None:
        return None
    config = policy.config
    purpose_config = config.purpose(policy.purpose)
    written: list[str] = []
    if purpose_config is not None and purpose_config.model is not None:
        written.append(purpose_config.model.model_id)
    if config.default_model is not None:
        written.append(config.default_model.model_id)
    if purpose_config is not None:
        written.extend(ref.model_id for ref in purpose_config.models or ())
    written.extend(config.models or ())
    allowed: list[AllowedModel] = []
    for model_id in dict.fromkeys(written):
        model = registry.by_name.get(model_id)
        key = None
        if model is not None:
            key = await key_status(datasette, policy.reference(model_id).keys, model)
        allowed.append(AllowedModel(model_id, model is not None, policy.refusal(model_id), key))
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
    policy = policy_for(config, name, registry)
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
        requires=tuple(declared.requires.names()) if declared is not None else (),
    )


async def build_report(datasette: Datasette) -> RoutingReport:
    """Route every purpose as a call with no actor would, and collect what an operator needs.

    Raises:
        ConfigurationError: The configuration is malformed (``problems`` lists where).
    """
    validation = validate_datasette(datasette)
    config = config_for(datasette)
    registry = current_registry()
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
